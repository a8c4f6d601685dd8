"""The Recommender interface (Cornac style): ``fit`` then ``score``; ``recommend`` built on ``score``."""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import scipy.sparse as sp

from recsys.metrics import topk_from_scores


class Recommender(ABC):
    """Scores every item for a batch of users.

    Subclasses implement ``fit(train, valid)`` and ``score(users) -> (n, n_items)``.
    ``predict`` (explicit ratings) defaults to ``score`` at the given pairs.
    """

    name = "recommender"

    @abstractmethod
    def fit(self, train: sp.csr_matrix, valid: sp.csr_matrix | None = None) -> "Recommender": ...

    @abstractmethod
    def score(self, users: np.ndarray) -> np.ndarray:
        """users: (n,) row indices -> (n, n_items) float32 scores."""

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Predicted ratings for (users[k], items[k]) pairs: (n,)."""
        out = np.empty(len(users), dtype=np.float32)
        order = np.argsort(users, kind="stable")
        u_sorted = users[order]
        uniq, start = np.unique(u_sorted, return_index=True)
        bounds = np.append(start, len(users))
        for c in range(0, len(uniq), 1024):
            chunk = uniq[c:c + 1024]
            s = self.score(chunk)
            for j in range(len(chunk)):
                sel = order[bounds[c + j]:bounds[c + j + 1]]
                out[sel] = s[j, items[sel]]
        return out

    def recommend(self, users: np.ndarray, k: int = 10, exclude: sp.csr_matrix | None = None,
                  batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """Top-k per user: ids (n, k) int64 and scores (n, k), best first; ``exclude`` rows are users."""
        users = np.asarray(users, dtype=np.int64)
        ids, scores = [], []
        for s in range(0, len(users), batch_size):
            u = users[s:s + batch_size]
            sc = self.score(u).astype(np.float32, copy=True)
            i, v = topk_from_scores(sc, k, exclude, rows=u if exclude is not None else None)
            ids.append(i)
            scores.append(v)
        return np.concatenate(ids), np.concatenate(scores)
