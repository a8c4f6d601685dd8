"""Median of 40 rounds of round 0's cohort per mode, in this process (compare commits by alternating
processes: cd to a worktree of the older commit and run it with PYTHONPATH=. and the same venv).

    .venv/bin/python docs/experiments/2026-12-04-trim/rt.py implicit explicit
"""
import sys, time, numpy as np
from pathlib import Path
from federation.bench import _cfg
from federation.jobs import build_federation, prepare_data
from recsys.cliutil import keep_freed_memory
keep_freed_memory()
out = []
for mode in sys.argv[1:]:
    cfg = _cfg(mode, "personalfr", 100, Path("data"))
    data, split = prepare_data(cfg)
    fed = build_federation(cfg, data, split)
    cohort = fed.sample(0)
    for _ in range(3): fed.run_round(users=cohort); fed.round = 0
    ts = []
    for _ in range(40):
        s = time.perf_counter(); fed.run_round(users=cohort); ts.append(time.perf_counter() - s); fed.round = 0
    out.append(f"{mode} {1e3*np.median(ts):.2f}")
print(" | ".join(out))
