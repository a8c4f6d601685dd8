"""Shared by the A/B scripts under docs/experiments: whole rounds of round 0's ml-100k cohort (as
`fedrec bench speed`), two variants alternating round by round in one process, medians in ms."""
import time
from pathlib import Path

import numpy as np

from federation.bench import _cfg
from federation.jobs import build_federation, prepare_data
from recsys.cliutil import keep_freed_memory


def round0(mode: str):
    """(federation, cohort of round 0) for the default personalfr config of ``mode``."""
    keep_freed_memory()
    cfg = _cfg(mode, "personalfr", 100, Path("data"))
    data, split = prepare_data(cfg)
    fed = build_federation(cfg, data, split)
    return fed, fed.sample(0)


def interleaved(fed, cohort, setv, rounds: int) -> tuple[float, float]:
    """Median ms per round with setv(0) and with setv(1) in effect, one warm-up round each."""
    t = {0: [], 1: []}
    for r in range(-1, rounds):
        for on in (0, 1):
            setv(on)
            s = time.perf_counter()
            fed.run_round(users=cohort)
            if r >= 0:
                t[on].append(time.perf_counter() - s)
            fed.round = 0
    return 1e3 * float(np.median(t[0])), 1e3 * float(np.median(t[1]))
