"""Rating and full-ranking metrics.

Ranking metrics score every item for every evaluated user, exclude the user's training items,
and compare the top-K with the held-out items (binary relevance). Conventions:
  Recall@K = hits / |relevant|        NDCG@K = DCG@K / IDCG@K with IDCG over min(K, |relevant|)
  MRR@K = 1 / rank of the first hit   Hit@K = 1 if any hit
Users with no held-out items are skipped. ``ranking_metrics_reference`` is the plain-loop version
the vectorized one is tested against.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def rmse(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(pred, np.float64) - truth) ** 2))) if len(truth) else float("nan")


def mae(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(pred, np.float64) - truth))) if len(truth) else float("nan")


def topk_from_scores(scores: np.ndarray, k: int, exclude: sp.csr_matrix | None = None,
                     rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k item indices and scores per row, best first.

    scores:  (n, n_items) float; modified in place where excluded (set to -inf)
    exclude: CSR whose rows ``rows`` (default 0..n-1) mark items to drop
    returns ids (n, k) int64, scores (n, k)
    """
    n, n_items = scores.shape
    k = min(k, n_items)
    if exclude is not None:
        ex = exclude[rows] if rows is not None else exclude[:n]
        r = np.repeat(np.arange(n), np.diff(ex.indptr))
        scores[r, ex.indices] = -np.inf
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]          # (n, k) unordered top-k
    ps = np.take_along_axis(scores, part, 1)
    order = np.argsort(-ps, axis=1, kind="stable")
    ids = np.take_along_axis(part, order, 1)
    return ids.astype(np.int64), np.take_along_axis(ps, order, 1)


def ranking_metrics(topk: np.ndarray, truth: sp.csr_matrix, users: np.ndarray, ks=(10,)) -> dict[str, float]:
    """Mean Recall/NDCG/MRR/Hit at each K over users with at least one relevant item.

    topk:  (n, Kmax) recommended item ids per evaluated user (Kmax >= max(ks))
    truth: CSR with relevant items per user (all users)
    users: (n,) row indices of ``truth`` matching the rows of topk
    """
    T = truth[users]
    n_rel = np.diff(T.indptr)
    keep = n_rel > 0
    if not keep.any():
        return {f"{m}@{k}": float("nan") for k in ks for m in ("recall", "ndcg", "mrr", "hit")}
    # hits[u, j] = topk[u, j] is relevant: look up (row, item) pairs in the CSR via a sorted key.
    n, kmax = topk.shape
    rows = np.repeat(np.arange(n), n_rel)
    rel_key = rows.astype(np.int64) * (truth.shape[1] + 1) + T.indices
    rel_key.sort()
    cand_key = np.arange(n, dtype=np.int64)[:, None] * (truth.shape[1] + 1) + topk
    pos = np.searchsorted(rel_key, cand_key).clip(max=len(rel_key) - 1)
    hits = rel_key[pos] == cand_key                                    # (n, Kmax) bool
    disc = 1.0 / np.log2(np.arange(2, kmax + 2))                       # (Kmax,)
    out = {}
    for k in ks:
        h = hits[:, :k]
        nh = h.sum(1)
        dcg = (h * disc[:k]).sum(1)
        idcg = np.cumsum(disc[:k])[np.minimum(n_rel, k) - 1].clip(min=1e-12)
        first = np.where(h.any(1), h.argmax(1) + 1, np.inf)
        out[f"recall@{k}"] = float((nh / np.maximum(n_rel, 1))[keep].mean())
        out[f"ndcg@{k}"] = float((dcg / idcg)[keep].mean())
        out[f"mrr@{k}"] = float((1.0 / first)[keep].mean())
        out[f"hit@{k}"] = float((nh > 0)[keep].mean())
    return out


