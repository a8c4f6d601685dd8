"""Per-client matrix-vector products read in place by row index, their in-place update, and the
sampled products over a CSR pattern (federation.engine.kernels wraps them for torch)."""
from __future__ import annotations

import functools

import numba as nb

# parallel: clients (or items) per thread; cache: compiled once per install (kernels._warm_cache);
# reassoc lets the dot products vectorize, contract allows fused multiply-add.
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

@nb.njit(inline="always", fastmath={"reassoc", "contract"})
def _update_row(P, r, a, U, V):         # P[r] = a P[r] + U @ V; U (O, S), V (S, I)
    for o in range(P.shape[1]):
        for i in range(P.shape[2]):
            P[r, o, i] *= a
        for s in range(U.shape[1]):
            u = U[o, s]
            for i in range(P.shape[2]):
                P[r, o, i] += u * V[s, i]

@jit
def update_rows(P, rows, a, U, V):      # P[rows[b]] = a P[rows[b]] + U[b] @ V[b]; U (B, O, S), V (B, S, I)
    for b in nb.prange(rows.shape[0]):
        _update_row(P, rows[b], a, U[b], V[b])


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

@jit
def rows_from_factors(P0, items, seg, KE, H, a, out):   # out[t] = a P0[items[t]] + sum_s KE[t, s] H[seg[t], s]
    T, D = out.shape                                     # P0 (N, D), KE (T, S), H (B, S, D): one entry per thread
    S = KE.shape[1]
    for t in nb.prange(T):
        i, b = items[t], seg[t]
        for j in range(D):
            out[t, j] = a * P0[i, j]
        for s in range(S):
            c = KE[t, s]
            for j in range(D):
                out[t, j] += c * H[b, s, j]
