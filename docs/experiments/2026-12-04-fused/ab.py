"""Interleaved A/B of the fused local-step kernels (docs/benchmarks.md, "Speed (2026-12-04)").

    .venv/bin/python docs/experiments/2026-12-04-fused/ab.py explicit|implicit ROUNDS

Alternates rounds of round 0's ml-100k cohort (as `fedrec bench speed`) with the fused kernels
(kernels.local_steps_explicit / kernels.local_steps_implicit; the per-step implicit kernels
this compared at be5d3f6 were removed once local_steps_implicit replaced them) and without them (train_cohort's torch step
loop with the older per-op kernels), in one process, and prints the median round of each.
"""
import sys, time, numpy as np
from pathlib import Path
from federation.bench import _cfg
from federation.jobs import build_federation, prepare_data
from federation import kernels
from recsys.cliutil import keep_freed_memory
keep_freed_memory()
mode = sys.argv[1]; R = int(sys.argv[2])
cfg = _cfg(mode, "personalfr", 100, Path("data"))
data, split = prepare_data(cfg)
fed = build_federation(cfg, data, split)
cohort = fed.sample(0)
o1, o2 = kernels.local_steps_explicit, kernels.local_steps_implicit
def setf(on):
    kernels.local_steps_explicit = o1 if on else (lambda *a, **k: False)
    kernels.local_steps_implicit = o2 if on else (lambda *a, **k: False)
for on in (0, 1):
    setf(on); fed.run_round(users=cohort); fed.round = 0
t = {0: [], 1: []}
for r in range(R):
    for on in (0, 1):
        setf(on); s = time.perf_counter(); fed.run_round(users=cohort); t[on].append(time.perf_counter() - s); fed.round = 0
print(mode, "unfused %.1f ms fused %.1f ms" % (1e3*np.median(t[0]), 1e3*np.median(t[1])))
