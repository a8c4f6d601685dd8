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

import contextlib
import functools
import logging
import warnings
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
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

    fast = {"reassoc", "contract"}
    _exp = _vector_exp(nb)

    @nb.njit(inline="always", fastmath=fast)
    def _tanh(v):                           # 1 - 2 / (e^2v + 1): one exp, ~3x faster than libm's tanh;
        return 1 - 2 / (_exp(2 * v) + 1)    # absolute error at float rounding, +-1 beyond exp's range

    @nb.njit(inline="always", fastmath=fast)
    def _coef(b, s, bco, Hc, K):            # K[j] = step j's end coefficient at step s times its clip factor
        for j in range(s):
            K[j] = Hc[b, j] * bco[s, j]

    @nb.njit(inline="always", fastmath=fast)
    def _weights(Hu, b, s, K, c0, g):       # g[j] = K_j (u_j . u_s + c0) for the earlier steps j < s
        for j in range(s):
            acc = Hu.dtype.type(0)
            for i in range(Hu.shape[2]):
                acc += Hu[b, j, i] * Hu[b, s, i]
            g[j] = K[j] * (acc + c0)

    @nb.njit(inline="always", fastmath=fast)
    def _layer(P, q, bias, b, s, As, g, Hin, Hw, pre):   # pre = a (P[q] h + bias) + sum_j g_j w_j
        for o in range(P.shape[1]):
            acc = P.dtype.type(0)
            for i in range(P.shape[2]):
                acc += P[q, o, i] * Hin[b, s, i]
            pre[o] = As * (acc + bias[b, o])
        for j in range(s):                  # the earlier steps' terms as separate passes: they vectorize
            gj = g[j]
            for o in range(P.shape[1]):
                pre[o] += gj * Hw[b, j, o]

    @nb.njit(inline="always", fastmath=fast)
    def _mtv(P, q, Hd, b, s, out):          # out = P[q]^T d_s
        for i in range(out.shape[0]):
            out[i] = 0.0
        for o in range(P.shape[1]):
            d = Hd[b, s, o]
            for i in range(P.shape[2]):
                out[i] += P[q, o, i] * d

    @nb.njit(inline="always", fastmath=fast)
    def _tanh_grad(sv, dv, g, b, s, Hw, t, m, Hd):
        # d_s = (sv dv + sum_j g_j w_j) m (1 - t^2) for a layer t = tanh(pre), output w = m t;
        # returns (|w_s|^2, |d_s|^2) for the gradient norm.
        D = Hw.shape[2]
        for i in range(D):
            Hd[b, s, i] = sv * dv[i]
        for j in range(s):
            gj = g[j]
            for i in range(D):
                Hd[b, s, i] += gj * Hw[b, j, i]
        nw = Hw.dtype.type(0)
        nd = Hw.dtype.type(0)
        for i in range(D):
            w = Hw[b, s, i]
            d = Hd[b, s, i] * m[i] * (1 - t[i] * t[i])
            Hd[b, s, i] = d
            nw += w * w
            nd += d * d
        return nw, nd

    @nb.njit(inline="always", fastmath=fast)
    def _forward(b, s, As, K, g, t2, P2, q2, b2, P3, q3, b3, E0x, tie, xx1, keep, Hd1, Hh1, Hd2, Hz, Hd3, Hh3):
        # One client's step-s forward of federation.cohort.train_cohort (P_s = a_s P_0 + sum_j K_j u_j v_j^T):
        # writes h1, z (t2 into t2) and h3 at [b, s]; leaves g[j] = K_j (h3_j . h3 + 1) for the scores.
        H1 = E0x.shape[1]                   # h1 = tanh(a E0x + tie + (|x|^2 + 1) sum_j K_j d1_j)
        for i in range(H1):
            Hh1[b, s, i] = As * E0x[b, i] + tie[b, i]
        for j in range(s):
            kj = xx1[b] * K[j]
            for i in range(H1):
                Hh1[b, s, i] += kj * Hd1[b, j, i]
        for i in range(H1):
            Hh1[b, s, i] = _tanh(Hh1[b, s, i])
        _weights(Hh1, b, s, K, 1.0, g)      # pre2 = a (P2 h1 + b2) + sum_j K_j (h1_j . h1 + 1) d2_j
        _layer(P2, q2, b2, b, s, As, g, Hh1, Hd2, t2)
        for o in range(t2.shape[0]):
            t2[o] = _tanh(t2[o])
            Hz[b, s, o] = t2[o] * keep[s, b, o]
        _weights(Hz, b, s, K, 1.0, g)       # pre3 = a (P3 z + b3) + sum_j K_j (z_j . z + 1) d3_j
        _layer(P3, q3, b3, b, s, As, g, Hz, Hd3, Hh3[b, s])
        for o in range(Hh3.shape[2]):
            Hh3[b, s, o] = _tanh(Hh3[b, s, o])
        _weights(Hh3, b, s, K, 1.0, g)

    @nb.njit(inline="always", fastmath=fast)
    def _backward(b, s, As, sv, dv, K, g, t2, dz, dh, P2, q2, P3, q3, xx1, keep, t0, t1, He, clip, one,
                  Hd1, Hh1, Hd2, Hz, Hd3, Hh3):
        # One client's step-s backward, from dv (H1,) = dL/dh3 through the start rows divided by sv and
        # the rows' gradients He[t0:t1, s]: writes d3, d2, d1 at [b, s] and returns the clip factor.
        # one: ones (max(H1, H2),), the mask of the layers without dropout (allocated by the caller once).
        for j in range(s):                  # dh3 = sv dv + sum_j K_j (sum_t e_t e_tj) h3_j
            acc = He.dtype.type(0)
            for t in range(t0, t1):
                acc += He[t, s] * He[t, j]
            g[j] = K[j] * acc
        esq = He.dtype.type(0)
        for t in range(t0, t1):
            esq += He[t, s] * He[t, s]
        nh3, nd3 = _tanh_grad(sv, dv, g, b, s, Hh3, Hh3[b, s], one, Hd3)
        _mtv(P3, q3, Hd3, b, s, dz)         # dz = a P3^T d3 + sum_j K_j (d3_j . d3) z_j
        _weights(Hd3, b, s, K, 0.0, g)
        nz, nd2 = _tanh_grad(As, dz, g, b, s, Hz, t2, keep[s, b], Hd2)   # z = keep t2
        _mtv(P2, q2, Hd2, b, s, dh)         # dh1 = a P2^T d2 + sum_j K_j (d2_j . d2) h1_j
        _weights(Hd2, b, s, K, 0.0, g)
        nh1, nd1 = _tanh_grad(As, dh, g, b, s, Hh1, Hh1[b, s], one, Hd1)
        # clipping factor from the gradient norm over all parameters (|u v^T| = |u| |v|)
        sq = nd1 * xx1[b] + nd2 * (nh1 + 1) + nd3 * (nz + 1) + esq * (nh3 + 1)
        if clip > 0:
            return min(1.0, clip / (np.sqrt(sq) + 1e-6))
        return 1.0

    @nb.njit(inline="always", fastmath=fast)
    def _write_trained(P, q, a_end, bend, Hc, b, Hu, Hv, U):
        # P[q] = a_end P[q] + sum_j bend_j c_j u_j v_j^T: the client's trained matrix, written in place
        # while its start value is still in cache, as update_rows would (U (O, S): a buffer for its factors)
        for j in range(bend.shape[0]):
            kj = Hc[b, j] * bend[j]
            for o in range(U.shape[0]):
                U[o, j] = kj * Hu[b, j, o]
        _update_row(P, q, a_end, U, Hv[b])

    @jit
    def local_steps_explicit(P2, r2, b2, P3, r3, b3, E0x, tie, xx1, keep, a, bco, clip,
                             crow, items, x, W, ob, cnt, Hd1, Hh1, Hd2, Hz, Hd3, Hh3, He, Hc, loss, a_end, bend, wr):
        # All S local steps of explicit-mode clients with shared item rows, one client per thread,
        # so a client's 128 x 256 layer is read from DRAM once per round, not twice per step.
        # P2 (R2, H2, H1) rows r2 (B,): enc_W2; P3 (R3, H1, H2) rows r3: dec_W1; b2 (B, H2), b3 (B, H1)
        # start biases; E0x, tie (B, H1); keep (S, B, H2); a (S,), bco (S, S) the SGD coefficients;
        # entries crow (B+1,), items, x (T,); W (N, H1), ob (N,) the start rows. Writes the step
        # factors H* (B, S, .), He (T, S), Hc (B, S) and the loss summed over steps (B,). wr: also write
        # each client's trained P2 (a_end P2 + sum_j bend_j c_j d2_j h1_j^T) into P2 after its last step.
        B, H1 = E0x.shape
        H2 = P2.shape[1]
        S = a.shape[0]
        for b in nb.prange(B):
            q2, q3, t0, t1 = r2[b], r3[b], crow[b], crow[b + 1]
            K = np.empty(S, E0x.dtype)
            g = np.empty(S, E0x.dtype)
            t2 = np.empty(H2, E0x.dtype)
            dv = np.empty(H1, E0x.dtype)
            dh = np.empty(H1, E0x.dtype)
            dz = np.empty(H2, E0x.dtype)
            one = np.ones(max(H1, H2), E0x.dtype)
            U2 = np.empty((H2, S), E0x.dtype)
            lsum = E0x.dtype.type(0)
            for s in range(S):
                As = a[s]
                _coef(b, s, bco, Hc, K)
                _forward(b, s, As, K, g, t2, P2, q2, b2, P3, q3, b3, E0x, tie, xx1, keep, Hd1, Hh1, Hd2, Hz,
                         Hd3, Hh3)
                # y_t = a (W_i . h3 + ob_i) + sum_j g_j e_tj; e_t = 2 (y_t - x_t) / n; dv = sum_t e_t W_i
                rr = E0x.dtype.type(0)
                for i in range(H1):
                    dv[i] = 0.0
                for t in range(t0, t1):
                    it = items[t]
                    acc = W.dtype.type(0)
                    for i in range(H1):
                        acc += W[it, i] * Hh3[b, s, i]
                    y = As * (acc + ob[it])
                    for j in range(s):
                        y += g[j] * He[t, j]
                    r = y - x[t]
                    rr += r * r
                    e = 2 * r / cnt[b]
                    He[t, s] = e
                    for i in range(H1):
                        dv[i] += e * W[it, i]
                lsum += rr / cnt[b]
                Hc[b, s] = _backward(b, s, As, As, dv, K, g, t2, dz, dh, P2, q2, P3, q3, xx1, keep, t0, t1, He,
                                     clip, one, Hd1, Hh1, Hd2, Hz, Hd3, Hh3)
            loss[b] = lsum
            if wr:
                _write_trained(P2, q2, a_end, bend, Hc, b, Hd2, Hh1, U2)

    @nb.njit(inline="always", fastmath=fast)
    def _forward_into(b, s, a, bco, K, g, gy, h3, t2, P2, r2, b2, P3, r3, b3, E0x, tie, xx1, keep, Hc, Hd1, Hh1,
                      Hd2, Hz, Hd3, Hh3):
        # _forward of client b's step s, also copying h3 and the scores' weights g[:s] out (gy, h3)
        _coef(b, s, bco, Hc, K)
        _forward(b, s, a[s], K, g, t2, P2, r2[b], b2, P3, r3[b], b3, E0x, tie, xx1, keep, Hd1, Hh1, Hd2, Hz, Hd3,
                 Hh3)
        for j in range(s):
            gy[j] = g[j]
        for i in range(h3.shape[0]):
            h3[i] = Hh3[b, s, i]

    @jit
    def local_steps_implicit(P2, r2, b2, P3, r3, b3, E0x, tie, xx1, keep, a, bco, clip, crow, items, W, ob, cnt,
                             nblk, nrng, Hd1, Hh1, Hd2, Hz, Hd3, Hh3, He, Hc, loss, a_end, bend, wr):
        # All S local steps of implicit-mode clients with frozen start rows W (N, H1), ob (N,). The
        # softmax over all N items needs (B, H1) x (H1, N) products per step. They run per item range
        # (nrng contiguous ranges, one per parallel iteration, each a single-threaded BLAS call with all
        # B clients): a range's rows are packed for B clients at once, not once per client block, and
        # stay in that core's cache between the step's two products. The softmax is taken per range and
        # combined (max and sum of exponentials per range). The per-client parts run in nblk client
        # blocks, one per thread. Arguments and outputs as local_steps_explicit (no ratings: every
        # entry is a positive).
        B, H1 = E0x.shape
        H2 = P2.shape[1]
        N = W.shape[0]
        S = a.shape[0]
        R = nrng
        dt = E0x.dtype
        logtiny = np.log(np.finfo(dt).tiny)
        fbuf = np.empty(B * N, dt)                  # range r's scores, then dL/dscores: (B, n_r) at B * i0
        dHr = np.empty((R, B, H1), dt)              # range r's part of dL/dh3 via the start rows
        mr = np.empty((R, B), dt)                   # range r's max score and sum of exp(score - max)
        zr = np.empty((R, B), dt)
        nll = np.zeros((R, B), dt)                  # range r's own items' log-likelihood (negated)
        Gy = np.empty((B, S), dt)
        T2 = np.empty((B, H2), dt)
        h3 = np.empty((B, H1), dt)
        for k in nb.prange(nblk):
            K = np.empty(S, dt)
            g = np.empty(S, dt)
            for b in range(k * B // nblk, (k + 1) * B // nblk):
                _forward_into(b, 0, a, bco, K, g, Gy[b], h3[b], T2[b], P2, r2, b2, P3, r3, b3, E0x, tie,
                              xx1, keep, Hc, Hd1, Hh1, Hd2, Hz, Hd3, Hh3)
        for s in range(S):
            As = a[s]
            for r in nb.prange(R):
                # own items y_t = a (W_i . h3 + ob_i) + sum_j g_j e_tj, the others W_i . h3 + ob_i;
                # then exp(score - the range's max) and its sum
                i0, i1 = r * N // R, (r + 1) * N // R
                F = fbuf[B * i0:B * i1].reshape((B, i1 - i0))
                np.dot(h3, W[i0:i1].T, F)                                      # (B, n_r)
                for b in range(B):
                    row = F[b]
                    for i in range(i1 - i0):
                        row[i] += ob[i0 + i]
                    for t in range(crow[b], crow[b + 1]):
                        it = items[t]
                        if i0 <= it < i1:
                            y = As * row[it - i0]
                            for j in range(s):
                                y += Gy[b, j] * He[t, j]
                            row[it - i0] = y
                            He[t, s] = y                # kept for the log-likelihood below
                    m = row[0]
                    for i in range(i1 - i0):
                        m = max(m, row[i])
                    z = dt.type(0)
                    for i in range(i1 - i0):
                        row[i] = _exp(row[i] - m)
                        z += row[i]
                    mr[r, b] = m
                    zr[r, b] = z
            for r in nb.prange(R):
                # dL/dscores = n_u softmax - 1[own], own entries times a (their start term's factor)
                i0, i1 = r * N // R, (r + 1) * N // R
                F = fbuf[B * i0:B * i1].reshape((B, i1 - i0))
                for b in range(B):
                    row = F[b]
                    m = mr[0, b]
                    for q in range(1, R):
                        m = max(m, mr[q, b])
                    z = dt.type(0)
                    for q in range(R):
                        z += zr[q, b] * _exp(mr[q, b] - m)
                    # log p_t = y_t - m - log z: one log per client, range and step; floored at log(tiny)
                    # as the torch version's log of p clamped at the smallest normal float
                    lz = m + np.log(z)
                    sc = cnt[b] * _exp(mr[r, b] - m) / z
                    for t in range(crow[b], crow[b + 1]):
                        it = items[t]
                        if i0 <= it < i1:
                            nll[r, b] -= max(He[t, s] - lz, logtiny)
                            He[t, s] = row[it - i0] * sc - 1
                    for i in range(i1 - i0):
                        row[i] *= sc
                    for t in range(crow[b], crow[b + 1]):
                        it = items[t]
                        if i0 <= it < i1:
                            row[it - i0] = As * He[t, s]
                np.dot(F, W[i0:i1], dHr[r])                                   # (B, H1)
            for k in nb.prange(nblk):
                # step s's backward and step s + 1's forward back to back: the client's own layer is
                # still in cache for the second read.
                K = np.empty(S, dt)
                g = np.empty(S, dt)
                dz = np.empty(H2, dt)
                dh = np.empty(H1, dt)
                dv = np.empty(H1, dt)
                one = np.ones(max(H1, H2), dt)
                U2 = np.empty((H2, S), dt)
                for b in range(k * B // nblk, (k + 1) * B // nblk):
                    for i in range(H1):
                        dv[i] = dHr[0, b, i]
                    for q in range(1, R):
                        for i in range(H1):
                            dv[i] += dHr[q, b, i]
                    _coef(b, s, bco, Hc, K)
                    Hc[b, s] = _backward(b, s, As, 1.0, dv, K, g, T2[b], dz, dh, P2, r2[b], P3, r3[b], xx1,
                                         keep, crow[b], crow[b + 1], He, clip, one, Hd1, Hh1, Hd2, Hz, Hd3, Hh3)
                    if s + 1 < S:
                        _forward_into(b, s + 1, a, bco, K, g, Gy[b], h3[b], T2[b], P2, r2, b2, P3, r3, b3, E0x,
                                      tie, xx1, keep, Hc, Hd1, Hh1, Hd2, Hz, Hd3, Hh3)
                    elif wr:                                            # the layer is in cache: write it
                        _write_trained(P2, r2[b], a_end, bend, Hc, b, Hd2, Hh1, U2)
        for b in nb.prange(B):
            acc = dt.type(0)
            for q in range(R):
                acc += nll[q, b]
            loss[b] = acc

    M = 2_147_483_647                                # recsys.models.autoencoder._M

    @nb.njit(inline="always")
    def mod(y):                                      # y % M for 0 <= y < 2^61 without a division: M = 2^31 - 1
        r = (y & M) + (y >> 31)                      # is a Mersenne prime (2^31 = 1 mod M); r < 2M. This
        return r - M if r >= M else r                # loop vectorizes, % M does not (7x faster masks)

    @nb.njit(inline="always")
    def mix(x):                                      # recsys.models.autoencoder._mix, on one int64 0 <= x < 2^40
        for a in (48_271, 69_621, 16_807):
            x = mod(x * a + 12_345)
            x = x ^ (x >> 13)
        return x

    @nb.njit(parallel=True, cache=False)
    def dropout_masks(base, users, p, scale, out):   # out (S, B, dim): scale where the unit is kept
        S, B, D = out.shape
        for sb in nb.prange(S * B):
            s, b = sb // B, sb % B
            hu = mix(mod((users[b] % M) * 2_654_435) + base[s])
            for j in range(D):
                h = mix(mod(hu + j * 40_503))
                out[s, b, j] = scale if h / M >= p else 0.0

    nb.set_num_threads(max(1, min(torch.get_num_threads(), nb.config.NUMBA_NUM_THREADS)))
    return SimpleNamespace(bmv=bmv, bmtv=bmtv, update_rows=update_rows, item_sums=item_sums,
                           decoder_row_sums=decoder_row_sums,
                           dropout_masks=dropout_masks, sampled_dots=sampled_dots, pattern_mm=pattern_mm,
                           add_lowrank=add_lowrank, local_steps_explicit=local_steps_explicit,
                           local_steps_implicit=local_steps_implicit, num_threads=nb.get_num_threads)


def _vector_exp(nb):
    """A numba exp that loops vectorize: float32 by range reduction and a polynomial (max error 1.3 ulp
    against 1.05 for torch.exp, measured over [-87, 1]), float64 numpy's (libm's). numba's np.exp calls
    libm once per element (no SVML in the llvmlite wheels), which made the implicit softmax's exp
    ~4x slower than the rest of it."""
    from llvmlite import ir
    from numba import types
    from numba.extending import intrinsic, overload

    @intrinsic
    def pow2(typingctx, n):                 # 2^n for an integral float32 n in [-126, 127], as exponent bits
        def codegen(context, builder, signature, args):
            i32 = ir.IntType(32)
            bits = builder.shl(builder.add(builder.fptosi(args[0], i32), ir.Constant(i32, 127)), ir.Constant(i32, 23))
            return builder.bitcast(bits, ir.FloatType())
        return types.float32(types.float32), codegen

    # contract only: reassoc could fold the two-part ln 2 below into one constant.
    @nb.njit(fastmath={"contract"})
    def expf(v):                            # e^v = 2^n e^r, |r| <= ln2 / 2, e^r by its degree-7 Taylor polynomial
        f = np.float32
        v = min(max(v, f(-87.0)), f(88.0))  # e^-87 ~ 1.6e-38: the smallest normal float32 is 1.2e-38
        n = np.floor(v * f(1.4426950408889634) + f(0.5))
        r = (v - n * f(0.693359375)) - n * f(-2.12194440e-4)              # ln 2 = 0.693359375 - 2.1219444e-4
        p = f(1 / 5040)
        for c in (1 / 720, 1 / 120, 1 / 24, 1 / 6, 0.5, 1.0, 1.0):
            p = p * r + f(c)
        return p * pow2(n)

    def exp(v):                             # called from jitted code only: dispatched by dtype below
        return np.exp(v)

    @overload(exp, inline="always")
    def _exp(v):
        if isinstance(v, types.Float) and v.bitwidth == 32:
            return lambda v: expf(v)
        return lambda v: np.exp(v)

    return exp


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


def _indexed(P: torch.Tensor | Rows, B: int) -> tuple:
    """(source array (R, O, I), row index (B,)) of a per-client matrix, its Rows, or a shared (O, I) one."""
    if isinstance(P, Rows):
        return _parts(P)
    if P.dim() == 2:
        return P.unsqueeze(0).numpy(), np.zeros(B, dtype=np.int64)
    return P.numpy(), np.arange(B, dtype=np.int64)


def _step_args(P2, b2, P3, b3, E0x, tie, xx1, keep, a, bco, clip, crow) -> tuple:
    """The fused kernels' leading arguments, as numpy arrays (see local_steps_explicit)."""
    B, dt = E0x.shape[0], E0x.dtype
    S = keep.shape[0]
    c = lambda t: t.contiguous().numpy()                                       # noqa: E731
    full = lambda v, n: c(v.expand(B, n) if v.dim() == 1 else v)               # noqa: E731
    return (*_indexed(P2, B), full(b2, keep.shape[2]), *_indexed(P3, B), full(b3, E0x.shape[1]), c(E0x),
            full(tie, E0x.shape[1]), c(xx1), c(keep), np.asarray(a[:S], dtype=_np_dtype(dt)),
            _coefficients(bco[:S], dt), float(clip or 0.0), c(crow))


def _hist_args(hist: dict[str, torch.Tensor]) -> tuple:
    return tuple(hist[n].numpy() for n in ("d1", "h1", "d2", "z", "d3", "h3", "e", "c"))


def _write_args(P2, a: list[float], bco: list[list[float]], S: int, dtype: torch.dtype, write_P2: bool) -> tuple:
    """The fused kernels' trailing arguments: the end coefficients and whether to write P2 in place."""
    if write_P2 and not isinstance(P2, Rows):
        raise ValueError("write_P2 needs P2 as Rows of the client store (the trained values go there)")
    return float(a[S]), np.asarray(bco[S][:S], dtype=_np_dtype(dtype)), bool(write_P2)


def local_steps_explicit(P2: torch.Tensor | Rows, b2: torch.Tensor, P3: torch.Tensor | Rows, b3: torch.Tensor,
                         E0x: torch.Tensor, tie: torch.Tensor, xx1: torch.Tensor, keep: torch.Tensor,
                         a: list[float], bco: list[list[float]], clip: float | None, crow: torch.Tensor,
                         items: torch.Tensor, x: torch.Tensor, W: torch.Tensor, ob: torch.Tensor, cnt: torch.Tensor,
                         hist: dict[str, torch.Tensor], loss: torch.Tensor, write_P2: bool = False) -> bool:
    """All local steps of an explicit cohort with shared item rows in one kernel (see the kernel's
    comment; federation.cohort.train_cohort is the torch version). Writes hist[d1|h1|d2|z|d3|h3]
    (B, S, .), hist[e] (T, S), hist[c] (B, S) and loss (B,) (the sum over steps); False (nothing
    written) where the kernels do not apply. P2/P3: (B, O, I) per client, Rows, or shared (O, I);
    b2 (B, H2) and b3 (B, H1) per client or shared (H,). a (S+1,), bco (S+1, S): sgd_coefficients.
    write_P2 (P2 Rows of the store): also write each client's trained P2 into the store, after its
    last step while the matrix is in cache (what update_rows would do afterwards, one read less)."""
    ts = (b2, b3, E0x, tie, xx1, keep, x, W, ob, cnt, loss, *hist.values())
    k = _usable(P2, *ts)
    if k is None or _usable(P3, *ts) is None or not all(t.is_contiguous() for t in (W, *hist.values())):
        return False
    k.local_steps_explicit(*_step_args(P2, b2, P3, b3, E0x, tie, xx1, keep, a, bco, clip, crow),
                           items.contiguous().numpy(), x.contiguous().numpy(), W.numpy(), ob.contiguous().numpy(),
                           cnt.contiguous().numpy(), *_hist_args(hist), loss.numpy(),
                           *_write_args(P2, a, bco, keep.shape[0], E0x.dtype, write_P2))
    return True


@contextlib.contextmanager
def _single_threaded_blas():
    """OpenBLAS (scipy's, which numba's np.dot calls) limited to one thread: local_steps_implicit calls
    it from each of its own threads, and a threaded OpenBLAS inside an OpenMP loop oversubscribes the
    cores (20x slower on the 2-core VM, with an OpenBLAS warning per call). Set on the libraries
    directly: threadpoolctl's limit() reads every library's info each time (~0.1 ms)."""
    libs = [lc for lc in _blas_controller().lib_controllers if lc.user_api == "blas"]
    before = [lc.num_threads for lc in libs]
    for lc in libs:
        lc.set_num_threads(1)
    try:
        yield
    finally:
        for lc, n in zip(libs, before):
            lc.set_num_threads(n)


@functools.cache
def _blas_controller():
    """threadpoolctl's view of the loaded thread pools, taken once (~2 ms each time otherwise)."""
    import scipy.linalg.cython_blas  # noqa: F401  loads the library numba's np.dot uses, so it is seen
    from threadpoolctl import ThreadpoolController
    return ThreadpoolController()


def local_steps_implicit(P2: torch.Tensor | Rows, b2: torch.Tensor, P3: torch.Tensor | Rows, b3: torch.Tensor,
                         E0x: torch.Tensor, tie: torch.Tensor, xx1: torch.Tensor, keep: torch.Tensor,
                         a: list[float], bco: list[list[float]], clip: float | None, crow: torch.Tensor,
                         items: torch.Tensor, W: torch.Tensor, ob: torch.Tensor, cnt: torch.Tensor,
                         hist: dict[str, torch.Tensor], loss: torch.Tensor, write_P2: bool = False) -> bool:
    """All local steps of an implicit cohort with frozen start rows W (N, H1), ob (N,) in one kernel,
    as local_steps_explicit (no ratings x: an implicit entry is a positive)."""
    ts = (b2, b3, E0x, tie, xx1, keep, W, ob, cnt, loss, *hist.values())
    k = _usable(P2, *ts)
    if k is None or _usable(P3, *ts) is None or not all(t.is_contiguous() for t in (W, *hist.values())):
        return False
    with _single_threaded_blas():
        k.local_steps_implicit(*_step_args(P2, b2, P3, b3, E0x, tie, xx1, keep, a, bco, clip, crow),
                               items.contiguous().numpy(), W.numpy(), ob.contiguous().numpy(),
                               cnt.contiguous().numpy(), max(1, min(E0x.shape[0], k.num_threads())),
                               max(1, min(item_ranges(W.shape[0], k.num_threads()), W.shape[0])),
                               *_hist_args(hist), loss.numpy(),
                               *_write_args(P2, a, bco, keep.shape[0], E0x.dtype, write_P2))
    return True


def item_ranges(n_items: int, threads: int) -> int:
    """How many contiguous item ranges local_steps_implicit runs its softmax products in: one per
    thread, each of at least 256 items. Two ranges of 841 items with all 94 clients take 0.46 ms per
    product where two client blocks of 47 with all items take 0.55 ms: the rows are packed for twice
    as many clients (docs/experiments/2026-12-04-ranges/gemm_split.py). The sums over ranges make
    results depend on the thread count in the last bits, as torch's own CPU products do."""
    return max(1, min(threads, n_items // 256))


def _np_dtype(dtype: torch.dtype) -> type:
    """The numpy dtype of a torch float dtype."""
    return np.float64 if dtype == torch.float64 else np.float32


def _coefficients(bco: list[list[float]], dtype: torch.dtype) -> np.ndarray:
    """sgd_coefficients' b (ragged: b[s] has s entries) as a zero-padded (S, S) array."""
    S = len(bco)
    out = np.zeros((S, S), dtype=_np_dtype(dtype))
    for s, row in enumerate(bco):
        out[s, :len(row[:s])] = row[:s]
    return out


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


def decoder_row_sums(order: torch.Tensor, crow: torch.Tensor, seg: torch.Tensor, w: torch.Tensor, K: torch.Tensor,
                     E: torch.Tensor, H: torch.Tensor, W0: torch.Tensor, ob0: torch.Tensor, a_end: float
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The holder-weighted sums of a cohort's trained decoder rows and biases, both in one pass over
    the entries listed by item (order (T,), crow (N+1,) as item_sums): (N, H1) rows, (N,) biases and the
    (N,) weight sums, where a client b's trained row i is a_end W0[i] + sum_s K[b, s] E[t, s] H[b, s]
    for its entry t of item i (FactoredResult.value). w (B,), K (B, S), E (T, S), H (B, S, H1), W0 (N, H1),
    ob0 (N,). None where the kernels do not apply (FactoredResult.row_sums is the torch version)."""
    k = _usable(H, w, K, E, W0, ob0)
    if k is None or not all(t.is_contiguous() for t in (H, K, E, W0)):
        return None
    N, D = W0.shape
    out, outb, wsum = H.new_empty((N, D)), H.new_empty(N), H.new_empty(N)
    k.decoder_row_sums(order.contiguous().numpy(), crow.contiguous().numpy(), seg.contiguous().numpy(),
                       w.contiguous().numpy(), K.numpy(), E.numpy(), H.numpy(), W0.numpy(), ob0.contiguous().numpy(),
                       float(a_end), out.numpy(), outb.numpy(), wsum.numpy())
    return out, outb, wsum


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
