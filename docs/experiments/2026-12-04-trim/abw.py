"""Interleaved A/B of whole rounds: the fused kernel writes enc_W2 in place (1) vs commit's update_rows (0).

    .venv/bin/python docs/experiments/2026-12-04-trim/abw.py implicit|explicit 40
"""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).parents[1]))
from ab_rounds import interleaved, round0
from federation import kernels as K, simulation as S
mode = sys.argv[1]; R = int(sys.argv[2])
fed, cohort = round0(mode)
orig = {n: getattr(K, n) for n in ("local_steps_implicit", "local_steps_explicit")}; tc = S.train_cohort
def off(*a, **k):
    res = tc(*a, **k); res.written = set(); return res
def setv(on):
    for n, f in orig.items():
        setattr(K, n, f if on else (lambda *a, f=f: f(*a[:-1], False)))
    S.train_cohort = tc if on else off
print(mode, "update_rows %.2f ms, in-kernel write %.2f ms" % interleaved(fed, cohort, setv, R))
