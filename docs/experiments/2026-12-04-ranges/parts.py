"""Where a round goes: cumulative wall time per round of the engine's parts (wrapped functions), 60 rounds
of round 0's cohort after 5 warm-up rounds. Nested parts overlap (run_round holds them all).

    .venv/bin/python docs/experiments/2026-12-04-ranges/parts.py implicit
"""
import sys, time, numpy as np, collections, functools
from pathlib import Path
from federation.bench import _cfg
from federation.jobs import build_federation, prepare_data
from federation import kernels, cohort as co, simulation as sim
from recsys.cliutil import keep_freed_memory
keep_freed_memory()
mode = sys.argv[1]
cfg = _cfg(mode, "personalfr", 100, Path("data"))
data, split = prepare_data(cfg)
fed = build_federation(cfg, data, split)
cohort = fed.sample(0)
T = collections.defaultdict(float)
def wrap(obj, name, label=None):
    f = getattr(obj, name)
    @functools.wraps(f)
    def g(*a, **k):
        s = time.perf_counter(); r = f(*a, **k); T[label or name] += time.perf_counter() - s; return r
    setattr(obj, name, g)
wrap(kernels, "local_steps_implicit", "kernel_i"); wrap(kernels, "local_steps_explicit", "kernel_e")
wrap(co, "train_cohort"); wrap(co.FactoredResult, "commit"); wrap(co.FactoredResult, "row_sums")
wrap(co.FactoredResult, "weighted_sum"); wrap(sim.Federation, "_apply"); wrap(sim.Federation, "cohorts")
wrap(sim, "clients_bytes"); wrap(co, "start_values"); wrap(kernels, "dropout_keep_steps"); wrap(kernels, "item_sums")
wrap(sim.Federation, "_absorb"); wrap(sim.Federation, "run_round")
for _ in range(5): fed.run_round(users=cohort); fed.round = 0
T.clear()
n = 60
for _ in range(n): fed.run_round(users=cohort); fed.round = 0
for k, v in sorted(T.items(), key=lambda kv: -kv[1]): print(f"{k:22s} {1e3*v/n:7.3f} ms")
