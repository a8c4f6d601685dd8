"""Evaluate any Recommender on a split: RMSE/MAE (explicit) or full-ranking metrics (implicit)."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recsys.data import InteractionData
from recsys.metrics import coverage, mae, ranking_metrics, rmse, tail_share, topk_from_scores
from recsys.models.base import Recommender
from recsys.splits import Split


def is_count(key: str) -> bool:
    """True for the count keys of an evaluation result (n, n_users, n_candidates). Not a prefix test
    on "n": that would drop ndcg@k."""
    return key == "n" or key.startswith("n_")


def metric_values(result: dict) -> dict:
    """The metrics of an evaluate_model / evaluate_candidates result, without its counts."""
    return {k: v for k, v in result.items() if not is_count(k)}


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
    seen = _seen(data, split, part)
    users = np.flatnonzero(np.diff(truth.indptr) > 0)
    kmax = max(ks)
    topk, _ = model.recommend(users, kmax, exclude=seen)
    out = ranking_metrics(topk, sp.csr_matrix(truth), users, ks)
    out[f"coverage@{kmax}"] = coverage(topk, data.n_items)
    out[f"tail_share@{kmax}"] = tail_share(topk, train)
    out["n_users"] = int(len(users))
    return out


def _seen(data: InteractionData, split: Split, part: str) -> sp.csr_matrix:
    """Items a user already has before ``part``: train for valid, train + valid for test."""
    train = split.matrix(data, "train")
    return train if part == "valid" else (train + split.matrix(data, "valid")).tocsr()


def evaluate_candidates(model: Recommender, data: InteractionData, split: Split, candidates: np.ndarray,
                        part: str = "test", ks=(10,), batch: int = 1024) -> dict[str, float]:
    """Full ranking restricted to ``candidates`` (item indices), e.g. the cold items of a cold-start
    split (rank among cold items) or the warm ones. Truth = the part's interactions with candidates;
    seen items excluded as in ``evaluate_model``."""
    cand = np.asarray(candidates, dtype=np.int64)
    truth = split.matrix(data, part).tocsc()[:, cand].tocsr()                       # (U, C) in candidate order
    seen_c = _seen(data, split, part).tocsc()[:, cand].tocsr()
    users = np.flatnonzero(np.diff(truth.indptr) > 0)
    kmax = min(max(ks), len(cand))
    tops = [topk_from_scores(model.score(users[s:s + batch])[:, cand].astype(np.float64), kmax, seen_c,
                             rows=users[s:s + batch])[0] for s in range(0, len(users), batch)]
    topk = np.vstack(tops) if tops else np.zeros((0, kmax), np.int64)
    out = ranking_metrics(topk, truth, users, [k for k in ks if k <= kmax])
    out["n_users"] = int(len(users))
    out["n_candidates"] = int(len(cand))
    return out
