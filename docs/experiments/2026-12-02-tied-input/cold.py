"""The tied-encoder-input figures of docs/content.md ("Tied encoder input"): configs/synth-cold.yaml
(which ships input_tie 30) with overrides, cold and warm NDCG@10 on the valid and test parts.

    .venv/bin/python docs/experiments/2026-12-02-tied-input/cold.py '[{"over": {"model": {"input_tie": 0.0}}}]'
    .venv/bin/python docs/experiments/2026-12-02-tied-input/cold.py '[{"seed": 1}, {"over": {"content": {"holder_weight": 10.0}}}]'

over: {section: {key: value}} merged into the config; seed: the model seed (the split stays seed 0).
Needs data/synth-mm and models/clip-synth-mm (make demo, or fedrec bench content, makes both).
"""
import json, sys, time
from pathlib import Path
import numpy as np
from federation import bench_content as bc
from recsys.evaluation import evaluate_candidates
path = Path("data/synth-mm")
for spec in json.loads(sys.argv[1]):
    t0 = time.time()
    cfgd = bc._cfg("synth-cold.yaml", path, None, **spec.get("over", {}))
    cfgd["seed"] = spec.get("seed", 0)
    cfg, data, split, model, secs = bc._train(cfgd)
    warm = np.setdiff1d(np.arange(data.n_items), split.cold_items)
    r = {f"{name}_{part}": round(evaluate_candidates(model, data, split, items, part, (10,))["ndcg@10"], 4)
         for name, items in (("cold", split.cold_items), ("warm", warm)) for part in ("valid", "test")}
    print(json.dumps(spec), r, f"{time.time() - t0:.0f}s", flush=True)
