"""Interleaved A/B of the fused local-step kernels (docs/benchmarks.md, "Speed (2026-12-04)").

    .venv/bin/python docs/experiments/2026-12-04-fused/ab.py explicit|implicit ROUNDS

Alternates rounds of round 0's ml-100k cohort (as `fedrec bench speed`) with the fused kernels
(kernels.local_steps_explicit / kernels.local_steps_implicit; the per-step implicit kernels
this compared at be5d3f6 were removed once local_steps_implicit replaced them) and without them (train_cohort's torch step
loop with the older per-op kernels), in one process, and prints the median round of each.
"""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).parents[1]))
from ab_rounds import interleaved, round0
from federation import kernels
mode = sys.argv[1]; R = int(sys.argv[2])
fed, cohort = round0(mode)
o1, o2 = kernels.local_steps_explicit, kernels.local_steps_implicit
def setf(on):
    kernels.local_steps_explicit = o1 if on else (lambda *a, **k: False)
    kernels.local_steps_implicit = o2 if on else (lambda *a, **k: False)
print(mode, "unfused %.1f ms fused %.1f ms" % interleaved(fed, cohort, setf, R))
