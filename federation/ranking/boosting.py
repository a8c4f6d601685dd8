"""A LightGBM LambdaRank re-ranker trained across data holders without pooling their rows.

Each holder (a block of users in simulation, a SuperNode in deployment) keeps its (user, candidate)
features and labels. Two schemes, as in Flower's federated XGBoost examples:
  * cyclic: the holders take turns; each continues the global booster on its own rows for
    ``trees_per_round`` trees (LightGBM ``init_model``) and hands it on;
  * bagging: every holder grows ``trees_per_round`` trees from the same global booster; the server
    appends each holder's new trees with weight 1/K (K holders), so a round moves the model by the
    holders' average step.
What leaves a holder: the booster (tree structure: split features and thresholds, leaf values — each
leaf an aggregate over at least ``min_data_in_leaf`` rows) and, for early stopping, its validation
users' NDCG sum and count. No feature row, label or user id.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class Holder:
    """One data holder's ranking examples: X (P, F), y (P,) in {0, 1}, group sizes (G,) summing to P."""
    X: np.ndarray
    y: np.ndarray
    group: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class BoostSettings:
    scheme: str = "cyclic"            # cyclic | bagging
    rounds: int = 60                  # passes over the holders (cyclic) / aggregation rounds (bagging)
    trees_per_round: int = 5
    learning_rate: float = 0.02
    num_leaves: int = 3
    min_data_in_leaf: int = 300
    feature_fraction: float = 0.5
    lambdarank_truncation_level: int = 20
    patience: int = 10                # rounds without a better federated validation NDCG@10
    seed: int = 0
    threads: int = 0


def params(s: BoostSettings) -> dict:
    return {"objective": "lambdarank", "metric": "ndcg", "eval_at": [10], "learning_rate": s.learning_rate,
            "num_leaves": s.num_leaves, "min_data_in_leaf": s.min_data_in_leaf, "feature_fraction": s.feature_fraction,
            "lambdarank_truncation_level": s.lambdarank_truncation_level, "seed": s.seed, "deterministic": True,
            "force_row_wise": True, "num_threads": s.threads, "verbose": -1}


# -- LightGBM text models: split into trees, merge with weights --------------------------------------
_TREE = re.compile(r"^Tree=\d+\n", re.M)


def split_model(text: str) -> tuple[str, list[str], str]:
    """(header without tree_sizes, tree blocks 'Tree=k ... \\n\\n\\n', footer from 'end of trees')."""
    end = text.index("end of trees")
    starts = [m.start() for m in _TREE.finditer(text, 0, end)]
    head = text[:starts[0]] if starts else text[:end]
    head = "\n".join(ln for ln in head.split("\n") if not ln.startswith("tree_sizes="))
    trees = [text[a:b] for a, b in zip(starts, starts[1:] + [end])]
    return head, trees, text[end:]


def _scaled(tree: str, w: float) -> str:
    if w == 1.0:
        return tree

    def scale(m):
        return "leaf_value=" + " ".join(repr(float(v) * w) for v in m.group(1).split())
    return re.sub(r"^leaf_value=(.*)$", scale, tree, count=1, flags=re.M)


def merge(head: str, trees: list[tuple[str, float]], footer: str) -> str:
    """One LightGBM text model from trees with weights (leaf values scaled), renumbered."""
    body = "".join(re.sub(r"^Tree=\d+", f"Tree={k}", _scaled(t, w), count=1) for k, (t, w) in enumerate(trees))
    return head + body + footer


def n_trees(text: str) -> int:
    return len(split_model(text)[1])


# -- federated evaluation ------------------------------------------------------------------------------
def ndcg_sum(pred: np.ndarray, y: np.ndarray, group: np.ndarray, k: int = 10) -> tuple[float, int]:
    """Σ over groups with a positive of NDCG@k of ``pred`` against binary ``y``, and that group count
    (what a holder reports for early stopping)."""
    total, n, lo = 0.0, 0, 0
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    for g in group:
        yy, pp = y[lo:lo + g], pred[lo:lo + g]
        lo += g
        pos = int(yy.sum())
        if pos == 0:
            continue
        top = np.argsort(-pp, kind="stable")[:k]
        total += float((yy[top] * disc[:len(top)]).sum() / disc[:min(pos, k)].sum())
        n += 1
    return total, n


