"""The implicit products split by clients (two blocks of 47, all 1,682 items) against split by items (two
ranges of 841, all 94 clients), one single-threaded OpenBLAS call per thread, ms per product.

    .venv/bin/python docs/experiments/2026-12-04-ranges/gemm_split.py
"""
import numba as nb, numpy as np, time
import scipy.linalg.cython_blas
from threadpoolctl import threadpool_limits
@nb.njit(parallel=True)
def fwd_c(h, W, full, reps):          # split clients: each thread 47 x 256 x 1682
    for k in nb.prange(2):
        for r in range(reps):
            np.dot(h[k*47:(k+1)*47], W.T, full[k*47:(k+1)*47])
@nb.njit(parallel=True)
def fwd_i(h, Ws, fulls, reps):        # split items: each thread 94 x 256 x 841 (W halves contiguous)
    for k in nb.prange(2):
        for r in range(reps):
            np.dot(h, Ws[k].T, fulls[k])
@nb.njit(parallel=True)
def bwd_c(G, W, dH, reps):
    for k in nb.prange(2):
        for r in range(reps):
            np.dot(G[k*47:(k+1)*47], W, dH[k*47:(k+1)*47])
@nb.njit(parallel=True)
def bwd_i(Gs, Ws, dHs, reps):
    for k in nb.prange(2):
        for r in range(reps):
            np.dot(Gs[k], Ws[k], dHs[k])
h=np.random.rand(94,256).astype(np.float32); W=np.random.rand(1682,256).astype(np.float32)
Ws=np.ascontiguousarray(W.reshape(2,841,256)); full=np.empty((94,1682),np.float32); fulls=np.empty((2,94,841),np.float32)
G=np.random.rand(94,1682).astype(np.float32); Gs=np.ascontiguousarray(np.stack([G[:,:841],G[:,841:]]))
dH=np.empty((94,256),np.float32); dHs=np.empty((2,94,256),np.float32)
with threadpool_limits(1, user_api="blas"):
    for rep in range(3):
        res=[]
        for name,f,a in (("fwd_c",fwd_c,(h,W,full)),("fwd_i",fwd_i,(h,Ws,fulls)),("bwd_c",bwd_c,(G,W,dH)),("bwd_i",bwd_i,(Gs,Ws,dHs))):
            f(*a,3); t=time.perf_counter(); f(*a,200); res.append(f"{name} {(time.perf_counter()-t)/200*1e3:.3f}")
        print("  ".join(res))
