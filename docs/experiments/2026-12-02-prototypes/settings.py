"""The prototype-setting table of docs/content.md ("Federated prototypes", 2026-12-02): train
configs/synth-cold.yaml once (model seed SEED; prototypes off during training, as a job does), then
fit prototypes with each setting and print cold / warm NDCG@10 on the valid and test parts.

    .venv/bin/python docs/experiments/2026-12-02-prototypes/settings.py 0 '[{"k": 8, "blend": 0.75}, {"k": 16, "blend": 0.5}]'

Keys of each setting: federation.prototypes.PrototypeSettings (k, blend, iters, split_radius).
Needs data/synth-mm and models/clip-synth-mm (make demo, or fedrec bench content).
"""
import json
import sys
import time
from pathlib import Path

import numpy as np

from federation import bench_content as bc
from federation.prototypes import PrototypeSettings
from recsys.evaluation import evaluate_candidates

path = Path("data/synth-mm")
seed, specs = int(sys.argv[1]), json.loads(sys.argv[2])
cfgd = bc._cfg("synth-cold.yaml", path, None, prototypes={"enabled": False})
cfgd["seed"] = seed
cfg, data, split, model, secs = bc._train(cfgd)
warm = np.setdiff1d(np.arange(data.n_items), split.cold_items)


def ev():
    return {f"{n}_{p}": round(evaluate_candidates(model, data, split, it, p, (10,))["ndcg@10"], 4)
            for n, it in (("cold", split.cold_items), ("warm", warm)) for p in ("valid", "test")}


print(seed, "off", ev(), f"trained in {secs:.0f}s", flush=True)
for spec in specs:
    t = time.time()
    model.fed.fit_prototypes(PrototypeSettings(**spec))
    print(seed, spec, ev(), f"{time.time() - t:.1f}s", flush=True)
