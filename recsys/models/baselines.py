"""Centralized baselines behind the Recommender interface: popularity, EASE, biased MF."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from recsys.models.base import Recommender


class Popularity(Recommender):
    """Scores every item by its number of training interactions (same for all users)."""

    name = "popularity"

    def fit(self, train: sp.csr_matrix, valid=None) -> "Popularity":
        self.pop = np.diff(train.tocsc().indptr).astype(np.float32)                 # (N,)
        r = train.data
        self.mean = float(r.mean()) if len(r) else 0.0
        return self

    def score(self, users: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.pop, (len(users), len(self.pop))).copy()

    def predict(self, users, items):
        return np.full(len(users), self.mean, dtype=np.float32)


class EASE(Recommender):
    """EASE (Steck 2019): closed-form item-item model B = I - P / diag(P), P = (X^T X + lambda I)^-1."""

    name = "ease"

    def __init__(self, lam: float = 500.0):
        self.lam = lam

    def fit(self, train: sp.csr_matrix, valid=None) -> "EASE":
        from recsys.ranking.ease import ease_weights, gram

        self.B = ease_weights(gram(train), self.lam).astype(np.float32)              # (N, N)
        self.X = (train != 0).astype(np.float32).tocsr()
        return self

    def score(self, users: np.ndarray) -> np.ndarray:
        return np.asarray(self.X[users] @ self.B)


class BiasedMF(Recommender):
    """Biased matrix factorization r = mu + b_u + b_i + p_u.q_i, trained with Adam on observed ratings."""

    name = "mf"

    def __init__(self, dim: int = 32, epochs: int = 60, lr: float = 0.01, reg: float = 0.05,
                 batch: int = 4096, seed: int = 0):
        self.dim, self.epochs, self.lr, self.reg, self.batch, self.seed = dim, epochs, lr, reg, batch, seed

    def fit(self, train: sp.csr_matrix, valid: sp.csr_matrix | None = None) -> "BiasedMF":
        g = torch.Generator().manual_seed(self.seed)
        U, N = train.shape
        coo = train.tocoo()
        u = torch.as_tensor(coo.row, dtype=torch.long)
        i = torch.as_tensor(coo.col, dtype=torch.long)
        r = torch.as_tensor(coo.data, dtype=torch.float32)
        self.mu = float(r.mean())
        P = torch.nn.Parameter(torch.randn(U, self.dim, generator=g) * 0.05)
        Q = torch.nn.Parameter(torch.randn(N, self.dim, generator=g) * 0.05)
        bu = torch.nn.Parameter(torch.zeros(U))
        bi = torch.nn.Parameter(torch.zeros(N))
        opt = torch.optim.Adam([P, Q, bu, bi], lr=self.lr)
        best, best_state = float("inf"), None
        for _ in range(self.epochs):
            perm = torch.randperm(len(r), generator=g)
            for s in range(0, len(r), self.batch):
                b = perm[s:s + self.batch]
                pred = self.mu + bu[u[b]] + bi[i[b]] + (P[u[b]] * Q[i[b]]).sum(1)
                loss = ((pred - r[b]) ** 2).mean() + self.reg * ((P[u[b]] ** 2).sum(1) + (Q[i[b]] ** 2).sum(1)).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
            self.P, self.Q, self.bu, self.bi = P.detach(), Q.detach(), bu.detach(), bi.detach()
            if valid is not None and valid.nnz:
                vc = valid.tocoo()
                err = float(np.sqrt(np.mean((self.predict(vc.row, vc.col) - vc.data) ** 2)))
                if err < best:
                    best, best_state = err, (self.P.clone(), self.Q.clone(), self.bu.clone(), self.bi.clone())
        if best_state is not None:
            self.P, self.Q, self.bu, self.bi = best_state
        self.clip = (float(r.min()), float(r.max()))
        return self

    def score(self, users: np.ndarray) -> np.ndarray:
        u = torch.as_tensor(np.asarray(users), dtype=torch.long)
        return (self.mu + self.bu[u, None] + self.bi[None, :] + self.P[u] @ self.Q.T).numpy()

    def predict(self, users, items):
        u = torch.as_tensor(np.asarray(users), dtype=torch.long)
        i = torch.as_tensor(np.asarray(items), dtype=torch.long)
        p = (self.mu + self.bu[u] + self.bi[i] + (self.P[u] * self.Q[i]).sum(1)).numpy()
        return np.clip(p, *getattr(self, "clip", (-np.inf, np.inf)))
