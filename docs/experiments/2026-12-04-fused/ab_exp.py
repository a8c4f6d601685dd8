"""Interleaved A/B of the kernels with numba's libm exp (0) and kernels._vector_exp (1), round 0's cohort.

    .venv/bin/python docs/experiments/2026-12-04-fused/ab_exp.py explicit|implicit ROUNDS
"""
import sys
from pathlib import Path
import numpy as np
sys.path.insert(0, str(Path(__file__).parents[1]))
from ab_rounds import interleaved, round0
from federation import kernels as K
mode = sys.argv[1]; R = int(sys.argv[2])
k_new = K._kernels()
orig = K._vector_exp
K._vector_exp = lambda nb: nb.njit(inline="always")(lambda v: np.exp(v))
K._kernels.cache_clear(); k_old = K._kernels(); K._vector_exp = orig
fed, cohort = round0(mode)
ks = {0: k_old, 1: k_new}
def setv(on):
    K._kernels = lambda: ks[on]
print(mode, "libm exp %.1f ms, vector exp %.1f ms" % interleaved(fed, cohort, setv, R))
