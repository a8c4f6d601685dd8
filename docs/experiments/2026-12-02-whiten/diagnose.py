"""Diagnostics behind docs/content.md "Whitened features" (2026-12-02), on configs/synth-cold.yaml.

    .venv/bin/python docs/experiments/2026-12-02-whiten/diagnose.py probe [MODEL_DIR ...]
        linear-probe R^2 of the generator's item vectors from CLIP text / image / mean / concat features
    .venv/bin/python docs/experiments/2026-12-02-whiten/diagnose.py users [SEED]
        cold NDCG@10 of the trained model with each user's code replaced by (a blend with) the mean
        code of the user's true taste group: an oracle for how much of the gap is on the user side
    .venv/bin/python docs/experiments/2026-12-02-whiten/diagnose.py foldin [SEED]
        per-user fold-in: refit each code to the user's history under the received decoder
        (L-BFGS, prior lam/2 |h - h_encoder|^2), with all rows or with content-only rows for cold items

Needs data/synth-mm and models/clip-synth-mm (make demo, or fedrec bench content). One-off: not tests.
"""
import sys
from pathlib import Path

import numpy as np
import torch

from federation import bench_content as bc
from federation.jobs import parse_config, prepare_data
from recsys.evaluation import evaluate_candidates
from recsys.features import ClipSpec, image_paths, item_texts, make_extractor

PATH = Path("data/synth-mm")


class Fixed:
    def __init__(self, S): self.S = S
    def score(self, u): return self.S[np.asarray(u)]


def ndcg(S, data, split, items):
    return {p: round(evaluate_candidates(Fixed(S), data, split, items, p, (10,))["ndcg@10"], 4) for p in ("valid", "test")}


def r2(f, iv):
    """Best held-out R^2 (ridge over a few lambdas, 800/200 items) of iv (N, d) from unit rows of f."""
    f = np.asarray(f, np.float64); f = f / np.linalg.norm(f, axis=1, keepdims=True)
    X = np.hstack([f, np.ones((len(f), 1))])
    perm = np.random.default_rng(0).permutation(len(iv)); tr, te = perm[:800], perm[800:]
    out = -np.inf
    for lam in (1e-3, 1e-2, 0.1, 1):
        W = np.linalg.solve(X[tr].T @ X[tr] + lam * np.eye(X.shape[1]), X[tr].T @ iv[tr])
        out = max(out, 1 - ((X[te] @ W - iv[te]) ** 2).sum() / ((iv[te] - iv[tr].mean(0)) ** 2).sum())
    return round(float(out), 3)


def probe(models):
    cfg = parse_config(bc._cfg("synth-cold.yaml", PATH, None)); data, _ = prepare_data(cfg)
    iv = bc._truth(PATH, data)["item_vec"].astype(np.float64)
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)
    for m in models or ["models/clip-synth-mm"]:
        ext = make_extractor(ClipSpec(model=m))
        T = unit(np.asarray(ext.encode_text(item_texts(data.items), False), np.float64))
        I = unit(np.asarray(ext.encode_images(image_paths(data.items, PATH), False)[0], np.float64))
        print(m, {"text": r2(T, iv), "image": r2(I, iv), "mean": r2(T + I, iv), "concat": r2(np.hstack([T, I]), iv)})


def trained(seed):
    cfgd = bc._cfg("synth-cold.yaml", PATH, None); cfgd["seed"] = seed
    cfg, data, split, model, _ = bc._train(cfgd)
    U = model.user_vectors(np.arange(data.n_users)).astype(np.float64)          # (U, H1+1): [h3, 1]
    V = model.item_vectors().astype(np.float64)                                 # (N, H1+1): [row, bias]
    return data, split, model, U, V


def users(seed):
    data, split, _, U, V = trained(seed)
    g = bc._truth(PATH, data)["group"]
    Ug = np.stack([U[g == k].mean(0) for k in range(g.max() + 1)])[g]          # each user's group mean code
    for beta in (0.0, 0.3, 0.6, 1.0):
        print(f"code = {1 - beta:.1f} own + {beta:.1f} group mean:", ndcg(((1 - beta) * U + beta * Ug) @ V.T, data, split, split.cold_items))


def foldin(seed):
    data, split, model, U, V = trained(seed)
    cold = split.cold_items
    U0, R, b = torch.tensor(U[:, :-1]), torch.tensor(V[:, :-1]), torch.tensor(V[:, -1])
    X = torch.tensor((split.matrix(data, "train") > 0).toarray(), dtype=torch.float64)
    neg = torch.where(X.sum(0) > 0, 0.0, -1e4)                                   # softmax over held items
    fed = model.fed
    cf = (fed.content_drop if fed.content_drop is not None else fed.content).to(torch.float64)
    Rc = cf @ fed.global_p["dec_P"].to(torch.float64).T                          # (N, H1) content-only rows
    print("encoder codes:", ndcg((U0 @ R.T + b).numpy(), data, split, cold))
    for rows, name in ((R, "all rows"), (Rc, "content-only rows")):
        for lam in (0.3, 1.0, 3.0, 10.0):
            h = U0.clone().requires_grad_(True)
            opt = torch.optim.LBFGS([h], lr=1, max_iter=100, line_search_fn="strong_wolfe")

            def closure():
                opt.zero_grad()
                loss = -(X * torch.log_softmax(h @ rows.T + (b if rows is R else 0) + neg, 1)).sum() \
                    + lam / 2 * ((h - U0) ** 2).sum()
                loss.backward()
                return loss
            opt.step(closure)
            S = (U0 @ R.T + b).numpy()
            S[:, cold] = (h.detach() @ rows[cold].T + (b[cold] if rows is R else 0)).numpy()
            print(f"fold-in ({name}) lam {lam}:", ndcg(S, data, split, cold))


if __name__ == "__main__":
    what, rest = sys.argv[1], sys.argv[2:]
    {"probe": lambda: probe(rest), "users": lambda: users(int(rest[0]) if rest else 0),
     "foldin": lambda: foldin(int(rest[0]) if rest else 0)}[what]()
