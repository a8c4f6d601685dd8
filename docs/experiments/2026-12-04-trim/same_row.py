"""The captured implicit kernel (capture.py) as is, with every client reading the same personal-layer row
(always in cache), and with the cohort's rows packed together: the cost of reading the layers.

    .venv/bin/python docs/experiments/2026-12-04-trim/same_row.py
"""
import sys, time, importlib, numpy as np
from threadpoolctl import threadpool_limits
import scipy.linalg.cython_blas
from pathlib import Path
z = np.load(Path(__file__).parent / "args.npz"); args = [z[f"arr_{i}"] for i in range(len(z.files))]
args = [a.item() if a.ndim == 0 else a for a in args]
args[-1] = False        # no in-place write of the layers (one shared row written by both threads would ping-pong)
from federation import kernels
f = kernels._kernels().local_steps_implicit
a0 = [x.copy() if isinstance(x, np.ndarray) else x for x in args]
a1 = [x.copy() if isinstance(x, np.ndarray) else x for x in args]; a1[1] = np.zeros_like(a1[1])
a2 = [x.copy() if isinstance(x, np.ndarray) else x for x in args]; a2[0] = np.ascontiguousarray(a2[0][a2[1]]); a2[1] = np.arange(94)
with threadpool_limits(1, user_api="blas"):
    t = {0: [], 1: [], 2: []}
    for r in range(40):
        for i, a in enumerate((a0, a1, a2)):
            s = time.perf_counter(); f(*a); t[i].append(time.perf_counter() - s)
print("normal %.2f, same P2 row %.2f, P2 compact %.2f" % tuple(1e3*np.median(t[i]) for i in range(3)))
