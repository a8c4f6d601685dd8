"""Secure aggregation's fixed-point sums (federation.privacy.fixedpoint), fused: the difference against the
global values, the client's clip factor, the scaling, rounding and clamping, and the sum over clients in
one pass without temporaries. No fastmath: every float32 operation happens in the same order as in
``quantize_torch`` so the integers are identical bit for bit."""
from __future__ import annotations

import numba as nb
import numpy as np

_BLOCK = 1024        # columns per thread in quantized_sum: rows are read contiguously within a block


@nb.njit(cache=True, inline="always")
def _q(v, safe, bound):
    if v > safe:
        v = safe
    elif v < -safe:
        v = -safe
    q = np.int64(np.rint(v))
    if q > bound:
        q = bound
    elif q < -bound:
        q = -bound
    return q


@nb.njit(parallel=True, cache=True)
def quantized_sum(X, G, f, scale, safe, bound, out):     # out[j] += sum_b q((X[b, j] - G[j]) * f[b])
    B, D = X.shape
    nblk = (D + _BLOCK - 1) // _BLOCK
    for k in nb.prange(nblk):                            # one block of columns per iteration
        lo = k * _BLOCK
        hi = min(D, lo + _BLOCK)
        for b in range(B):
            fb = f[b]
            for j in range(lo, hi):
                out[j] += _q(((X[b, j] - G[j]) * fb) * scale, safe, bound)


@nb.njit(cache=True)
def quantized_rows(V, G, items, f, seg, scale, safe, bound, out):   # out[i_t, j] += q((V[t, j] - G[i_t, j]) f[seg_t])
    T, D = V.shape                                                  # serial: entries of one item may be anywhere
    for t in range(T):
        i = items[t]
        ft = f[seg[t]]
        for j in range(D):
            out[i, j] += _q(((V[t, j] - G[i, j]) * ft) * scale, safe, bound)
