"""The fused local-step kernels: all of a cohort's local SGD steps in one kernel (explicit: one client
per thread; implicit: the softmax products per item range, the per-client parts per client block),
with the inline helpers they share. federation.engine.cohort.train_cohort's torch step loop is their
reference (tests/test_kernels.py)."""
from __future__ import annotations

import functools

import numba as nb
import numpy as np

from ._exp import exp as _exp
from ._products import _update_row

# parallel: clients (or items) per thread; cache: compiled once per install (kernels._warm_cache);
# reassoc lets the dot products vectorize, contract allows fused multiply-add.
jit = functools.partial(nb.njit, parallel=True, cache=True, fastmath={"reassoc", "contract"})

FAST = {"reassoc", "contract"}


@nb.njit(inline="always", fastmath=FAST)
def _tanh(v):                           # 1 - 2 / (e^2v + 1): one exp, ~3x faster than libm's tanh;
    return 1 - 2 / (_exp(2 * v) + 1)    # absolute error at float rounding, +-1 beyond exp's range

@nb.njit(inline="always", fastmath=FAST)
def _coef(b, s, bco, Hc, K):            # K[j] = step j's end coefficient at step s times its clip factor
    for j in range(s):
        K[j] = Hc[b, j] * bco[s, j]

@nb.njit(inline="always", fastmath=FAST)
def _weights(Hu, b, s, K, c0, g):       # g[j] = K_j (u_j . u_s + c0) for the earlier steps j < s
    for j in range(s):
        acc = Hu.dtype.type(0)
        for i in range(Hu.shape[2]):
            acc += Hu[b, j, i] * Hu[b, s, i]
        g[j] = K[j] * (acc + c0)

@nb.njit(inline="always", fastmath=FAST)
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

@nb.njit(inline="always", fastmath=FAST)
def _mtv(P, q, Hd, b, s, out):          # out = P[q]^T d_s
    for i in range(out.shape[0]):
        out[i] = 0.0
    for o in range(P.shape[1]):
        d = Hd[b, s, o]
        for i in range(P.shape[2]):
            out[i] += P[q, o, i] * d

@nb.njit(inline="always", fastmath=FAST)
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

@nb.njit(inline="always", fastmath=FAST)
def _forward(b, s, As, K, g, t2, P2, q2, b2, P3, q3, b3, E0x, tie, xx1, keep, Hd1, Hh1, Hd2, Hz, Hd3, Hh3):
    # One client's step-s forward of federation.engine.cohort.train_cohort (P_s = a_s P_0 + sum_j K_j u_j v_j^T):
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

@nb.njit(inline="always", fastmath=FAST)
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

@nb.njit(inline="always", fastmath=FAST)
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

@nb.njit(inline="always", fastmath=FAST)
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
