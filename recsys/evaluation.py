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
