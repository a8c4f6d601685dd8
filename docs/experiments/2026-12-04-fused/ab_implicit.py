"""Interleaved A/B of kernels.local_steps_implicit (1) against the per-step kernels (0), round 0's implicit cohort.

    .venv/bin/python docs/experiments/2026-12-04-fused/ab_implicit.py ROUNDS
"""
import sys, time, numpy as np
from pathlib import Path
from federation.bench import _cfg
from federation.jobs import build_federation, prepare_data
from federation import kernels
from recsys.cliutil import keep_freed_memory
keep_freed_memory()
R = int(sys.argv[1])
cfg = _cfg("implicit", "personalfr", 100, Path("data"))
data, split = prepare_data(cfg)
fed = build_federation(cfg, data, split)
cohort = fed.sample(0)
o1 = kernels.local_steps_implicit
def setf(on):
    kernels.local_steps_implicit = o1 if on else (lambda *a, **k: False)
for on in (0, 1):
    setf(on); fed.run_round(users=cohort); fed.round = 0
from threadpoolctl import threadpool_info
for i in threadpool_info(): print(i['user_api'], i['prefix'], i['num_threads'], i['filepath'].split('/')[-1])
t = {0: [], 1: []}
for r in range(R):
    for on in (0, 1):
        setf(on); s = time.perf_counter(); fed.run_round(users=cohort); t[on].append(time.perf_counter() - s); fed.round = 0
print("per-step kernels %.1f ms, one kernel %.1f ms" % (1e3*np.median(t[0]), 1e3*np.median(t[1])))
