"""Interleaved A/B of whole rounds (round 0's ml-100k cohort, medians) for the 2026-12-04 late changes:
  kernel   the implicit kernel by item ranges (federation/kernels.py) vs the one by client blocks (k0)
  rowsums  dec_out and dec_ob summed in one kernel pass (kernels.decoder_row_sums) vs the torch row_sums
  both     both changes vs neither

    git show 0e6de13:federation/kernels.py > docs/experiments/2026-12-04-ranges/k0.py
    .venv/bin/python docs/experiments/2026-12-04-ranges/ab.py implicit both 40
"""
import sys, importlib
from pathlib import Path
sys.path.insert(0, str(Path(__file__).parents[1])); sys.path.insert(0, str(Path(__file__).parent))
from ab_rounds import interleaved, round0
from federation import kernels as K
mode, which, R = sys.argv[1], sys.argv[2], int(sys.argv[3])
k0 = importlib.import_module("k0")
k0.Rows = K.Rows                    # the store hands out the current module's Rows
new_steps, new_sums = K.local_steps_implicit, K.decoder_row_sums
fed, cohort = round0(mode)
def setv(on):
    if which in ("kernel", "both"):
        K.local_steps_implicit = new_steps if on else k0.local_steps_implicit
    if which in ("rowsums", "both"):
        K.decoder_row_sums = new_sums if on else (lambda *a: None)
print(mode, which, "before %.2f ms, after %.2f ms" % interleaved(fed, cohort, setv, R))
