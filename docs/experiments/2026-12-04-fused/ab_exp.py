"""Interleaved A/B of the kernels with numba's libm exp (0) and kernels._vector_exp (1), round 0's cohort.

    .venv/bin/python docs/experiments/2026-12-04-fused/ab_exp.py explicit|implicit ROUNDS
"""
import sys, time, numpy as np
from pathlib import Path
from federation.bench import _cfg
from federation.jobs import build_federation, prepare_data
from federation import kernels as K
from recsys.cliutil import keep_freed_memory
keep_freed_memory()
mode = sys.argv[1]; R = int(sys.argv[2])
k_new = K._kernels()
orig = K._vector_exp
K._vector_exp = lambda nb: nb.njit(inline="always")(lambda v: np.exp(v))
K._kernels.cache_clear(); k_old = K._kernels(); K._vector_exp = orig
cfg = _cfg(mode, "personalfr", 100, Path("data"))
data, split = prepare_data(cfg)
fed = build_federation(cfg, data, split)
cohort = fed.sample(0)
ks = {0: k_old, 1: k_new}
for on in (0, 1):
    K._kernels = lambda on=on: ks[on]; fed.run_round(users=cohort); fed.round = 0
t = {0: [], 1: []}
for r in range(R):
    for on in (0, 1):
        K._kernels = lambda on=on: ks[on]; s = time.perf_counter(); fed.run_round(users=cohort); t[on].append(time.perf_counter() - s); fed.round = 0
print(mode, "libm exp %.1f ms, vector exp %.1f ms" % (1e3*np.median(t[0]), 1e3*np.median(t[1])))
