"""Where an engine round goes, per source line (docs/benchmarks.md, "Speed (2026-12-03, later)").

    .venv/bin/pip install line_profiler        # not a project dependency
    .venv/bin/python docs/experiments/2026-12-03-engine/round_profile.py implicit|explicit

Trains round 0's cohort of the ml-100k config (as `fedrec bench speed`) ten times under line_profiler
and prints the lines of train_cohort, its written-out backward, commit and the row sums by time.
"""
import sys
from pathlib import Path

from line_profiler import LineProfiler

import federation.cohort as co
from federation import simulation as sim
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
lp = LineProfiler()
for f in (co.train_cohort, co._shared_rows_backward, co.FactoredResult.commit, co.FactoredResult.row_sums,
          sim.Federation._absorb):
    lp.add_function(f)
lp.enable()
for _ in range(10):
    fed.run_round(users=cohort)
    fed.round = 0
lp.disable()
lp.print_stats(output_unit=1e-3, stripzeros=True)
