"""A/B of recsys.cliutil.keep_freed_memory on engine round times (docs/benchmarks.md, "Speed (2026-12-03)").

Run it with the setting and without, interleaved, as:
    for i in 1 2; do .venv/bin/python docs/experiments/2026-12-03-allocator/ab.py
                     FEDREC_KEEP_FREED_MEMORY=0 .venv/bin/python docs/experiments/2026-12-03-allocator/ab.py; done
Prints ms per round for round 0's 10% cohort (10 rounds) and for a full pass over all users (3 passes).
"""
import time
from pathlib import Path

import numpy as np

from federation.bench import _cfg
from federation.jobs import build_federation, prepare_data
from recsys.cliutil import keep_freed_memory

print("setting on:", keep_freed_memory())
for mode in ("explicit", "implicit"):
    cfg = _cfg(mode, "personalfr", 100, Path("data"))
    data, split = prepare_data(cfg)
    cohort = build_federation(cfg, data, split).sample(0)
    fed = build_federation(cfg, data, split)

    def ms_per_round(users: np.ndarray, reps: int) -> float:
        fed.run_round(users=users)                                              # warm-up
        fed.round = 0
        t = time.perf_counter()
        for _ in range(reps):
            fed.run_round(users=users)
            fed.round = 0
        return 1000 * (time.perf_counter() - t) / reps

    print(mode, "cohort ms", round(ms_per_round(cohort, 10), 1),
          "full pass ms", round(ms_per_round(np.arange(data.n_users), 3), 1))
