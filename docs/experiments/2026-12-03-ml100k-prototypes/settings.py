"""Federated prototypes on MovieLens-100K (docs/benchmarks.md, "Federated prototypes on ml-100k"): train a shipped
ml-100k config once (model seed SEED, prototypes off during training, as a job does), then fit
prototypes with each setting and print full-ranking NDCG@10 (implicit) or RMSE (explicit) on valid
and test.

    .venv/bin/python docs/experiments/2026-12-03-ml100k-prototypes/settings.py ml100k-implicit.yaml 0 '[{"k": 8, "blend": 0.75}]'

Keys of each setting: federation.prototypes.PrototypeSettings (k, blend, iters, split_radius).
Needs data/ml-100k (fedrec data fetch ml-100k). Not part of the product: a record of what was measured.
"""
import json
import sys
import time
from pathlib import Path

from federation import bench_content as bc
from federation.prototypes import PrototypeSettings
from recsys.evaluation import evaluate_model

config, seed, specs = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
cfgd = bc._cfg(config, Path("data/ml-100k"), None, prototypes={"enabled": False})
cfgd["seed"] = seed
cfg, data, split, model, secs = bc._train(cfgd)
mode = cfg.model.mode
metric = "ndcg@10" if mode == "implicit" else "rmse"


def ev():
    return {p: round(evaluate_model(model, data, split, p, mode, (10,))[metric], 4) for p in ("valid", "test")}


print(config, seed, "off", ev(), f"trained in {secs:.0f}s", flush=True)
for spec in specs:
    t = time.time()
    model.fed.fit_prototypes(PrototypeSettings(**spec))
    print(config, seed, spec, ev(), f"{time.time() - t:.1f}s", flush=True)
