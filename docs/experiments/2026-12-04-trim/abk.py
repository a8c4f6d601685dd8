"""Interleaved A/B of whole rounds (round 0's cohort, medians): an older federation/kernels.py vs the current one.
The kernels' arguments must match: the figure in docs/benchmarks.md was taken at b6b958d against b6b958d~1
(ddee70c then added trailing arguments, so run it from a worktree of b6b958d).

    git show b6b958d~1:federation/kernels.py > docs/experiments/2026-12-04-trim/k0.py
    .venv/bin/python docs/experiments/2026-12-04-trim/abk.py implicit|explicit 30 k0
"""
import sys, importlib
from pathlib import Path
sys.path.insert(0, str(Path(__file__).parents[1])); sys.path.insert(0, str(Path(__file__).parent))
from ab_rounds import interleaved, round0
from federation import kernels as K
mode = sys.argv[1]; R = int(sys.argv[2]); old = importlib.import_module(sys.argv[3])
ks = {0: old._kernels(), 1: K._kernels()}
fed, cohort = round0(mode)
def setv(on):
    K._kernels = lambda: ks[on]
print(mode, "old %.2f ms, new %.2f ms" % interleaved(fed, cohort, setv, R))
