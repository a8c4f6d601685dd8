"""Warm NDCG@10 of the content-free tied synth-cold model with and without the shipped prototypes
(docs/content.md, "Where the shipped config stands"), model seeds 0-2:

    .venv/bin/python docs/experiments/2026-12-02-prototypes/content_free_warm.py
"""
import sys, json
import numpy as np
from pathlib import Path
from federation import bench_content as bc
from federation.jobs import prototype_settings
from recsys.evaluation import evaluate_candidates
path = Path("data/synth-mm")
for seed in (0, 1, 2):
    cfgd = bc._cfg("synth-cold.yaml", path, None, content={"enabled": False}, prototypes={"enabled": False}); cfgd["seed"] = seed
    cfg, data, split, model, secs = bc._train(cfgd)
    warm = np.setdiff1d(np.arange(data.n_items), split.cold_items)
    ev = lambda: {p: round(evaluate_candidates(model, data, split, warm, p, (10,))["ndcg@10"], 4) for p in ("valid", "test")}
    a = ev(); model.fed.fit_prototypes(prototype_settings(bc.parse_config(bc._cfg("synth-cold.yaml", path, None))))
    print(seed, "warm off", a, "warm k8", ev(), flush=True)
