"""Batched products with per-client matrices, the CPU engine's hot loop.

A personalfr client keeps its own 128 x 256 encoder layer, so every local step multiplies each
client's matrix with one vector, forward (P @ h) and backward (P^T d). torch.bmm runs these as one
small GEMM per client and moves about 12 GB/s on the 2-core development VM, where a plain torch pass
over memory reaches ~28 GB/s from DRAM and ~100 GB/s from cache
(docs/experiments/2026-12-03-kernels/stream.py; docs/benchmarks.md, 2026-12-03 evening).
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
import warnings
from dataclasses import dataclass
from types import SimpleNamespace

import torch

from recsys.models import autoencoder as ae

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
    """The compiled kernels, or None where numba is not installed (compiled lazily per dtype, ~3 s per
    process). Not cached on disk: a kernel loaded from numba's cache gave results differing in the last
    bits from a freshly compiled one (fastmath), which broke the bit-exact --resume of a run whose first
    half was trained by a process that compiled and whose second half by one that loaded the cache."""
    try:
        import numba as nb
    except ImportError:
        log.info("numba not installed: per-client products use torch.bmm")
        return None
    # reassoc lets the dot products vectorize; contract allows fused multiply-add.
    jit = functools.partial(nb.njit, parallel=True, cache=False, fastmath={"reassoc", "contract"})

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

    @jit
    def item_sums(order, crow, seg, vals, H, out):   # out[i] += sum over entries t of item i, steps s,
        N, D = out.shape                              # of vals[t, s] * H[seg[t], s]
        S = vals.shape[1]
        for i in nb.prange(N):                        # one item per iteration: no write conflicts
            for k in range(crow[i], crow[i + 1]):
                t = order[k]
                b = seg[t]
                for s in range(S):
                    c = vals[t, s]
                    for j in range(D):
                        out[i, j] += c * H[b, s, j]

    @jit
    def sampled_dots(crow, cols, h, W, out):         # out[t] = h[b] . W[cols[t]] for the entries t of row b
        B, D = h.shape
        for b in nb.prange(B):
            for t in range(crow[b], crow[b + 1]):
                c = cols[t]
                acc = h.dtype.type(0)
                for j in range(D):
                    acc += h[b, j] * W[c, j]
                out[t] = acc

    @jit
    def pattern_mm(crow, cols, vals, W, out):        # out[b] = sum over the entries t of row b of vals[t] W[cols[t]]
        B, D = out.shape
        for b in nb.prange(B):
            for j in range(D):
                out[b, j] = 0.0
            for t in range(crow[b], crow[b + 1]):
                c, v = cols[t], vals[t]
                for j in range(D):
                    out[b, j] += v * W[c, j]

    @jit
    def add_lowrank(out, K, U, v, c0, W, s):        # out[b] += sum_{j<s} K[b, j] (U[b, j] . v[b] + c0) W[b, j]
        B = out.shape[0]
        D, E = U.shape[2], W.shape[2]
        for b in nb.prange(B):
            for j in range(s):
                acc = U.dtype.type(0)
                for d in range(D):
                    acc += U[b, j, d] * v[b, d]
                w = K[b, j] * (acc + c0)
                for e in range(E):
                    out[b, e] += w * W[b, j, e]

    M = 2_147_483_647                                # recsys.models.autoencoder._M

    @nb.njit(inline="always")
    def mix(x):                                      # recsys.models.autoencoder._mix, on one int64
        for a in (48_271, 69_621, 16_807):
            x = (x * a + 12_345) % M
            x = x ^ (x >> 13)
        return x

    @nb.njit(parallel=True, cache=False)
    def dropout_masks(base, users, p, scale, out):   # out (S, B, dim): scale where the unit is kept
        S, B, D = out.shape
        for sb in nb.prange(S * B):
            s, b = sb // B, sb % B
            hu = mix((users[b] % M) * 2_654_435 % M + base[s])
            for j in range(D):
                h = mix((hu + j * 40_503) % M)
                out[s, b, j] = scale if h / M >= p else 0.0

    nb.set_num_threads(max(1, min(torch.get_num_threads(), nb.config.NUMBA_NUM_THREADS)))
    return SimpleNamespace(bmv=bmv, bmtv=bmtv, update_rows=update_rows, item_sums=item_sums,
                           dropout_masks=dropout_masks, sampled_dots=sampled_dots, pattern_mm=pattern_mm,
                           add_lowrank=add_lowrank)


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


def add_lowrank_reference(base: torch.Tensor, K: torch.Tensor, U: torch.Tensor, v: torch.Tensor, c0: float,
                          W: torch.Tensor, s: int) -> torch.Tensor:
    """base (B, E) + sum_{j<s} K[b, j] (U[b, j] . v[b] + c0) W[b, j] per client b: the earlier local
    steps' rank-one terms of a layer. K (B, s), U (B, S, D), v (B, D), W (B, S, E) with S >= s."""
    w = K * ((U[:, :s] * v.unsqueeze(1)).sum(2) + c0)                                     # (B, s)
    return base + torch.bmm(w.unsqueeze(1), W[:, :s]).squeeze(1)