def ranking_metrics_reference(topk: np.ndarray, truth: sp.csr_matrix, users: np.ndarray, ks=(10,)) -> dict:
    """Loop version of :func:`ranking_metrics`, written for clarity."""
    acc = {f"{m}@{k}": [] for k in ks for m in ("recall", "ndcg", "mrr", "hit")}
    for row, u in enumerate(users):
        rel = set(truth.indices[truth.indptr[u]:truth.indptr[u + 1]].tolist())
        if not rel:
            continue
        for k in ks:
            rec = topk[row, :k].tolist()
            hits = [1 if i in rel else 0 for i in rec]
            dcg = sum(h / np.log2(j + 2) for j, h in enumerate(hits))
            idcg = sum(1 / np.log2(j + 2) for j in range(min(k, len(rel))))
            acc[f"recall@{k}"].append(sum(hits) / len(rel))
            acc[f"ndcg@{k}"].append(dcg / idcg)
            acc[f"mrr@{k}"].append(next((1 / (j + 1) for j, h in enumerate(hits) if h), 0.0))
            acc[f"hit@{k}"].append(float(any(hits)))
    return {m: float(np.mean(v)) if v else float("nan") for m, v in acc.items()}


def coverage(topk: np.ndarray, n_items: int) -> float:
    """Share of the catalogue that appears in at least one user's top-K."""
    return float(len(np.unique(topk)) / n_items)


def tail_share(topk: np.ndarray, train: sp.csr_matrix, head_fraction: float = 0.2) -> float:
    """Share of recommended slots filled by long-tail items (outside the most popular ``head_fraction``
    of items by training interactions)."""
    pop = np.diff(train.tocsc().indptr)
    n_head = max(1, int(round(len(pop) * head_fraction)))
    head = np.zeros(len(pop), bool)
    head[np.argsort(-pop, kind="stable")[:n_head]] = True
    return float((~head[topk]).mean())


def item_terciles(train: sp.csr_matrix) -> np.ndarray:
    """Popularity group of each item (N,): 0 head, 1 mid, 2 tail — a third of the catalogue each, by
    training interactions (most popular first, ties by item id)."""
    pop = np.diff(train.tocsc().indptr)
    order = np.argsort(-pop, kind="stable")
    out = np.empty(len(pop), np.int64)
    out[order] = np.minimum(np.arange(len(pop)) * 3 // max(1, len(pop)), 2)
    return out


def activity_quartiles(train: sp.csr_matrix, users: np.ndarray) -> np.ndarray:
    """Activity group of each of ``users`` (n,): 0 lightest … 3 heaviest quarter by training
    interactions (quartile edges over ``users``; a tie goes to the lower quarter)."""
    n = np.diff(train.indptr)[np.asarray(users)]
    edges = np.quantile(n, [0.25, 0.5, 0.75])
    return np.searchsorted(edges, n, side="left").astype(np.int64)


def user_recall(topk: np.ndarray, truth: sp.csr_matrix, users: np.ndarray, k: int,
                item_mask: np.ndarray | None = None) -> np.ndarray:
    """Recall@k per user (n,): hits among the top k over the user's relevant items, counting only items
    with ``item_mask`` True (all when None); NaN for a user without such relevant items."""
    T = truth[np.asarray(users)].tocsr()
    if item_mask is not None:
        T = T @ sp.diags(item_mask.astype(np.float64))
        T.eliminate_zeros()
    n_rel = np.diff(T.indptr)
    hits = np.zeros(len(users))
    top = topk[:, :k]
    for r in range(len(users)):           # n x k lookups in sorted index slices
        rel = T.indices[T.indptr[r]:T.indptr[r + 1]]
        if len(rel):
            hits[r] = np.isin(top[r], rel, assume_unique=False).sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_rel > 0, hits / n_rel, np.nan)


def group_recall(topk: np.ndarray, truth: sp.csr_matrix, users: np.ndarray, k: int, item_groups: np.ndarray,
                 user_groups: np.ndarray) -> dict[str, float]:
    """Recall@k restricted to head/mid/tail relevant items (``item_groups`` 0/1/2, the full ranking kept),
    and overall recall@k per user-activity quarter (``user_groups`` 0..3, aligned with ``users``)."""
    out = {}
    for g, name in enumerate(("head", "mid", "tail")):
        r = user_recall(topk, truth, users, k, item_groups == g)
        out[f"recall@{k}_{name}"] = float(np.nanmean(r)) if np.isfinite(r).any() else float("nan")
    r = user_recall(topk, truth, users, k)
    for q in range(4):
        sel = (user_groups == q) & np.isfinite(r)
        out[f"recall@{k}_q{q + 1}"] = float(r[sel].mean()) if sel.any() else float("nan")
    return out
