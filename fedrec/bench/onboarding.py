"""New users (issue 44): hold out a fraction of the users entirely, train on the rest, reveal k of each
held-out user's training-part interactions and rank every item against the user's test part, with
the user's other interactions excluded, exactly as existing users are scored (so the figures compare
with the accuracy table's). Half of the held-out users choose the fold-in steps against their valid
part; the other half report against their test part.

Methods: popularity over the training users; the first code of a fresh personal encoder (tied to the
received rows) blended with the federated prototypes; fold-in of that encoder with n local steps; the
federated user embedder of a ``persona`` run trained on the same users (its vector alone, at once), and a
fresh personal encoder started at the embedder's vector and folded in with n steps."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

log = logging.getLogger(__name__)


def _ndcg(ids: np.ndarray, truth: sp.csr_matrix, rows: np.ndarray) -> float:
    """Mean NDCG@10 of the top-10 ids (B, 10) against truth rows."""
    from recsys.metrics import ranking_metrics

    return ranking_metrics(ids, truth, rows, (10,))["ndcg@10"]


def _train(cfg, data, split, train):
    import torch

    from federation.runs.jobs import build_federation, prototype_settings

    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    fed = build_federation(cfg, data, split, train=train)
    for _ in range(cfg.federation.rounds):
        fed.run_round()
    if cfg.prototypes.enabled:
        fed.fit_prototypes(prototype_settings(cfg))
    return fed, time.perf_counter() - t0


def existing_users(fed, parts: dict, users: np.ndarray) -> dict[str, float]:
    """Test NDCG@10 of trained ``users`` (train + valid items excluded) scored with their personal encoder
    (the run's scoring) and with the run's user embedder alone over their training history (no prototypes)."""
    import torch

    from federation.runs.onboard import new_user_code

    users = np.asarray([u for u in users if parts["test"][u].nnz], dtype=np.int64)
    own = fed.user_scores(users).float().cpu().numpy()
    ids = {"personal encoder": np.empty((len(users), 10), np.int64),
           "user embedder alone": np.empty((len(users), 10), np.int64)}
    for j, u in enumerate(users):
        seen = np.concatenate([parts["train"][u].indices, parts["valid"][u].indices])
        h3 = new_user_code(fed, parts["train"][u].indices)[None].to(fed.device)       # the embedder's code
        with torch.no_grad():
            e = fed.strategy.score(fed.global_p, h3, {}, fed.content)[0].float().cpu().numpy()
        for name, s in (("personal encoder", own[j].copy()), ("user embedder alone", e)):
            s[seen] = -np.inf
            ids[name][j] = np.argsort(-s, kind="stable")[:10]
    return {name: _ndcg(v, parts["test"], users) for name, v in ids.items()}


def bench_onboarding(config: Path, ks=(1, 3, 5, 10), steps=(1, 2, 5, 20), fraction: float = 0.2, seed: int = 0,
                     rounds: int | None = None) -> tuple[list[dict], dict]:
    """Rows {method, k, ndcg (NDCG@10 on the test part of the report half), users, steps (fold-in n
    chosen), tried (n -> valid NDCG@10 on the tune half)} for one seed (hold-out, reveal order and model
    seed), and run facts."""
    from federation.runs.config import load_config
    from federation.runs.jobs import prepare_data
    from federation.runs.onboard import FoldIn, new_client_start, new_user_scores
    from recsys.splits import hold_out_users, reveal_order

    cfg = load_config(config)
    if cfg.federation.strategy != "persona":
        raise ValueError(f"{config}: the onboarding benchmark needs a persona run (federation.strategy: persona)")
    upd = {"seed": seed}
    if rounds is not None:
        upd["federation"] = cfg.federation.model_copy(update={"rounds": rounds})
    cfg = cfg.model_copy(update=upd)
    data, split = prepare_data(cfg)
    parts = {p: split.matrix(data, p).tocsr() for p in ("train", "valid", "test")}
    n_train = np.diff(parts["train"].indptr)
    ok = (np.diff(parts["valid"].indptr) > 0) & (np.diff(parts["test"].indptr) > 0)
    held = hold_out_users(np.where(ok, n_train, 0), fraction, seed, min_interactions=max(ks))
    train = parts["train"].tolil()
    train[held] = 0                                              # the held-out users never train
    train = train.tocsr()
    train.eliminate_zeros()
    # One persona run serves every method: its encoders, decoder and prototypes are the personalfr run's
    # with the same seed (tests/test_strategy_persona.py), so the baselines ignore its embedder.
    fed, t_train = _train(cfg, data, split, train)
    pop = np.asarray(train.sum(0)).ravel().astype(np.float64)
    start = new_client_start(fed)
    tune, report = held[::2], held[1::2]                         # n chosen on one half, reported on the other
    truth_of = {"valid": parts["valid"], "test": parts["test"]}
    everything = data.ratings.tocsr()
    rows: list[list] = []
    for k in ks:
        revealed = {int(u): reveal_order(parts["train"][u].indices, seed, int(u))[:k] for u in held}

        def score_all(users, fn, part):
            truth = truth_of[part]
            ids = np.empty((len(users), 10), dtype=np.int64)
            for j, u in enumerate(users):
                s = fn(int(u))
                seen = everything[u].indices
                s[np.setdiff1d(seen, truth[u].indices)] = -np.inf   # the user's other items: not recommended
                ids[j] = np.argsort(-s, kind="stable")[:10]
            return _ndcg(ids, truth, np.asarray(users))

        def popularity(u):
            return pop.copy()

        def fold(n):
            return lambda u: new_user_scores(fed, revealed[u], None, FoldIn(n), start, embedder=False)

        def embedder(n):
            return lambda u: new_user_scores(fed, revealed[u], None, FoldIn(n), start)

        def row(method, fn, n=None, tried=None):
            return {"method": method, "k": k, "ndcg": score_all(report, fn, "test"), "users": len(report),
                    "steps": n, "tried": tried or {}}

        def chosen(make, candidates=steps):
            tried = {n: score_all(tune, make(n), "valid") for n in candidates}
            return max(tried, key=tried.get), tried

        rows.append(row("popularity", popularity))
        rows.append(row("first code + prototypes" if fed.prototypes is not None else "first code", fold(0)))
        n, tried = chosen(fold)
        rows.append(row("fold-in (n chosen on valid)", fold(n), n, tried))
        rows.append(row("user embedder", embedder(0)))
        n, tried = chosen(embedder, (0,) + tuple(steps))
        rows.append(row("user embedder + fold-in (n chosen on valid)", embedder(n), n, tried))
        log.info("onboarding k=%d: %s", k, [(r["method"], round(r["ndcg"], 4)) for r in rows[-5:]])
    trained = np.flatnonzero(np.diff(train.indptr) > 0)
    return rows, {"existing": existing_users(fed, parts, trained), "held_out": len(held), "train_users": int((np.diff(train.indptr) > 0).sum()),
                  "train_s": t_train, "rounds": cfg.federation.rounds, "config": str(config)}
