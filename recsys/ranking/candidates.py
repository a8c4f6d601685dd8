"""Candidates and their features, computed where a user's data lives (pure numpy, no I/O).

A batch of users is a convenience: every row of every output depends only on that user's own history
and on public or federated item-level quantities (catalogue, item popularity and age, shared models).

Sources score every item for a user; ``candidates`` is the union of each source's top-n over the items
the user has not seen; ``features`` describes each (user, candidate) pair.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

ITEM_FEATURES = ("item_pop", "item_age", "hist_max_sim", "hist_mean_sim", "user_activity", "n_sources")


def feature_names(sources: tuple[str, ...]) -> list[str]:
    """The feature columns for these sources, in order: each source's score, its z-score over the
    user's unseen items, log(1 + rank) and 1/(1 + rank), then the item and user features."""
    return [f"{s}_{k}" for s in sources for k in ("score", "z", "rank", "rrank")] + list(ITEM_FEATURES)


def masked(scores: np.ndarray, seen: sp.csr_matrix) -> np.ndarray:
    """A copy of scores (B, N) with the users' seen items (rows of ``seen``, (B, N)) at -inf."""
    out = np.array(scores, dtype=np.float32, copy=True)
    r = np.repeat(np.arange(len(out)), np.diff(seen.indptr))
    out[r, seen.indices] = -np.inf
    return out


def ranks(scores: np.ndarray) -> np.ndarray:
    """0-based rank of every item within its row (best = 0, ties by item id): (B, N) int32."""
    order = np.argsort(-scores, axis=1, kind="stable")
    r = np.empty_like(order)
    np.put_along_axis(r, order, np.arange(scores.shape[1])[None, :].repeat(len(scores), 0), 1)
    return r.astype(np.int32)


@dataclass
class Candidates:
    """Per user b, items[offsets[b]:offsets[b+1]] (sorted ids): the union of the sources' top-n."""
    offsets: np.ndarray          # (B + 1,) int64
    items: np.ndarray            # (P,) int64
    user: np.ndarray             # (P,) int64 row within the batch

    def group_sizes(self) -> np.ndarray:
        return np.diff(self.offsets)


def candidates(rank_by_source: dict[str, np.ndarray], n: int, n_seen: np.ndarray) -> Candidates:
    """Union over sources of the items ranked < n among each user's unseen items.
    rank_by_source: name -> (B, N) ranks of masked scores (seen items rank last); n_seen (B,)."""
    R = next(iter(rank_by_source.values()))
    B, N = R.shape
    unseen_rank_ok = np.zeros((B, N), bool)
    for r in rank_by_source.values():
        unseen_rank_ok |= r < np.minimum(n, N - n_seen)[:, None]
    user, items = np.nonzero(unseen_rank_ok)
    offsets = np.concatenate([[0], np.cumsum(np.bincount(user, minlength=B))])
    return Candidates(offsets.astype(np.int64), items.astype(np.int64), user.astype(np.int64))


def item_stats(train: sp.csr_matrix, times: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """Public-aggregate item features: log(1 + holders) and age in days since the item's first
    training interaction, relative to the last training interaction overall: ((N,), (N,)) float32."""
    pop = np.bincount(train.indices, minlength=train.shape[1]).astype(np.float64)
    t = times.tocsc()
    first = np.full(train.shape[1], np.nan)
    for j in range(train.shape[1]):
        col = t.data[t.indptr[j]:t.indptr[j + 1]]
        if len(col):
            first[j] = col.min()
    now = np.nanmax(first) if np.isfinite(first).any() else 0.0
    age = np.where(np.isfinite(first), (now - first) / 86400.0, -1.0)
    return np.log1p(pop).astype(np.float32), age.astype(np.float32)


def features(cands: Candidates, scores_by_source: dict[str, np.ndarray], rank_by_source: dict[str, np.ndarray],
             n: int, history: sp.csr_matrix, item_pop: np.ndarray, item_age: np.ndarray,
             content: np.ndarray | None) -> np.ndarray:
    """(P, F) float32 features of each (user, candidate) pair, columns ``feature_names(sources)``.

    scores/ranks_by_source: (B, N) per source (masked scores, their ranks); history (B, N): the users'
    own training items; content (N, D) unit item vectors or None (similarity features are then 0)."""
    u, i = cands.user, cands.items
    cols, in_top = [], np.zeros(len(u), np.float32)
    for s in scores_by_source:
        S = scores_by_source[s]
        fin = np.isfinite(S)
        n_fin = np.maximum(fin.sum(1), 1)
        mu = np.where(fin, S, 0.0).sum(1) / n_fin                                           # (B,)
        sd = np.sqrt(np.maximum(np.where(fin, S * S, 0.0).sum(1) / n_fin - mu * mu, 0.0)) + 1e-9
        sc = S[u, i]
        rk = rank_by_source[s][u, i].astype(np.float32)
        cols += [np.where(np.isfinite(sc), sc, 0.0), np.where(np.isfinite(sc), (sc - mu[u]) / sd[u], 0.0),
                 np.log1p(rk), 1.0 / (1.0 + rk)]
        in_top += rk < n
    hmax = np.zeros(len(u), np.float32)
    hmean = np.zeros(len(u), np.float32)
    if content is not None:
        for b in range(len(cands.offsets) - 1):
            lo, hi = cands.offsets[b], cands.offsets[b + 1]
            h = history.indices[history.indptr[b]:history.indptr[b + 1]]
            if hi > lo and len(h):
                sims = content[i[lo:hi]] @ content[h].T                            # (C_b, n_b)
                hmax[lo:hi], hmean[lo:hi] = sims.max(1), sims.mean(1)
    activity = np.log1p(np.diff(history.indptr)).astype(np.float32)[u]
    cols += [item_pop[i], item_age[i], hmax, hmean, activity, in_top]
    return np.stack(cols, 1).astype(np.float32)


def labels(cands: Candidates, truth: sp.csr_matrix) -> np.ndarray:
    """(P,) float32: 1 where the candidate is in the user's held-out items (rows of ``truth``, (B, N))."""
    return np.asarray(truth[cands.user, cands.items]).ravel().astype(np.float32) > 0
