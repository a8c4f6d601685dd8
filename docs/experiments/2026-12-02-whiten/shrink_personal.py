"""Personal dense encoder layers pulled back to their common init after every round: W <- init + gamma (W - init)
(gamma 1 = the shipped model, 0 = held at init). docs/content.md "Whitened features".

    .venv/bin/python docs/experiments/2026-12-02-whiten/shrink_personal.py '[{"gamma": 0.0}]'
"""
import json, sys
from pathlib import Path
import numpy as np, torch
from federation import bench_content as bc
from federation.jobs import parse_config, prepare_data, build_federation
from federation.simulation import FederatedAutoencoder
from recsys.evaluation import evaluate_candidates
path = Path("data/synth-mm")
for spec in json.loads(sys.argv[1]):
    cfgd = bc._cfg("synth-cold.yaml", path, None, **spec.get("over", {})); cfgd["seed"] = spec.get("seed", 0)
    cfg = parse_config(cfgd); data, split = prepare_data(cfg)
    fed = build_federation(cfg, data, split)
    keys = spec.get("keys", ["enc_W2", "enc_b2"]); g = spec.get("gamma", 0.0)
    init = {k: fed.store.tensors[k].clone() for k in keys}
    for _ in range(cfg.federation.rounds):
        fed.run_round()
        for k in keys:
            fed.store.tensors[k].copy_(init[k] + g * (fed.store.tensors[k] - init[k]))
    model = FederatedAutoencoder(fed)
    warm = np.setdiff1d(np.arange(data.n_items), split.cold_items)
    r = {f"{n}_{p}": round(evaluate_candidates(model, data, split, it, p, (10,))["ndcg@10"], 4) for n, it in (("cold", split.cold_items), ("warm", warm)) for p in ("valid", "test")}
    print(json.dumps(spec), r, flush=True)