def federated_ndcg(text: str, holders: list[Holder], k: int = 10) -> float:
    """Mean NDCG@k over the holders' validation groups from their (sum, count) reports."""
    import lightgbm as lgb

    b = lgb.Booster(model_str=text)
    sums = [ndcg_sum(b.predict(h.X), h.y, h.group, k) for h in holders if len(h)]
    tot, n = sum(s for s, _ in sums), sum(c for _, c in sums)
    return tot / max(n, 1)


# -- training ------------------------------------------------------------------------------------------
@dataclass
class BoostResult:
    model: str                         # LightGBM text of the best round
    best_round: int
    history: list[dict] = field(default_factory=list)   # per round: trees, valid ndcg@10
    upload_bytes: int = 0              # boosters sent by holders, all rounds


def grow(init: str | None, h: Holder, s: BoostSettings, names: list[str]) -> str:
    """A holder's turn: ``trees_per_round`` trees on its rows, continuing ``init`` (LightGBM text)."""
    import lightgbm as lgb

    ds = lgb.Dataset(h.X, h.y, group=h.group, feature_name=names, free_raw_data=True)
    init_model = lgb.Booster(model_str=init) if init else None
    b = lgb.train(params(s), ds, num_boost_round=s.trees_per_round, init_model=init_model)
    return b.model_to_string()


def boost_loop(n_holders: int, grow: Callable[[int, str | None], str], validate: Callable[[str], float],
               s: BoostSettings, progress: bool = False) -> BoostResult:
    """The server's round loop over ``n_holders`` holders, whatever carries the messages:
    grow(i, model) -> holder i's booster continued from ``model`` (None: from scratch);
    validate(model) -> the federated validation NDCG@10. Keeps the best round's model."""
    from recsys.progress import progress_bar

    if s.scheme not in ("cyclic", "bagging"):
        raise ValueError(f"boosting scheme {s.scheme!r}: expected cyclic or bagging")
    model: str | None = None
    best, best_round, hist, up, stale = -1.0, 0, [], 0, 0
    best_model = ""
    for r in progress_bar(range(s.rounds), desc=f"ranker ({s.scheme})", disable=not progress):
        if s.scheme == "cyclic":
            for i in range(n_holders):
                model = grow(i, model)
                up += len(model.encode())
        else:
            grown = [grow(i, model) for i in range(n_holders)]
            up += sum(len(g.encode()) for g in grown)
            model = bag(model, grown)
        score = validate(model)
        hist.append({"round": r + 1, "trees": n_trees(model), "valid_ndcg@10": round(score, 5)})
        if score > best:
            best, best_round, best_model, stale = score, r + 1, model, 0
        else:
            stale += 1
            if stale >= s.patience:
                break
    return BoostResult(best_model, best_round, hist, up)


def bag(model: str | None, grown: list[str]) -> str:
    """The global model plus every holder's new trees (those after the global model's) at weight 1/K."""
    have = n_trees(model) if model else 0
    head, old, _ = split_model(grown[0] if model is None else model)
    old = old if model is not None else []
    new = [(t, 1.0 / len(grown)) for g in grown for t in split_model(g)[1][have:]]
    return merge(head, [(t, 1.0) for t in old] + new, split_model(grown[0])[2])


def train(holders: list[Holder], valid: list[Holder], s: BoostSettings, names: list[str],
          progress: bool = False) -> BoostResult:
    """In process: train across ``holders`` (each sees only its rows); early-stop on the validation holders."""
    holders = [h for h in holders if len(h)]
    return boost_loop(len(holders), lambda i, m: grow(m, holders[i], s, names),
                      lambda m: federated_ndcg(m, valid), s, progress)
