"""Median and minimum wall time of 20 rounds of round 0's cohort (as `fedrec bench speed`), one mode.

    .venv/bin/python docs/experiments/2026-12-03-kernels/round94.py implicit|explicit
"""
import sys
import time
from pathlib import Path

import federation.cohort
from federation.bench import _cfg
from federation.jobs import build_federation, prepare_data
from recsys.cliutil import keep_freed_memory

keep_freed_memory()
cfg = _cfg(sys.argv[1], "personalfr", 100, Path("data"))
data, split = prepare_data(cfg)
fed = build_federation(cfg, data, split)
cohort = fed.sample(0)
fed.run_round(users=cohort)                                                     # warm-up
fed.round = 0
ts = []
for _ in range(20):
    t = time.perf_counter()
    fed.run_round(users=cohort)
    ts.append(time.perf_counter() - t)
    fed.round = 0
ts.sort()
print(f"{sys.argv[1]} median {ts[10] * 1e3:.1f} min {ts[0] * 1e3:.1f} ms  ({federation.cohort.__file__})")
