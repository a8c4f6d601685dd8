"""Batched products with per-client matrices, the CPU engine's hot loop.

A personalfr client keeps its own 128 x 256 encoder layer, so every local step multiplies each
client's matrix with one vector, forward (P @ h) and backward (P^T d). torch.bmm runs these as one
small GEMM per client and moves about 12 GB/s on the 2-core development VM, where a plain pass over
the same bytes reaches 28 GB/s from DRAM and ~100 GB/s from cache (docs/benchmarks.md, 2026-12-03).
The numba kernels below stream each client's matrix once, a client per thread, and read it straight
from the client store by row index (``Rows``), so a cohort's matrices are neither gathered into a
buffer nor copied back: ``update_rows`` writes the trained values in place.

Every kernel has a torch version (``*_reference``: the obviously-correct one and the fallback), used
on CUDA, for tensors that need autograd, where numba is missing, and by tests/test_kernels.py to check
the kernels. The kernels change the summation order only (reassociation), so they agree with the torch
versions to float rounding.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from types import SimpleNamespace

import torch

log = logging.getLogger(__name__)

_DTYPES = (torch.float32, torch.float64)


@dataclass(frozen=True)
class Rows:
    """Rows ``index`` (B,) of a per-client tensor ``src`` (R, O, I), read in place by the kernels."""
    src: torch.Tensor
    index: torch.Tensor

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.index.shape[0], *self.src.shape[1:]))

    def dim(self) -> int:
        return self.src.dim()

    def materialize(self) -> torch.Tensor:
        """(B, O, I) copy of the rows."""
        return self.src.index_select(0, self.index)


def _dense(P: torch.Tensor | Rows) -> torch.Tensor:
    return P.materialize() if isinstance(P, Rows) else P


@functools.cache
def _kernels() -> SimpleNamespace | None:
    """The compiled kernels, or None where numba is not installed (compiled lazily per dtype, cached on
    disk next to this file when it is writable)."""
    try:
        import numba as nb
    except ImportError:
        log.info("numba not installed: per-client products use torch.bmm")
        return None
    # reassoc lets the dot products vectorize; contract allows fused multiply-add.
    jit = functools.partial(nb.njit, parallel=True, cache=True, fastmath={"reassoc", "contract"})

    @jit
    def bmv(P, rows, h, out):               # out[b] = P[rows[b]] @ h[b]; P (R, O, I), h (B, I), out (B, O)
        B = rows.shape[0]
        O, I = P.shape[1], P.shape[2]
        for b in nb.prange(B):
            r = rows[b]
            for o in range(O):
                acc = P.dtype.type(0)           # accumulate in P's dtype, as bmm does
                for i in range(I):
                    acc += P[r, o, i] * h[b, i]
                out[b, o] = acc

    @jit
    def bmtv(P, rows, d, out):              # out[b] = P[rows[b]]^T @ d[b]; d (B, O), out (B, I)
        B = rows.shape[0]
        O, I = P.shape[1], P.shape[2]
        for b in nb.prange(B):
            r = rows[b]
            for i in range(I):
                out[b, i] = 0.0
            for o in range(O):
                do = d[b, o]
                for i in range(I):
                    out[b, i] += P[r, o, i] * do

    @jit
    def update_rows(P, rows, a, U, V):      # P[rows[b]] = a P[rows[b]] + U[b] @ V[b]; U (B, O, S), V (B, S, I)
        B = rows.shape[0]
        O, I, S = P.shape[1], P.shape[2], U.shape[2]
        for b in nb.prange(B):
            r = rows[b]
            for o in range(O):
                for i in range(I):
                    P[r, o, i] *= a
                for s in range(S):
                    u = U[b, o, s]
                    for i in range(I):
                        P[r, o, i] += u * V[b, s, i]

    nb.set_num_threads(max(1, min(torch.get_num_threads(), nb.config.NUMBA_NUM_THREADS)))
    return SimpleNamespace(bmv=bmv, bmtv=bmtv, update_rows=update_rows)


def available(dtype: torch.dtype, device: torch.device | str) -> bool:
    """Whether the kernels run for tensors of this dtype and device."""
    return torch.device(device).type == "cpu" and dtype in _DTYPES and _kernels() is not None


def _usable(P: torch.Tensor | Rows, *ts: torch.Tensor) -> SimpleNamespace | None:
    """The kernels when P and every tensor are contiguous CPU float32/float64 of one dtype, no autograd."""
    src = P.src if isinstance(P, Rows) else P
    if src.device.type != "cpu" or src.dtype not in _DTYPES or not src.is_contiguous() or src.requires_grad:
        return None
    if any(t.dtype != src.dtype or t.device != src.device or t.requires_grad for t in ts):
        return None
    return _kernels()


def _parts(P: torch.Tensor | Rows):
    """(source array, row index array) of P for the kernels."""
    if isinstance(P, Rows):
        return P.src.numpy(), P.index.contiguous().numpy()
    return P.numpy(), torch.arange(P.shape[0]).numpy()


def bmv_reference(P: torch.Tensor | Rows, h: torch.Tensor) -> torch.Tensor:
    """P (B, O, I), h (B, I) -> (B, O): each client's P_b @ h_b."""
    # Row-vector form (h^T P^T) runs ~3x faster than P @ h with torch on CPU.
    return torch.bmm(h.unsqueeze(1), _dense(P).transpose(1, 2)).squeeze(1)


def bmtv_reference(P: torch.Tensor | Rows, d: torch.Tensor) -> torch.Tensor:
    """P (B, O, I), d (B, O) -> (B, I): each client's P_b^T @ d_b."""
    return torch.bmm(d.unsqueeze(1), _dense(P)).squeeze(1)


def bmv(P: torch.Tensor | Rows, h: torch.Tensor) -> torch.Tensor:
    """P (B, O, I) or Rows, h (B, I) -> (B, O): P_b @ h_b for every client b."""
    k = _usable(P, h)
    if k is None:
        return bmv_reference(P, h)
    out = h.new_empty(P.shape[:2])
    k.bmv(*_parts(P), h.contiguous().numpy(), out.numpy())
    return out


def bmtv(P: torch.Tensor | Rows, d: torch.Tensor) -> torch.Tensor:
    """P (B, O, I) or Rows, d (B, O) -> (B, I): P_b^T @ d_b for every client b."""
    k = _usable(P, d)
    if k is None:
        return bmtv_reference(P, d)
    out = d.new_empty((P.shape[0], P.shape[2]))
    k.bmtv(*_parts(P), d.contiguous().numpy(), out.numpy())
    return out


def update_rows_reference(P: Rows, a: float, U: torch.Tensor, V: torch.Tensor) -> None:
    """P.src[P.index[b]] = a * P.src[P.index[b]] + U[b] @ V[b]; U (B, O, S), V (B, S, I); index distinct."""
    P.src.index_copy_(0, P.index, torch.baddbmm(P.materialize(), U, V, beta=a).to(P.src.dtype))


def update_rows(P: Rows, a: float, U: torch.Tensor, V: torch.Tensor) -> None:
    """As update_rows_reference, in one pass over the rows and without a copy where the kernels apply."""
    k = _usable(P, U, V)
    if k is None:
        return update_rows_reference(P, a, U, V)
    k.update_rows(*_parts(P), float(a), U.contiguous().numpy(), V.contiguous().numpy())
