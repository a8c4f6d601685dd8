"""Fixed-point encoding into the ring Z_2^32, so that secret-shared sums cancel exactly.

A real value x becomes round(x * 2^f) mod 2^32 (two's complement); the sum of encodings decodes to the
sum of the rounded values exactly as long as that sum stays inside (-2^(31-f), 2^(31-f)). Encoding
clamps each value to +-bound first, with bound chosen so that ``max_clients`` clamped values cannot
overflow. Pure numpy.
"""
from __future__ import annotations

import numpy as np

MASK32 = np.int64(0xFFFFFFFF)


def bound_int(frac_bits: int, max_clients: int) -> int:
    """Largest |fixed-point integer| one client may contribute so that max_clients of them never wrap."""
    return (2 ** 31 - 1) // max(1, max_clients)


def bound(frac_bits: int, max_clients: int) -> float:
    """The same bound as a real value: |x| above it is clamped."""
    return bound_int(frac_bits, max_clients) / float(2 ** frac_bits)


_SAFE = float(2 ** 30)      # clip before the integer conversion (exact in float32 and float64)


def quantize(x: np.ndarray, frac_bits: int, max_clients: int) -> np.ndarray:
    """Float values -> int64 fixed-point integers clamp(round(x * 2^f)) (not yet reduced mod 2^32).
    Exact and identical for float32 input in numpy and torch (``quantize_torch``): scaling by a power
    of two is exact, rounding is half to even in both."""
    x = np.asarray(x)
    x = x if x.dtype in (np.float32, np.float64) else x.astype(np.float64)
    y = np.rint(np.clip(x * x.dtype.type(2 ** frac_bits), -_SAFE, _SAFE)).astype(np.int64)
    b = bound_int(frac_bits, max_clients)
    return np.clip(y, -b, b)


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


def quantize_torch(x, frac_bits: int, max_clients: int, bound: int | None = None):
    """``quantize`` for a torch tensor (float32 or float64, computed in its own dtype) -> int64 tensor.
    ``bound``: the integer clamp, when the caller has it (else from max_clients)."""
    import torch

    y = torch.round((x * float(2 ** frac_bits)).clamp_(-_SAFE, _SAFE)).to(torch.int64)
    b = bound_int(frac_bits, max_clients) if bound is None else bound
    return y.clamp_(-b, b)
