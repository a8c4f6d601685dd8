"""The PersonalFR autoencoder trained centrally ("joint"): one shared encoder and decoder, all data
in one place. The upper reference for what federation can reach with the same architecture."""
from __future__ import annotations

import copy

import numpy as np
import scipy.sparse as sp
import torch

from recsys.models.autoencoder import AEShape, decode_hidden, full_scores, init_params, input_values
from recsys.models.base import Recommender


class JointAutoencoder(Recommender):
    name = "joint-ae"

    def __init__(self, shape: AEShape, epochs: int = 200, lr: float = 1e-3, weight_decay: float = 0.0,
                 batch: int = 64, seed: int = 0, eval_every: int = 5, patience: int = 6, eval_fn=None):
        self.shape, self.epochs, self.lr, self.wd, self.batch, self.seed = shape, epochs, lr, weight_decay, batch, seed
        self.eval_every, self.patience, self.eval_fn = eval_every, patience, eval_fn

    def _hidden(self, X: torch.Tensor, train: bool) -> torch.Tensor:
        p = self.p
        h1 = torch.tanh(X @ p["enc_in"] + p["enc_b1"])                               # (B, H1)
        h2 = torch.tanh(h1 @ p["enc_W2"].T + p["enc_b2"])                             # (B, H2)
        z = torch.nn.functional.dropout(h2, self.shape.dropout, train)
        return decode_hidden(p, z)                                                    # (B, H1)

    def fit(self, train: sp.csr_matrix, valid: sp.csr_matrix | None = None) -> "JointAutoencoder":
        """eval_fn(model) -> float, lower is better (e.g. valid RMSE, or -NDCG); used for early stopping."""
        torch.manual_seed(self.seed)
        train = train.tocsr()
        vals = input_values(self.shape, train.data, np.diff(train.indptr))
        X = sp.csr_matrix((vals, train.indices, train.indptr), shape=train.shape).toarray().astype(np.float32)
        self.X = torch.as_tensor(X)
        self.p = {k: torch.nn.Parameter(v) for k, v in init_params(self.shape, self.seed).items()}
        opt = torch.optim.Adam(self.p.values(), lr=self.lr, weight_decay=self.wd)
        users = np.flatnonzero(X.any(1))
        rng = np.random.default_rng(self.seed)
        best, best_p, bad = float("inf"), None, 0
        for ep in range(self.epochs):
            order = rng.permutation(users)
            for s in range(0, len(order), self.batch):
                xb = self.X[order[s:s + self.batch]]
                y = full_scores(self.p, self._hidden(xb, True))                      # (B, N)
                if self.shape.mode == "explicit":
                    m = (xb != 0).float()
                    loss = (((y - xb) ** 2 * m).sum(1) / m.sum(1).clamp(min=1)).mean()
                else:
                    loss = -(torch.log_softmax(y, 1) * (xb != 0)).sum(1).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
            if self.eval_fn is not None and (ep + 1) % self.eval_every == 0:
                v = self.eval_fn(self)
                if v < best - 1e-5:
                    best, best_p, bad = v, copy.deepcopy({k: t.detach().clone() for k, t in self.p.items()}), 0
                else:
                    bad += 1
                    if bad >= self.patience:
                        break
        if best_p is not None:
            self.p = best_p
        self.p = {k: v.detach() for k, v in self.p.items()}
        self.epochs_run = ep + 1
        return self

    @torch.no_grad()
    def score(self, users: np.ndarray) -> np.ndarray:
        xb = self.X[torch.as_tensor(np.asarray(users), dtype=torch.long)]
        return full_scores(self.p, self._hidden(xb, False)).numpy()