def add_lowrank_(base: torch.Tensor, K: torch.Tensor, U: torch.Tensor, v: torch.Tensor, c0: float,
                 W: torch.Tensor, s: int) -> torch.Tensor:
    """As add_lowrank_reference in one pass; the kernel adds into base in place (and returns it), the
    torch fallback (autograd, CUDA, no numba) returns a new tensor. One kernel instead of five ops
    (~15 vs ~100 us at B = 94)."""
    k = _usable(U, K, v, W, base)
    if k is None or not (base.is_contiguous() and K.is_contiguous() and v.is_contiguous() and W.is_contiguous()):
        return add_lowrank_reference(base, K, U, v, c0, W, s)
    k.add_lowrank(base.numpy(), K.numpy(), U.numpy(), v.numpy(), float(c0), W.numpy(), int(s))
    return base


def item_sums_reference(items: torch.Tensor, seg: torch.Tensor, vals: torch.Tensor, H: torch.Tensor,
                        n_items: int) -> torch.Tensor:
    """(N, D): row i = sum over the entries t with items[t] = i and steps s of vals[t, s] * H[seg[t], s].
    items, seg (T,), vals (T, S), H (B, S, D)."""
    per_entry = torch.bmm(vals.unsqueeze(1), H.index_select(0, seg)).squeeze(1)            # (T, D)
    return per_entry.new_zeros((n_items, H.shape[2])).index_add_(0, items, per_entry)


def item_sums(order: torch.Tensor, crow: torch.Tensor, seg: torch.Tensor, vals: torch.Tensor, H: torch.Tensor,
              out: torch.Tensor) -> bool:
    """Add item_sums_reference into out (N, D) in place, for entries listed by item (order (T,) entry
    ids sorted by item, crow (N+1,) CSR starts), one item per thread. False (out untouched) where the
    kernels do not apply; the caller then uses its own sparse product, which unlike the reference needs
    no (T, D) temporary."""
    k = _usable(H, vals, out)
    if k is None or not out.is_contiguous():
        return False
    k.item_sums(order.contiguous().numpy(), crow.contiguous().numpy(), seg.contiguous().numpy(),
                vals.contiguous().numpy(), H.contiguous().numpy(), out.numpy())
    return True


def dropout_keep_steps(seed: int, rnd: int, users: torch.Tensor, steps, dim: int, p: float) -> torch.Tensor:
    """recsys.models.autoencoder.dropout_keep_steps, bit for bit (integer hashing; the kept value is
    torch's own float32 1 / (1 - p)), in one pass instead of ~20 int64 tensor ops."""
    k = _kernels() if users.device.type == "cpu" and p > 0 else None
    if k is None:
        return ae.dropout_keep_steps(seed, rnd, users, steps, dim, p)
    base = ae._mix(torch.tensor([(seed * 1_000_003 + rnd * 7_919 + st * 104_729) % ae._M for st in steps],
                                dtype=torch.int64))                                    # (S,) as the model
    scale = float(torch.ones((), dtype=torch.float32) / (1.0 - p))
    out = torch.empty((len(steps), len(users), dim), dtype=torch.float32)
    k.dropout_masks(base.numpy(), users.to(torch.int64).contiguous().numpy(), float(p), scale, out.numpy())
    return out


def on_pattern(pattern: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """The CSR pattern (B, N) with its T entries set to values (T,)."""
    with warnings.catch_warnings():      # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(pattern.crow_indices(), pattern.col_indices(), values.contiguous(),
                                       pattern.shape, check_invariants=False)


def sampled_dots_reference(pattern: torch.Tensor, h: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """pattern (B, N) CSR with T entries (b_t, i_t), h (B, D), W (N, D) -> (T,) h[b_t] . W[i_t]."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse.sampled_addmm(pattern, h, W.T, beta=0.0).values()   # the pattern's values ignored


def sampled_dots(pattern: torch.Tensor, h: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """As sampled_dots_reference (a sampled dense-dense product), one pattern row per thread."""
    k = _usable(h, W)
    if k is None:
        return sampled_dots_reference(pattern, h, W)
    out = h.new_empty(pattern.col_indices().shape[0])
    k.sampled_dots(pattern.crow_indices().numpy(), pattern.col_indices().numpy(), h.contiguous().numpy(),
                   W.contiguous().numpy(), out.numpy())
    return out


def pattern_mm_reference(pattern: torch.Tensor, vals: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """(B, D): the pattern with values vals (T,) times W (N, D), a sparse-dense product."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse.mm(on_pattern(pattern, vals), W)


def pattern_mm(pattern: torch.Tensor, vals: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """As pattern_mm_reference, one pattern row per thread."""
    k = _usable(W, vals)
    if k is None:
        return pattern_mm_reference(pattern, vals, W)
    out = W.new_empty((pattern.shape[0], W.shape[1]))
    k.pattern_mm(pattern.crow_indices().numpy(), pattern.col_indices().numpy(), vals.contiguous().numpy(),
                 W.contiguous().numpy(), out.numpy())
    return out
