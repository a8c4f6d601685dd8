"""EASE (Steck 2019) from an item Gram matrix: pure math, no transport.

G = XᵀX is a sum over users of their own contribution xᵤxᵤᵀ (only their items' entries), which is what
makes it federatable (federation/ranking/ease.py sums those contributions). The closed form
    P = (G + λI)⁻¹,   B = I − P · diag(1/diag(P)),   diag(B) = 0
gives scores s = x B. For large catalogues the weights travel as the top-k entries of each row of B
(the items a history item votes for), and a client scores with the kept entries only.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def user_gram(items: np.ndarray, n_items: int, weight: float = 1.0) -> sp.coo_matrix:
    """One user's contribution w·x xᵀ over its own items: (N, N) sparse with len(items)² entries."""
    items = np.asarray(items, dtype=np.int64)
    r = np.repeat(items, len(items))
    c = np.tile(items, len(items))
    return sp.coo_matrix((np.full(len(r), weight, np.float64), (r, c)), shape=(n_items, n_items))


def gram(train: sp.csr_matrix, weights: np.ndarray | None = None) -> np.ndarray:
    """Σᵤ wᵤ xᵤxᵤᵀ for binary x (any nonzero is an interaction): (N, N) float64. weights (U,) or None."""
    X = (train != 0).astype(np.float64).tocsr()
    if weights is not None:
        X = sp.diags(np.sqrt(np.asarray(weights, np.float64))) @ X
    return np.asarray((X.T @ X).toarray())


def ease_weights(G: np.ndarray, lam: float) -> np.ndarray:
    """B (N, N) float64 from a Gram matrix (N, N): B = I − P/diag(P), P = (G + λI)⁻¹, zero diagonal."""
    if lam <= 0:
        raise ValueError("EASE needs lambda > 0")
    A = np.array(G, dtype=np.float64, copy=True)
    A[np.diag_indices_from(A)] += lam
    P = np.linalg.inv(A)
    B = -P / np.diag(P)[None, :]
    B[np.diag_indices_from(B)] = 0.0
    return B


def top_neighbours(B: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest weights of each row of B: (idx (N, k) int32, val (N, k) float32), largest first."""
    k = min(k, B.shape[1] - 1)
    idx = np.argpartition(-B, k - 1, axis=1)[:, :k]
    val = np.take_along_axis(B, idx, 1)
    order = np.argsort(-val, axis=1, kind="stable")
    return np.take_along_axis(idx, order, 1).astype(np.int32), np.take_along_axis(val, order, 1).astype(np.float32)


def neighbours_matrix(idx: np.ndarray, val: np.ndarray, n_items: int) -> sp.csr_matrix:
    """The sparse B kept by ``top_neighbours``: (N, N) CSR."""
    N, k = idx.shape
    return sp.csr_matrix((val.ravel(), idx.ravel().astype(np.int64), np.arange(0, N * k + 1, k)), shape=(n_items, n_items))


def scores(X: sp.csr_matrix, B: np.ndarray | sp.csr_matrix) -> np.ndarray:
    """s = x B for the histories X (n, N) (binary): (n, N) float32."""
    Xb = (X != 0).astype(np.float32)
    out = Xb @ B
    return np.asarray(out.toarray() if sp.issparse(out) else out, dtype=np.float32)
