"""Federated prototypes of user codes: k-means over the clients' codes without any code leaving a
client on its own, and the client-side blend of a code towards its nearest prototype.

Why: a user's code (the decoder's last hidden layer h3, built by the user's own encoder from a few
dozen interactions) is a noisy estimate of the taste it shares with similar users. Items nobody has
rated yet are scored by that code against their content rows alone, so the noise goes straight into
the cold-item ranking. Pulling the code part way to the centre of the users it resembles removes
much of it (docs/content.md, "Federated prototypes").

Protocol (bisecting k-means: grown by splitting, so no client's code is ever used as a seed):
    the server holds centroids C (K, H); each round every client computes its code h (H,), finds its
    nearest centroid k and sends ``PrototypeStats``: sums (K, H) with h in row k and zeros elsewhere,
    counts (K,) with 1 at k, sq (K,) with |h|^2 at k. A message is a sum over clients of the same
    shape, so it fits secure aggregation: the server needs only the sums over all clients.
    1. K = 1: the mean code (one round).
    2. Split the widest centroid (largest within-cluster error, known from the stats) c -> c +/- r d
       (d a random unit direction, r = ``split_radius`` x the codes' RMS distance to their centroid),
       then ``iters`` Lloyd rounds (centroid = mean of its members; an empty one stays). Repeat until k.
    Each client then scores with (1 - blend) h + blend C[nearest(h)], on its own device.

Pure functions over tensors (no transport, no I/O); ``fit_prototypes`` drives the rounds through a
callable that returns the clients' summed stats, so the in-process simulation and a deployment share it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

# Message keys of one client's (or a summed cohort's) prototype stats.
SUMS_KEY, COUNTS_KEY, SQ_KEY = "proto_sums", "proto_counts", "proto_sq"


@dataclass(frozen=True)
class PrototypeSettings:
    k: int = 16                 # number of prototypes
    blend: float = 0.75         # share of the prototype in the code a client scores with
    iters: int = 3              # Lloyd rounds after each split
    split_radius: float = 0.1   # split offset, in units of the codes' RMS distance to their centroid


@dataclass
class PrototypeStats:
    """Summed over clients: sums (K, H), counts (K,), sq (K,) = sum of |h|^2 per nearest centroid."""
    sums: torch.Tensor
    counts: torch.Tensor
    sq: torch.Tensor

    def __add__(self, other: "PrototypeStats") -> "PrototypeStats":
        return PrototypeStats(self.sums + other.sums, self.counts + other.counts, self.sq + other.sq)

    def as_message(self) -> dict:
        return {SUMS_KEY: self.sums.cpu().numpy(), COUNTS_KEY: self.counts.cpu().numpy(), SQ_KEY: self.sq.cpu().numpy()}


def stats_from_message(msg: dict, shape: tuple[int, int]) -> PrototypeStats:
    """A (summed) prototype message back into stats, checked against the broadcast centroids' shape
    (K, H): ValueError for missing keys, wrong shapes, non-finite values or negative counts."""
    K, H = shape
    want = {SUMS_KEY: (K, H), COUNTS_KEY: (K,), SQ_KEY: (K,)}
    out = {}
    for key, shp in want.items():
        if key not in msg:
            raise ValueError(f"missing {key}")
        a = np.asarray(msg[key], dtype=np.float64)
        if a.shape != shp or not np.isfinite(a).all():
            raise ValueError(f"{key}: shape {a.shape} (expected {shp}) or non-finite values")
        out[key] = torch.as_tensor(a, dtype=torch.float32)
    if (out[COUNTS_KEY] < 0).any() or (out[SQ_KEY] < 0).any():
        raise ValueError("negative counts or squared norms")
    return PrototypeStats(out[SUMS_KEY], out[COUNTS_KEY], out[SQ_KEY])


def nearest(codes: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """(B,) index of the nearest centroid (squared Euclidean) of each code; codes (B, H), centroids (K, H)."""
    # |h - c|^2 = |h|^2 - 2 h.c + |c|^2; |h|^2 is the same for every c, so it is left out.
    d = (centroids * centroids).sum(1)[None, :] - 2 * codes @ centroids.T                        # (B, K)
    return d.argmin(1)


def client_stats(codes: torch.Tensor, centroids: torch.Tensor) -> PrototypeStats:
    """What the clients with ``codes`` (B, H) send for ``centroids`` (K, H), summed over them.
    With B = 1 this is exactly one client's message."""
    K = centroids.shape[0]
    lab = nearest(codes, centroids)                                                               # (B,)
    sums = torch.zeros_like(centroids).index_add_(0, lab, codes)                                 # (K, H)
    counts = torch.zeros(K, dtype=codes.dtype, device=codes.device).index_add_(0, lab, torch.ones_like(lab, dtype=codes.dtype))
    sq = torch.zeros(K, dtype=codes.dtype, device=codes.device).index_add_(0, lab, (codes * codes).sum(1))
    return PrototypeStats(sums, counts, sq)


