"""Fixed-point encoding into the ring Z_2^32, so that secret-shared sums cancel exactly.

A real value x becomes round(x * 2^f) mod 2^32 (two's complement); the sum of encodings decodes to the
sum of the rounded values exactly as long as that sum stays inside (-2^(31-f), 2^(31-f)). Encoding
clamps each value to +-bound first, with bound chosen so that ``max_clients`` clamped values cannot
overflow. Pure numpy.
"""
from __future__ import annotations

import numpy as np

MASK32 = np.int64(0xFFFFFFFF)


def bound(frac_bits: int, max_clients: int) -> float:
    """Largest |value| one client may contribute so that a sum over max_clients never wraps."""
    return float((2 ** (31 - frac_bits) - 1) / max(1, max_clients))


def quantize(x: np.ndarray, frac_bits: int, max_clients: int) -> np.ndarray:
    """Float values -> int64 fixed-point integers round(clamp(x) * 2^f) (not yet reduced mod 2^32)."""
    b = bound(frac_bits, max_clients)
    return np.rint(np.clip(np.asarray(x, np.float64), -b, b) * float(2 ** frac_bits)).astype(np.int64)


def to_ring(q: np.ndarray) -> np.ndarray:
    """int64 -> uint32 (mod 2^32)."""
    return (np.asarray(q, np.int64) & MASK32).astype(np.uint32)


def from_ring(u: np.ndarray) -> np.ndarray:
    """uint32 -> signed int64 in [-2^31, 2^31)."""
    return np.asarray(u, np.uint32).view(np.int32).astype(np.int64)


def decode(u: np.ndarray, frac_bits: int) -> np.ndarray:
    """uint32 ring values -> float64."""
    return from_ring(u).astype(np.float64) / float(2 ** frac_bits)


def ring_add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(a + b) mod 2^32 for uint32 arrays."""
    return ((np.asarray(a, np.uint64) + np.asarray(b, np.uint64)) & np.uint64(0xFFFFFFFF)).astype(np.uint32)


def ring_sub(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(a - b) mod 2^32 for uint32 arrays."""
    return ((np.asarray(a, np.uint64) + (np.uint64(1 << 32) - np.asarray(b, np.uint64))) & np.uint64(0xFFFFFFFF)
            ).astype(np.uint32)


def quantize_torch(x, frac_bits: int, max_clients: int):
    """``quantize`` for a torch tensor (same rounding: half to even, in float64) -> int64 tensor."""
    import torch

    b = bound(frac_bits, max_clients)
    return torch.round(x.double().clamp(-b, b) * float(2 ** frac_bits)).to(torch.int64)
