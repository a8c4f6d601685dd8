"""The implicit kernel alone on round 0's captured arguments: by item ranges (current) against by client
blocks (k0.py, see ab.py), alternating calls, medians; also the largest relative difference of their
outputs, and the current kernel with other range counts given as arguments.

    .venv/bin/python docs/experiments/2026-12-04-trim/capture.py      # args.npz of the current kernel
    .venv/bin/python docs/experiments/2026-12-04-ranges/kernel_ab.py 2 4 8
"""
import sys, time, importlib
from pathlib import Path
import numpy as np
from threadpoolctl import threadpool_limits
import scipy.linalg.cython_blas  # noqa: F401
sys.path.insert(0, str(Path(__file__).parent))
from federation import kernels
z = np.load(Path(__file__).parents[1] / "2026-12-04-trim" / "args.npz")
args = [z[f"arr_{i}"] for i in range(len(z.files))]
args = [a.item() if a.ndim == 0 else a for a in args]
NR = 19                                              # position of nrng in the current kernel's arguments
new = kernels._kernels().local_steps_implicit
old = importlib.import_module("k0")._kernels().local_steps_implicit
Rs = [int(v) for v in sys.argv[1:]] or [2]
def call(f, R, write=True):
    a = [x.copy() if isinstance(x, np.ndarray) else x for x in args]
    a[-1] = a[-1] and write
    a = a[:NR] + a[NR + 1:] if R is None else a[:NR] + [R] + a[NR + 1:]
    s = time.perf_counter(); f(*a); return time.perf_counter() - s, a
with threadpool_limits(1, user_api="blas"):
    _, a0 = call(old, None)
    for R in Rs:
        _, a1 = call(new, R)
        a1 = a1[:NR] + a1[NR + 1:]
        worst = max(float(np.abs(x - y).max() / (np.abs(x).max() + 1e-30)) for x, y in zip(a0, a1)
                    if isinstance(x, np.ndarray) and x.dtype.kind == "f" and x.size > 1)
        print(f"ranges {R}: largest relative difference from the block kernel {worst:.1e}")
    ts = {k: [] for k in ["blocks"] + Rs}
    for r in range(60):
        ts["blocks"].append(call(old, None, False)[0])
        for R in Rs:
            ts[R].append(call(new, R, False)[0])
print("  ".join(f"{k if k == 'blocks' else f'ranges {k}'} {1e3 * np.median(v):.2f} ms" for k, v in ts.items()))
