"""The tie over content-only rows (docs/content.md "Whitened features"): item_rows with dec_out scaled by w
(w 1 = the shipped model, 0 = content-only rows), patched into the engine and inference.

    .venv/bin/python docs/experiments/2026-12-02-whiten/tie_rows.py '[{"w": 0.0}, {"w": 0.3}]'
"""
import json, sys, time
from pathlib import Path
import numpy as np, torch
import federation.cohort as co, federation.simulation as sim
from recsys.models import autoencoder as ae
from federation import bench_content as bc
from recsys.evaluation import evaluate_candidates
W = {"w": 0.0}
def rows(p, content=None, items=None):
    q = dict(p); q["dec_out"] = p["dec_out"] * W["w"]
    return ae.item_rows(q, content, items)
co.item_rows = rows; sim.item_rows = rows
path = Path("data/synth-mm")
for spec in json.loads(sys.argv[1]):
    W["w"] = spec.get("w", 0.0)
    cfgd = bc._cfg("synth-cold.yaml", path, None, **spec.get("over", {})); cfgd["seed"] = spec.get("seed", 0)
    cfg, data, split, model, secs = bc._train(cfgd)
    warm = np.setdiff1d(np.arange(data.n_items), split.cold_items)
    r = {f"{n}_{p}": round(evaluate_candidates(model, data, split, it, p, (10,))["ndcg@10"], 4) for n, it in (("cold", split.cold_items), ("warm", warm)) for p in ("valid", "test")}
    print(json.dumps(spec), r, flush=True)
