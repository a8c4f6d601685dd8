"""Evaluate any Recommender on a split: RMSE/MAE (explicit) or full-ranking metrics (implicit)."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recsys.data import InteractionData
from recsys.metrics import coverage, mae, ranking_metrics, rmse, tail_share
from recsys.models.base import Recommender
from recsys.splits import Split


def evaluate_model(model: Recommender, data: InteractionData, split: Split, part: str = "test",
                   mode: str = "explicit", ks=(10, 20)) -> dict[str, float]:
    """explicit: rmse, mae on the part's ratings. implicit: recall/ndcg/mrr/hit@k over all items,
    excluding items the user interacted with in earlier parts (train; train+valid for test),
    plus catalogue coverage and long-tail share of the top-k."""
    truth = split.matrix(data, part)
    if mode == "explicit":
        coo = truth.tocoo()
        pred = model.predict(coo.row.astype(np.int64), coo.col.astype(np.int64))
        return {"rmse": rmse(pred, coo.data), "mae": mae(pred, coo.data), "n": int(truth.nnz)}
    train = split.matrix(data, "train")
    seen = train if part == "valid" else (train + split.matrix(data, "valid")).tocsr()
    users = np.flatnonzero(np.diff(truth.indptr) > 0)
    kmax = max(ks)
    topk, _ = model.recommend(users, kmax, exclude=seen)
    out = ranking_metrics(topk, sp.csr_matrix(truth), users, ks)
    out[f"coverage@{kmax}"] = coverage(topk, data.n_items)
    out[f"tail_share@{kmax}"] = tail_share(topk, train)
    out["n_users"] = int(len(users))
    return out


def evaluate_candidates(model: Recommender, data: InteractionData, split: Split, candidates: np.ndarray,
                        part: str = "test", ks=(10,), batch: int = 1024) -> dict[str, float]:
    """Full ranking restricted to ``candidates`` (item indices), e.g. the cold items of a cold-start
    split (rank among cold items) or the warm ones. Truth = the part's interactions with candidates;
    seen items excluded as in ``evaluate_model``."""
    cand = np.asarray(candidates, dtype=np.int64)
    mask = np.zeros(data.n_items, bool)
    mask[cand] = True
    truth = split.matrix(data, part).tocsc()[:, cand].tocsr()                       # (U, C) in candidate order
    train = split.matrix(data, "train")
    seen = train if part == "valid" else (train + split.matrix(data, "valid")).tocsr()
    seen_c = seen.tocsc()[:, cand].tocsr()
    users = np.flatnonzero(np.diff(truth.indptr) > 0)
    kmax = min(max(ks), len(cand))
    tops = []
    for s in range(0, len(users), batch):
        u = users[s:s + batch]
        sc = model.score(u)[:, cand].astype(np.float64)                              # (b, C)
        sub = seen_c[u]
        sc[np.repeat(np.arange(len(u)), np.diff(sub.indptr)), sub.indices] = -np.inf
        part_top = np.argpartition(-sc, kmax - 1, axis=1)[:, :kmax]
        order = np.argsort(-np.take_along_axis(sc, part_top, 1), axis=1, kind="stable")
        tops.append(np.take_along_axis(part_top, order, 1))
    topk = np.vstack(tops) if tops else np.zeros((0, kmax), np.int64)
    out = ranking_metrics(topk, truth, users, [k for k in ks if k <= kmax])
    out["n_users"] = int(len(users))
    out["n_candidates"] = int(len(cand))
    return out