def secure_client_stats(codes: torch.Tensor, centroids: torch.Tensor, frac_bits: int, max_clients: int
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``client_stats`` as secure aggregation sums them (federation.privacy.secagg, the dense part): each
    client's message quantized to fixed point on its own, then summed exactly in int64. Returns int64
    (sums (K, H), counts (K,), sq (K,)); sq is sent as |h|^2 / H (a code's coordinates are tanh
    outputs, so it stays inside the per-client bound) and scaled back by ``reveal_stats``."""
    from federation.privacy.fixedpoint import quantize_torch

    K, H = centroids.shape
    lab = nearest(codes, centroids)                                                               # (B,)
    dev = codes.device
    sums = torch.zeros(K, H, dtype=torch.int64, device=dev).index_add_(
        0, lab, quantize_torch(codes, frac_bits, max_clients))
    counts = torch.zeros(K, dtype=torch.int64, device=dev).index_add_(0, lab, torch.ones_like(lab))
    sq = torch.zeros(K, dtype=torch.int64, device=dev).index_add_(
        0, lab, quantize_torch((codes.double() ** 2).sum(1) / H, frac_bits, max_clients))
    return sums, counts, sq


def secure_client_vectors(codes: torch.Tensor, centroids: torch.Tensor, frac_bits: int, max_clients: int
                          ) -> torch.Tensor:
    """Each client's own ``secure_client_stats`` message as one int64 vector (B, K*H + 2K):
    [sums (K, H) flattened, counts (K,), sq (K,)], what a client secret-shares in a prototype round."""
    from federation.privacy.fixedpoint import quantize_torch

    K, H = centroids.shape
    B = codes.shape[0]
    lab = nearest(codes, centroids)                                                               # (B,)
    out = torch.zeros(B, K * H + 2 * K, dtype=torch.int64)
    r = torch.arange(B)
    cols = lab[:, None].cpu() * H + torch.arange(H)[None]                                         # (B, H)
    out[r[:, None], cols] = quantize_torch(codes, frac_bits, max_clients).cpu()
    out[r, K * H + lab.cpu()] = 1
    out[r, K * H + K + lab.cpu()] = quantize_torch((codes.double() ** 2).sum(1) / H, frac_bits, max_clients).cpu()
    return out


def split_vector(v: torch.Tensor, K: int, H: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A summed ``secure_client_vectors`` (K*H + 2K,) back into (sums (K, H), counts (K,), sq (K,))."""
    return v[:K * H].reshape(K, H), v[K * H:K * H + K], v[K * H + K:]


def reveal_stats(sums: torch.Tensor, counts: torch.Tensor, sq: torch.Tensor, frac_bits: int, min_clients: int,
                 dtype: torch.dtype = torch.float32) -> PrototypeStats:
    """Summed ``secure_client_stats`` (reduced mod 2^32 as the protocol reveals them) back into stats.
    A prototype with fewer than ``min_clients`` members reveals nothing (its stats are zero, so it stays
    where it is)."""
    from federation.privacy.fixedpoint import decode, from_ring, to_ring

    H = sums.shape[1]
    n = torch.as_tensor(from_ring(to_ring(counts.cpu().numpy())))
    keep = (n >= min_clients).to(torch.float64)
    S = torch.as_tensor(decode(to_ring(sums.cpu().numpy()), frac_bits)) * keep[:, None]
    Q = torch.as_tensor(decode(to_ring(sq.cpu().numpy()), frac_bits)) * H * keep
    dev = sums.device
    return PrototypeStats(S.to(dev, dtype), (n * keep).to(dev, dtype), Q.to(dev, dtype))


def lloyd_update(centroids: torch.Tensor, stats: PrototypeStats) -> torch.Tensor:
    """(K, H): each centroid moved to the mean of its members; a centroid with none stays."""
    n = stats.counts[:, None]
    return torch.where(n > 0, stats.sums / n.clamp(min=1), centroids)


def within_sse(centroids: torch.Tensor, stats: PrototypeStats) -> torch.Tensor:
    """(K,) float64: sum of |h - c_k|^2 over the codes assigned to centroid k, from the stats only
    (sq - 2 c.sums + n |c|^2)."""
    C, S = centroids.double(), stats.sums.double()            # float64: the three terms nearly cancel
    return (stats.sq.double() - 2 * (C * S).sum(1) + stats.counts.double() * (C * C).sum(1)).clamp(min=0)


def rms_spread(centroids: torch.Tensor, stats: PrototypeStats) -> float:
    """RMS distance of the codes to their centroid, from the stats only."""
    n = float(stats.counts.sum())
    return math.sqrt(float(within_sse(centroids, stats).sum()) / n) if n else 0.0


def split_widest(centroids: torch.Tensor, sse: torch.Tensor, radius: float, gen: torch.Generator) -> torch.Tensor:
    """Split the centroid with the largest within-cluster error ``sse`` (K,) into c + r d and c - r d
    (d a random unit vector): (K + 1, H); the new one is last. Ties go to the lower index.
    One split at a time (bisecting k-means): splitting every centroid at once (plain LBG) splits tight
    groups in two while wide ones keep sharing a centroid, and Lloyd rounds do not undo that."""
    j = int(torch.argmax(sse.cpu()))
    d = torch.randn(centroids.shape[1], generator=gen, dtype=torch.float64).to(centroids)
    d = radius * d / d.norm()
    out = centroids.clone()
    out[j] = centroids[j] + d
    return torch.cat([out, (centroids[j] - d)[None]])


def blend(codes: torch.Tensor, centroids: torch.Tensor, beta: float) -> torch.Tensor:
    """(B, H): each code moved ``beta`` of the way to its nearest centroid (the code a client scores with)."""
    return torch.lerp(codes, centroids[nearest(codes, centroids)], beta)


def fit_prototypes(stats_of: Callable[[torch.Tensor], PrototypeStats], dim: int, settings: PrototypeSettings,
                   seed: int, dtype: torch.dtype = torch.float32, device: str = "cpu",
                   on_round: Callable[[int, torch.Tensor, PrototypeStats], None] | None = None) -> torch.Tensor:
    """Run the bisecting k-means rounds; ``stats_of(centroids)`` returns the clients' summed stats for the
    broadcast ``centroids`` (one communication round). Returns the prototypes (k, dim).
    on_round(round, centroids, stats): called after each round, e.g. for accounting or a progress bar."""
    gen = torch.Generator().manual_seed(seed)
    rnd = 0

    def ask(C):
        nonlocal rnd
        st = stats_of(C)
        rnd += 1
        if on_round is not None:
            on_round(rnd, C, st)
        return st

    C = torch.zeros(1, dim, dtype=dtype, device=device)
    st = ask(C)
    if float(st.counts.sum()) == 0:
        raise ValueError("no client sent prototype stats")
    C = lloyd_update(C, st)                                                                       # the mean code
    while C.shape[0] < settings.k:
        # st holds the assignment under the centroids C came from, so its rows match C row by row.
        C = split_widest(C, within_sse(C, st), settings.split_radius * rms_spread(C, st), gen)
        for _ in range(settings.iters):
            st = ask(C)
            C = lloyd_update(C, st)
    return C


def rounds_needed(settings: PrototypeSettings) -> int:
    """Communication rounds ``fit_prototypes`` runs: 1, then ``iters`` after each of the k - 1 splits."""
    return 1 + settings.iters * (settings.k - 1)
