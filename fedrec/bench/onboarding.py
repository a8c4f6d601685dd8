"""New users (issue 44): hold out a fraction of the users entirely, train on the rest, reveal k of each
held-out user's interactions and rank the rest (revealed items excluded). Methods: popularity over the
training users; the first code of a fresh encoder (tied to the received rows) blended with the federated
prototypes; fold-in of that encoder with n local steps (n chosen on half of the held-out users, reported
on the other half)."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

log = logging.getLogger(__name__)


def _ndcg(ids: np.ndarray, truth: sp.csr_matrix, rows: np.ndarray) -> float:
    """Mean NDCG@10 of the top-10 ids (B, 10) against truth rows (every held-out user has a rest)."""
    from recsys.metrics import ranking_metrics

    return ranking_metrics(ids, truth, rows, (10,))["ndcg@10"]


def bench_onboarding(config: Path, ks=(1, 3, 5, 10), steps=(1, 2, 5, 20), fraction: float = 0.2, seed: int = 0,
                     rounds: int | None = None) -> tuple[list[list], dict]:
    """Rows [method, k, NDCG@10 (test half of the held-out users), users] and run facts."""
    import torch

    from federation.runs.config import load_config
    from federation.runs.jobs import build_federation, prepare_data, prototype_settings
    from federation.runs.onboard import FoldIn, new_client_start, new_user_scores
    from recsys.splits import hold_out_users, reveal_order

    cfg = load_config(config)
    if rounds is not None:
        cfg = cfg.model_copy(update={"federation": cfg.federation.model_copy(update={"rounds": rounds})})
    data, split = prepare_data(cfg)
    everything = data.ratings.tocsr()
    counts = np.diff(everything.indptr)
    held = hold_out_users(counts, fraction, seed, min_interactions=max(ks) + 1)
    train = split.matrix(data, "train").tolil()
    train[held] = 0                                              # the held-out users never train
    train = train.tocsr()
    train.eliminate_zeros()
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    fed = build_federation(cfg, data, split, train=train)
    for _ in range(cfg.federation.rounds):
        fed.run_round()
    if cfg.prototypes.enabled:
        fed.fit_prototypes(prototype_settings(cfg))
    t_train = time.perf_counter() - t0
    pop = np.asarray(train.sum(0)).ravel().astype(np.float64)
    start = new_client_start(fed)
    tune, report = held[::2], held[1::2]                         # n chosen on one half, reported on the other
    rows: list[list] = []
    for k in ks:
        revealed, rest = {}, []
        for u in held:
            order = reveal_order(everything[u].indices, seed, int(u))
            revealed[int(u)] = order[:k]
            rest.append(order[k:])
        truth = sp.csr_matrix((np.ones(sum(len(r) for r in rest)), np.concatenate(rest),
                               np.concatenate([[0], np.cumsum([len(r) for r in rest])])), shape=(len(held), data.n_items))
        pos = {int(u): j for j, u in enumerate(held)}

        def score_all(users, fn):
            ids = np.empty((len(users), 10), dtype=np.int64)
            for j, u in enumerate(users):
                s = fn(int(u))
                ids[j] = np.argsort(-s, kind="stable")[:10]
            return _ndcg(ids, truth, np.array([pos[int(u)] for u in users]))

        def popularity(u):
            s = pop.copy()
            s[revealed[u]] = -np.inf
            return s

        def fold(n):
            return lambda u: new_user_scores(fed, revealed[u], None, FoldIn(n), start)
        rows.append(["popularity", k, score_all(report, popularity), len(report), ""])
        first = "first code + prototypes" if fed.prototypes is not None else "first code"
        rows.append([first, k, score_all(report, fold(0)), len(report), ""])
        tuned = {n: score_all(tune, fold(n)) for n in steps}
        best = max(tuned, key=tuned.get)
        rows.append([f"fold-in, {best} steps (chosen on valid)", k, score_all(report, fold(best)),
                     len(report), ", ".join(f"{n}: {v:.4f}" for n, v in tuned.items())])
        log.info("onboarding k=%d: %s", k, rows[-3:])
    return rows, {"held_out": len(held), "train_users": int((np.diff(train.indptr) > 0).sum()), "train_s": t_train,
                  "rounds": cfg.federation.rounds, "config": str(config)}
