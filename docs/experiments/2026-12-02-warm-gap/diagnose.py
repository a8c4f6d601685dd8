"""Why the content model gains less warm NDCG@10 from prototypes than the content-free model
(docs/content.md, "Where the shipped config stands"). Trains configs/synth-cold.yaml with and without
content (prototypes off in training, as a job), then prints warm / cold NDCG@10 (valid, test) for:
own codes; the shipped prototypes (k 8, blend 0.75); each user's true taste-group mean code (oracle,
blend 0.75); the prototype assignment's purity against the true groups; and, for the content model,
warm items scored with the free rows only (content component dropped) and with the item bias only.

    .venv/bin/python docs/experiments/2026-12-02-warm-gap/diagnose.py [SEED] [VARIANTS]

VARIANTS: a JSON object {name: {config section: overrides}} replacing the two default models, e.g.
'{"no dropout": {"content": {"row_dropout": 0}}}'.
"""
import json
import sys
from pathlib import Path

import numpy as np

from federation import bench_content as bc
from federation.prototypes import PrototypeSettings, nearest

sys.path.insert(0, "docs/experiments/2026-12-02-whiten")
from diagnose import PATH, ndcg  # noqa: E402

seed = int(sys.argv[1]) if len(sys.argv) > 1 else 0
variants = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {"content": {}, "no content": {"content": {"enabled": False}}}
for name, over in variants.items():
    cfgd = bc._cfg("synth-cold.yaml", PATH, None, prototypes={"enabled": False}, **over)
    cfgd["seed"] = seed
    cfg, data, split, model, secs = bc._train(cfgd)
    warm = np.setdiff1d(np.arange(data.n_items), split.cold_items)
    g = bc._truth(PATH, data)["group"]
    U = model.user_vectors(np.arange(data.n_users)).astype(np.float64)              # (U, H1+1)
    V = model.item_vectors().astype(np.float64)                                     # (N, H1+1)
    print(name, f"trained {secs:.0f}s", flush=True)
    print("  own codes     warm", ndcg(U @ V.T, data, split, warm), "cold", ndcg(U @ V.T, data, split, split.cold_items))
    Ug = np.stack([U[g == k].mean(0) for k in range(g.max() + 1)])[g]
    Uo = 0.25 * U + 0.75 * Ug
    print("  oracle groups warm", ndcg(Uo @ V.T, data, split, warm), "cold", ndcg(Uo @ V.T, data, split, split.cold_items))
    C = model.fed.fit_prototypes(PrototypeSettings(k=8, blend=0.75, iters=3))
    Up = model.user_vectors(np.arange(data.n_users)).astype(np.float64)
    lab = nearest(model.fed.user_codes(np.arange(data.n_users))[0], C).cpu().numpy()
    purity = sum(np.bincount(g[lab == k]).max() for k in np.unique(lab)) / len(g)
    print("  prototypes k8 warm", ndcg(Up @ V.T, data, split, warm), "cold", ndcg(Up @ V.T, data, split, split.cold_items),
          f"purity {purity:.3f}")
    print("  item bias only warm", ndcg(np.tile(V[:, -1], (data.n_users, 1)), data, split, warm))
    if model.fed.content is not None:
        free = model.fed.global_p["dec_out"].double().cpu().numpy()                       # (N, H1) free rows
        Vf = np.hstack([free, V[:, -1:]])
        print("  free rows only, own   warm", ndcg(U @ Vf.T, data, split, warm))
        print("  free rows only, proto warm", ndcg(Up @ Vf.T, data, split, warm))
        print("  |content part| / |row| (warm mean)",
              round(float(np.linalg.norm(V[warm, :-1] - free[warm], axis=1).mean() / np.linalg.norm(V[warm, :-1], axis=1).mean()), 3))
