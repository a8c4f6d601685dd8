"""Per-client products in numba from cache: dot form, 4-row dot form, axpy form, 4-row axpy form, for the
128x256 personal layer and the 256x128 shared one (microseconds per product).

    .venv/bin/python docs/experiments/2026-12-04-ranges/matvec.py
"""
import numba as nb, numpy as np, time
fm = {"reassoc", "contract"}
@nb.njit(fastmath=fm)
def dotform(P, h, out, reps):
    O, I = P.shape
    for r in range(reps):
        for o in range(O):
            acc = np.float32(0)
            for i in range(I):
                acc += P[o, i] * h[i]
            out[o] = acc
@nb.njit(fastmath=fm)
def dotform4(P, h, out, reps):
    O, I = P.shape
    for r in range(reps):
        for o in range(0, O, 4):
            a0 = np.float32(0); a1 = np.float32(0); a2 = np.float32(0); a3 = np.float32(0)
            for i in range(I):
                hi = h[i]
                a0 += P[o, i] * hi; a1 += P[o + 1, i] * hi; a2 += P[o + 2, i] * hi; a3 += P[o + 3, i] * hi
            out[o] = a0; out[o + 1] = a1; out[o + 2] = a2; out[o + 3] = a3
@nb.njit(fastmath=fm)
def axpy(P, d, out, reps):
    O, I = P.shape
    for r in range(reps):
        for i in range(I):
            out[i] = 0.0
        for o in range(O):
            do = d[o]
            for i in range(I):
                out[i] += P[o, i] * do
@nb.njit(fastmath=fm)
def axpy4(P, d, out, reps):
    O, I = P.shape
    for r in range(reps):
        for i in range(I):
            out[i] = 0.0
        for o in range(0, O, 4):
            d0 = d[o]; d1 = d[o + 1]; d2 = d[o + 2]; d3 = d[o + 3]
            for i in range(I):
                out[i] += P[o, i] * d0 + P[o + 1, i] * d1 + P[o + 2, i] * d2 + P[o + 3, i] * d3
for O, I in ((128, 256), (256, 128)):
    P = np.random.rand(O, I).astype(np.float32); h = np.random.rand(I).astype(np.float32); d = np.random.rand(O).astype(np.float32)
    o1 = np.empty(O, np.float32); o2 = np.empty(I, np.float32)
    res = []
    for name, f, a in (("dot", dotform, (P, h, o1)), ("dot4", dotform4, (P, h, o1)), ("axpy", axpy, (P, d, o2)), ("axpy4", axpy4, (P, d, o2))):
        f(*a, 10); t = time.perf_counter(); f(*a, 20000); dt = (time.perf_counter() - t) / 20000
        res.append(f"{name} {dt*1e6:.2f}us ({2*O*I/dt/1e9:.0f} GF)")
    print(O, I, "  ".join(res))
    r1 = np.empty(O, np.float32); dotform(P, h, r1, 1); r2 = np.empty(O, np.float32); dotform4(P, h, r2, 1); print(" dot4 ok", np.allclose(r1, r2, rtol=1e-5))
    r1 = np.empty(I, np.float32); axpy(P, d, r1, 1); r2 = np.empty(I, np.float32); axpy4(P, d, r2, 1); print(" axpy4 ok", np.allclose(r1, r2, rtol=1e-5))
