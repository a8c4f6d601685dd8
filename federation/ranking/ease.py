"""Federated EASE: the item Gram matrix as a sum of per-user contributions, the closed form on the server.

What leaves a client (once per job):
  * plain: its item ids and its weight w (the server adds w·x xᵀ). Like personalfr's plain mode, the
    server sees which items the user has; use secure aggregation to hide them;
  * secure aggregation: the upper triangle of w·x xᵀ (N(N+1)/2 values, fixed-point in Z_2^32) as two
    additive shares (privacy.secagg.dense_payloads: a 16-byte seed for aggregator A, the masked vector
    for B). Either share alone is uniformly random; the server sees only G = Σ w·x xᵀ;
  * with DP: each user's weight is w = min(1, clip / n_u), so ‖w·x xᵀ‖_F = w·n_u ≤ clip, and Gaussian
    noise N(0, (σ·clip)²) is added to every upper-triangle entry (by the server, or under secure
    aggregation by each aggregator to its share, so the server never sees a noise-free sum). One
    release over all users: ε from the Gaussian mechanism's RDP at sampling rate 1, one step.
What a client receives: B as a dense (N, N) matrix (small catalogues) or the top-k entries of each row.

In process the secure path computes, in the clear, the ring sum the aggregators' shares add up to
(as Federation.secure_round_sums does); tests hold it bit for bit to the real protocol.
"""
from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from federation.privacy.fixedpoint import decode, ring_add, to_ring
from recsys.ranking.ease import ease_weights, top_neighbours

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EaseSettings:
    lam: float = 300.0
    share: str = "auto"             # dense | neighbours | auto (dense up to dense_max items)
    dense_max: int = 5000
    neighbours: int = 200           # top-k entries per row when shared as neighbours
    secure: bool = False
    frac_bits: int = 8              # fixed-point resolution; sums stay exact below 2^(31-f) per entry
    dp: bool = False
    clip: float = 100.0             # DP: bound on ‖w·x xᵀ‖_F (the number of items a user counts with)
    noise_multiplier: float = 1.0
    delta: float = 1e-4
    noise_seed: int | None = None   # None: fresh OS randomness (production); an int only for tests/benchmarks

    def shares_dense(self, n_items: int) -> bool:
        return self.share == "dense" or (self.share == "auto" and n_items <= self.dense_max)


def triu_size(n: int) -> int:
    return n * (n + 1) // 2


def user_weights(n_per_user: np.ndarray, s: EaseSettings) -> np.ndarray:
    """w_u (U,): 1 without DP; min(1, clip / n_u) with DP (bounds one user's ‖w·x xᵀ‖_F by clip)."""
    n = np.asarray(n_per_user, np.float64)
    if not s.dp:
        return np.ones(len(n))
    return np.minimum(1.0, s.clip / np.maximum(n, 1.0))


def client_contribution(items: np.ndarray, n_items: int, weight: float, frac_bits: int) -> np.ndarray:
    """One client's secure-aggregation vector: the upper triangle of w·x xᵀ, fixed-point in the ring:
    (N(N+1)/2,) uint32 (row-major over i ≤ j)."""
    items = np.unique(np.asarray(items, np.int64))
    i, j = np.meshgrid(items, items, indexing="ij")
    keep = i <= j
    i, j = i[keep], j[keep]
    pos = i * n_items - i * (i - 1) // 2 + (j - i)
    out = np.zeros(triu_size(n_items), np.int64)
    out[pos] = int(round(weight * 2 ** frac_bits))
    return to_ring(out)


def ring_gram(train: sp.csr_matrix, weights: np.ndarray, frac_bits: int) -> np.ndarray:
    """Σ_u of ``client_contribution`` over the users of ``train`` (U, N), computed at once:
    (N(N+1)/2,) uint32 — bit for bit what the two aggregators' shares add up to."""
    X = (train != 0).astype(np.int64).tocsr()
    q = np.round(np.asarray(weights, np.float64) * 2 ** frac_bits).astype(np.int64)  # (U,)
    G = np.asarray((X.T @ sp.diags(q, dtype=np.int64) @ X).toarray())              # exact int64
    iu = np.triu_indices(train.shape[1])
    return to_ring(G[iu])


