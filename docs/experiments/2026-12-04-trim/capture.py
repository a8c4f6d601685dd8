"""Save the implicit kernel's arguments of round 0 (numpy arrays) for same_row.py.

    .venv/bin/python docs/experiments/2026-12-04-trim/capture.py
"""
import sys, time, numpy as np, importlib
from pathlib import Path
from federation.bench import _cfg
from federation.jobs import build_federation, prepare_data
from federation import kernels
from recsys.cliutil import keep_freed_memory
keep_freed_memory()
cfg = _cfg("implicit", "personalfr", 100, Path("data"))
data, split = prepare_data(cfg)
fed = build_federation(cfg, data, split)
cohort = fed.sample(0)
k = kernels._kernels()
cap = {}
orig = k.local_steps_implicit
def grab(*args):
    cap['args'] = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    return orig(*args)
k.local_steps_implicit = grab
fed.run_round(users=cohort); fed.round = 0
k.local_steps_implicit = orig
args = cap['args']
np.savez(str(Path(__file__).parent / "args.npz"), *[a if isinstance(a, np.ndarray) else np.array(a) for a in args])
print([(a.shape, a.dtype) if isinstance(a, np.ndarray) else a for a in args])
