"""Server-side stand-ins for the push-down gradient partial compression drops (docs/benchmarks.md,
"Where the gap is"): after each round of configs/ml100k-implicit.yaml, spread the round's total row
update g = sum_i (new_i - old_i) back over all rows, row j getting -gamma * w_j * g, from aggregates
only. weight: "pop" (the round's item popularity), "uniform", or "soft" (softmax of old_j . h + b_j,
h the unit mean direction times ``temp``). bias: apply the same to the item biases. None helped.

    .venv/bin/python docs/experiments/2026-12-02-implicit/negatives.py '[{"gamma": 1.0, "weight": "pop"}]'
"""
import json, sys, time
import numpy as np, torch, yaml
from federation.config import parse_config
from federation.jobs import build_federation, prepare_data
from federation.simulation import FederatedAutoencoder
from recsys.evaluation import evaluate_model

def run(gamma=1.0, weight="pop", bias=True, seed=0, rounds=500, temp=1.0, extra=None):
    d = yaml.safe_load(open("configs/ml100k-implicit.yaml"))
    d["seed"], d["eval"] = seed, {"every": 0}
    d["federation"]["rounds"] = rounds
    for k, v in (extra or {}).items():
        sec, key = k.split("."); d[sec][key] = v
    cfg = parse_config(d)
    data, split = prepare_data(cfg)
    fed = build_federation(cfg, data, split)
    for r in range(rounds):
        users = fed.sample(r)
        old, oldb = fed.global_p["dec_out"].clone(), fed.global_p["dec_ob"].clone()
        fed.run_round()
        D, b = fed.global_p["dec_out"], fed.global_p["dec_ob"]
        g, gb = (D - old).sum(0), (b - oldb).sum()
        if weight == "pop":
            cnt = torch.as_tensor(np.asarray((fed.train[users] != 0).sum(0)).ravel(), dtype=D.dtype)
            w = cnt / cnt.sum()
        elif weight == "uniform":
            w = torch.full((D.shape[0],), 1.0 / D.shape[0])
        else:  # softmax of the mean direction
            h = g / (g.norm() + 1e-12) * temp
            w = torch.softmax(old @ h + oldb, 0)
        fed.global_p["dec_out"] = D - gamma * w[:, None] * g
        if bias:
            fed.global_p["dec_ob"] = b - gamma * w * gb
    model = FederatedAutoencoder(fed, None)
    return {part: round(evaluate_model(model, data, split, part, "implicit", (10,))["ndcg@10"], 4)
            for part in ("valid", "test")}

for spec in json.loads(sys.argv[1]):
    t0 = time.time()
    print(json.dumps(spec), run(**spec), f"{time.time() - t0:.0f}s", flush=True)