def dense_from_triu(v: np.ndarray, n: int) -> np.ndarray:
    """(N(N+1)/2,) upper triangle -> (N, N) symmetric."""
    G = np.zeros((n, n), v.dtype)
    G[np.triu_indices(n)] = v
    return G + np.triu(G, 1).T


def noise_triu(n: int, std: float, seed: int | None) -> np.ndarray:
    """N(0, std²) on every upper-triangle entry: (N(N+1)/2,) float64."""
    rng = np.random.default_rng(seed if seed is not None else secrets.randbits(63))
    return rng.standard_normal(triu_size(n)) * std


def aggregator_noise(n: int, s: EaseSettings, party: int) -> np.ndarray:
    """The noise one aggregator adds to its share (each adds the full σ·clip, as privacy.secagg does):
    (N(N+1)/2,) uint32 fixed-point."""
    seed = None if s.noise_seed is None else s.noise_seed * 2 + party
    z = noise_triu(n, s.noise_multiplier * s.clip, seed)
    return to_ring(np.round(z * 2 ** s.frac_bits).astype(np.int64))


def epsilon(s: EaseSettings) -> float | None:
    """ε of the one release at s.delta (None without DP)."""
    if not s.dp:
        return None
    from federation.privacy.dp import epsilon as rdp_epsilon

    return rdp_epsilon(s.noise_multiplier, 1.0, 1, s.delta)


@dataclass
class GramResult:
    G: np.ndarray              # (N, N) float64, what the server learns
    upload_bytes: int          # all clients together
    epsilon: float | None


def federated_gram(train: sp.csr_matrix, s: EaseSettings) -> GramResult:
    """The server's Gram matrix from every user's contribution, under the settings' privacy mode."""
    U, N = train.shape
    n_u = np.diff(train.indptr)
    w = user_weights(n_u, s)
    active = int((n_u > 0).sum())
    if s.secure:
        ring = ring_gram(train, w, s.frac_bits)
        if s.dp:
            for party in (0, 1):
                ring = ring_add(ring, aggregator_noise(N, s, party))
        G = dense_from_triu(decode(ring, s.frac_bits), N)
        from federation.privacy.secagg import SEED

        up = active * (SEED + 4 * triu_size(N))
    else:
        X = (train != 0).astype(np.float64).tocsr()
        G = np.asarray((X.T @ sp.diags(w) @ X).toarray())
        if s.dp:
            G = G + dense_from_triu(noise_triu(N, s.noise_multiplier * s.clip, s.noise_seed), N)
        up = int(8 * n_u.sum() + 8 * active)            # int64 ids + one float64 weight each
    return GramResult(G, int(up), epsilon(s))


@dataclass
class EaseModel:
    """What clients receive: dense B (N, N) or its top-k rows (idx, val (N, k))."""
    n_items: int
    B: np.ndarray | None = None
    idx: np.ndarray | None = None
    val: np.ndarray | None = None

    @property
    def download_bytes(self) -> int:
        if self.B is not None:
            return int(4 * self.B.size)
        return int(self.idx.nbytes + self.val.nbytes)

    def matrix(self):
        from recsys.ranking.ease import neighbours_matrix

        return self.B if self.B is not None else neighbours_matrix(self.idx, self.val, self.n_items)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"B": self.B} if self.B is not None else {"idx": self.idx, "val": self.val}

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray], n_items: int) -> "EaseModel":
        if "B" in a:
            return cls(n_items, B=a["B"].astype(np.float32))
        return cls(n_items, idx=a["idx"].astype(np.int32), val=a["val"].astype(np.float32))


def solve(G: np.ndarray, s: EaseSettings) -> EaseModel:
    """The server's closed form and what it sends."""
    B = ease_weights(G, s.lam)
    N = len(G)
    if s.shares_dense(N):
        return EaseModel(N, B=B.astype(np.float32))
    idx, val = top_neighbours(B, s.neighbours)
    return EaseModel(N, idx=idx, val=val)

