"""Sums over an item's holders: each item row's updates from the step factors of the clients that
hold it, one item per thread (no write conflicts)."""
from __future__ import annotations

import functools

import numba as nb

# parallel: clients (or items) per thread; cache: compiled once per install (kernels._warm_cache);
# reassoc lets the dot products vectorize, contract allows fused multiply-add.
jit = functools.partial(nb.njit, parallel=True, cache=True, fastmath={"reassoc", "contract"})

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
def decoder_row_sums(order, crow, seg, w, K, E, H, W0, ob0, a_end, out, outb, wsum):
    # Per item i, over its entries t (order[crow[i]:crow[i+1]], client b = seg[t]) and steps s:
    # wsum_i = sum_t w_b; out[i] = a_end wsum_i W0[i] + sum_t,s (K[b, s] E[t, s]) w_b H[b, s];
    # outb[i] the same with ob0[i] and 1 for W0[i] and H[b, s]. One item per iteration.
    N, D = out.shape
    S = E.shape[1]
    for i in nb.prange(N):
        ws = w.dtype.type(0)
        for k in range(crow[i], crow[i + 1]):
            ws += w[seg[order[k]]]
        base = a_end * ws
        for j in range(D):
            out[i, j] = base * W0[i, j]
        bb = base * ob0[i]
        for k in range(crow[i], crow[i + 1]):
            t = order[k]
            b = seg[t]
            for s in range(S):
                c = (K[b, s] * E[t, s]) * w[b]
                bb += c
                for j in range(D):
                    out[i, j] += c * H[b, s, j]
        outb[i] = bb
        wsum[i] = ws
