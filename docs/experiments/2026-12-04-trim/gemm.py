"""The implicit kernel's two products per step (47 clients x 256 x 1682 items), as numba's np.dot calls
them from one or two threads (OpenBLAS limited to one thread each): NT, NN on a transposed copy, NN.

    .venv/bin/python docs/experiments/2026-12-04-trim/gemm.py
"""
import numba as nb, numpy as np, time
import scipy.linalg.cython_blas
from threadpoolctl import threadpool_limits
@nb.njit(parallel=True)
def fwd_nt(h, W, full, nblk, reps):
    for k in nb.prange(nblk):
        for r in range(reps):
            np.dot(h[k], W.T, full[k])
@nb.njit(parallel=True)
def fwd_nn(h, WT, full, nblk, reps):
    for k in nb.prange(nblk):
        for r in range(reps):
            np.dot(h[k], WT, full[k])
@nb.njit(parallel=True)
def bwd(full, W, dH, nblk, reps):
    for k in nb.prange(nblk):
        for r in range(reps):
            np.dot(full[k], W, dH[k])
n=47
h=np.random.rand(2,n,256).astype(np.float32); W=np.random.rand(1682,256).astype(np.float32); WT=np.ascontiguousarray(W.T)
full=np.empty((2,n,1682),np.float32); dH=np.empty((2,n,256),np.float32)
with threadpool_limits(1, user_api="blas"):
    for rep in range(2):
        for name, f, a in (("nt", fwd_nt, (h, W, full)), ("nn", fwd_nn, (h, WT, full)), ("bwd", bwd, (full, W, dH))):
            f(*a, 2, 5)
            t=time.perf_counter(); f(*a, 2, 100); dt=(time.perf_counter()-t)/100
            print(f"{name}: {dt*1e3:.3f} ms")
