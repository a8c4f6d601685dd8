"""The first check behind docs/content.md "Federated prototypes": central k-means (scikit-learn) on the
trained synth-cold model's user codes h3, without the true groups. Prints the clusters' purity against
the generator's taste groups and cold NDCG@10 with each code blended towards its cluster mean.

    .venv/bin/python docs/experiments/2026-12-02-prototypes/kmeans_codes.py [SEED]

Run it with prototypes off in configs/synth-cold.yaml's training (it is: _train fits them only after
training, and this script reads the users' own codes). Needs data/synth-mm and models/clip-synth-mm.
"""
import sys

import numpy as np
from sklearn.cluster import KMeans

sys.path.insert(0, "docs/experiments/2026-12-02-whiten")
from diagnose import PATH, bc, ndcg  # noqa: E402

seed = int(sys.argv[1]) if len(sys.argv) > 1 else 0
cfgd = bc._cfg("synth-cold.yaml", PATH, None, prototypes={"enabled": False})
cfgd["seed"] = seed
cfg, data, split, model, _ = bc._train(cfgd)
U = model.user_vectors(np.arange(data.n_users)).astype(np.float64)            # (U, H1+1): [h3, 1]
V = model.item_vectors().astype(np.float64)
g = bc._truth(PATH, data)["group"]
cold = split.cold_items
print("own codes:", ndcg(U @ V.T, data, split, cold))
for K in (8, 16, 32, 64):
    km = KMeans(K, n_init=4, random_state=0).fit(U[:, :-1])
    C = np.hstack([km.cluster_centers_, np.ones((K, 1))])[km.labels_]
    purity = sum(np.bincount(g[km.labels_ == k]).max() for k in range(K) if (km.labels_ == k).any()) / len(g)
    for beta in (0.5, 1.0):
        print(K, f"purity {purity:.3f} blend {beta}", ndcg(((1 - beta) * U + beta * C) @ V.T, data, split, cold))
