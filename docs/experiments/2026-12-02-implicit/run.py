"""The implicit-gap experiments of 2026-12-02 (docs/benchmarks.md, "Tried on 2026-12-02"): the shipped
configs/ml100k-implicit.yaml with one change, valid and test NDCG@10 after the configured rounds.

    .venv/bin/python docs/experiments/2026-12-02-implicit/run.py '[{"kind": "sgd"}]'                      # shipped
    .venv/bin/python docs/experiments/2026-12-02-implicit/run.py '[{"kind": "adam", "lr": 0.01, "eps": 1e-3}]'
    .venv/bin/python docs/experiments/2026-12-02-implicit/run.py '[{"kind": "dense", "lr": 3, "seed": 1}]'
    .venv/bin/python docs/experiments/2026-12-02-implicit/run.py '[{"kind": "sgd", "extra": {"federation.weighting": "interactions"}}]'

kind: sgd (the shipped server rule), adam / yogi (a server optimizer on the whole decoder, Reddi et
al. 2021, bias-corrected like Flower's FedAdam; the pseudo-gradient is the round's change under the
shipped rule with server_lr 1), dense (a server learning rate ``lr`` on the dense decoder layers too).
extra: "section.key" -> value overrides of the config. The input-dropout runs need
input_dropout.patch (against commit 1193d72) and "extra": {"model.input_dropout": p}.
Not part of the product: a record of what was measured, so the figures can be re-run.
"""
import json
import sys
import time

import torch
import yaml

from federation.config import parse_config
from federation.jobs import build_federation, prepare_data
from federation.simulation import FederatedAutoencoder
from recsys.evaluation import evaluate_model


def run(kind="sgd", lr=0.0, b1=0.9, b2=0.99, eps=1e-3, rounds=500, seed=0, extra=None):
    d = yaml.safe_load(open("configs/ml100k-implicit.yaml"))
    d["seed"], d["eval"] = seed, {"every": 0}
    d["federation"]["rounds"] = rounds
    if kind in ("adam", "yogi"):
        d["federation"]["server_lr"] = 1.0
    for k, v in (extra or {}).items():
        sec, key = k.split(".")
        d[sec][key] = v
    cfg = parse_config(d)
    data, split = prepare_data(cfg)
    fed = build_federation(cfg, data, split)
    state, t = {}, 0
    for _ in range(rounds):
        old = {k: v.clone() for k, v in fed.global_p.items()}
        fed.run_round()
        if kind == "dense":
            for k in ("dec_W1", "dec_b1"):
                fed.global_p[k] = old[k] + lr * (fed.global_p[k] - old[k])
        elif kind in ("adam", "yogi"):
            t += 1
            for k in old:
                delta = fed.global_p[k] - old[k]
                m, v = state.get(k, (torch.zeros_like(delta), torch.zeros_like(delta)))
                m = b1 * m + (1 - b1) * delta
                d2 = delta * delta
                v = b2 * v + (1 - b2) * d2 if kind == "adam" else v - (1 - b2) * d2 * torch.sign(v - d2)
                state[k] = (m, v)
                eta = lr * (1 - b2 ** t) ** 0.5 / (1 - b1 ** t)
                fed.global_p[k] = old[k] + eta * m / (v.sqrt() + eps)
    model = FederatedAutoencoder(fed, None)
    return {part: round(evaluate_model(model, data, split, part, "implicit", (10,))["ndcg@10"], 4)
            for part in ("valid", "test")}


if __name__ == "__main__":
    for spec in json.loads(sys.argv[1]):
        t0 = time.time()
        print(json.dumps(spec), run(**spec), f"{time.time() - t0:.0f}s", flush=True)
