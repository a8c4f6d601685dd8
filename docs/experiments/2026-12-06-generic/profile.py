"""Profile one generic-path round of the ml-100k cohort of round 0 (docs/benchmarks.md, "Strategy
interface, generic path and start-up"). Usage: .venv/bin/python docs/experiments/2026-12-06-generic/profile.py MODE"""
import sys
import time
from pathlib import Path

from torch.profiler import ProfilerActivity, profile

from fedrec.bench.suite import _cfg
from federation.runs.jobs import build_federation, prepare_data

mode = sys.argv[1] if len(sys.argv) > 1 else "explicit"
cfg = _cfg(mode, "personalfr", 100, Path("data"))
data, split = prepare_data(cfg)
fed = build_federation(cfg, data, split)
cohort = fed.sample(0)
fed.run_round("generic", users=cohort)           # warm-up
fed.round = 0
with profile(activities=[ProfilerActivity.CPU]) as prof:
    t = time.perf_counter()
    fed.run_round("generic", users=cohort)
    print(f"{mode}: {len(cohort)} clients, generic round {time.perf_counter() - t:.3f} s")
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
