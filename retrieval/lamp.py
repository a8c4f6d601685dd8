"""A LaMP-3-like check of summary-augmented retrieval: predict a user's rating of a held-out item
from (a) k retrieved history entries, (b) the summary plus one entry, (c) the summary alone.

No LLM is involved: the "reader" is a fixed, transparent rule per context, so the comparison
measures how much rating signal each context carries and how much text it takes:
  retrieval k     similarity-weighted mean of the k retrieved ratings
  summary only    the user's stated mean, moved to the stated category averages of the item's categories
  summary + k=1   alpha * summary estimate + (1 - alpha) * the one retrieved rating (alpha fit on valid)
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from recsys.metrics import mae, rmse
from retrieval.augment import Retriever
from retrieval.build import item_texts

log = logging.getLogger(__name__)


def summary_estimate(facts: dict, item_cats: list[str]) -> float:
    stated = [facts["category_mean"][c] for c in item_cats if c in facts.get("category_mean", {})]
    return float(np.mean(stated)) if stated else float(facts["mean"])


def weighted_rating(entries) -> float | None:
    if not entries:
        return None
    w = np.array([max(e.similarity, 0.0) + 1e-3 for e in entries])
    r = np.array([e.rating for e in entries])
    return float((w * r).sum() / w.sum())


@dataclass
class _Rows:
    users: np.ndarray
    items: np.ndarray
    truth: np.ndarray


def _pairs(split, data, part: str, n: int, seed: int) -> _Rows:
    m = split.matrix(data, part).tocoo()
    idx = np.random.default_rng(seed).permutation(m.nnz)[:n]
    return _Rows(m.row[idx].astype(np.int64), m.col[idx].astype(np.int64), m.data[idx].astype(float))


def _contexts(retriever: Retriever, rows: _Rows, item_vecs: np.ndarray, k: int, progress: bool):
    it = zip(rows.users, rows.items)
    if progress:
        from recsys.progress import progress_bar
        it = progress_bar(list(it), desc=f"retrieving k={k}", unit="pair")
    return [retriever.context(int(u), item_vecs[i], k) for u, i in it]


def evaluate(retriever: Retriever, split, data, n_pairs: int = 2000, seed: int = 0, progress: bool = False,
             model_predict=None) -> list[dict]:
    """Rows of the table: method, RMSE, MAE, mean context tokens, tokens vs retrieval k=4."""
    item_vecs = retriever.embedder.encode(item_texts(data), progress=progress)      # (N, d)
    cats = [[c for c in str(s).split("|") if c] for s in data.items["categories"].to_numpy()]
    sets = {}
    for part in ("valid", "test"):
        rows = _pairs(split, data, part, n_pairs, seed)
        ctx16 = _contexts(retriever, rows, item_vecs, 16, progress)     # top-16 contains the top-1/4
        summ = [c.summary for c in ctx16]
        sets[part] = (rows, ctx16, summ)

    glob = float(split.matrix(data, "train").data.mean())         # fallback when a user has no summary

    def preds(part, alpha=None):
        rows, ctx16, summ = sets[part]
        out = {}
        s_est = np.array([summary_estimate(s.facts, cats[i]) if s else glob for s, i in zip(summ, rows.items)])
        for k in (1, 4, 16):
            r = [weighted_rating(c.entries[:k]) for c in ctx16]
            out[f"retrieval k={k}"] = np.array([x if x is not None else glob for x in r])
        out["summary only"] = s_est
        top1 = out["retrieval k=1"]
        if alpha is None:
            grid = np.linspace(0, 1, 21)
            alpha = float(grid[np.argmin([rmse(a * s_est + (1 - a) * top1, rows.truth) for a in grid])])
        out["summary + k=1"] = alpha * s_est + (1 - alpha) * top1
        out["user mean (from summary)"] = np.array([s.facts["mean"] if s else glob for s in summ])
        return out, alpha

    _, alpha = preds("valid")
    p, _ = preds("test", alpha)
    rows, ctx16, summ = sets["test"]

    def tokens(method):
        if method.startswith("retrieval"):
            k = int(method.split("=")[1])
            return np.mean([len("\n".join(e.text for e in c.entries[:k]).split()) for c in ctx16])
        s_tok = np.mean([len(s.text.split()) if s else 0 for s in summ])
        if method == "summary + k=1":
            return s_tok + np.mean([len(c.entries[0].text.split()) if c.entries else 0 for c in ctx16])
        if method == "summary only":
            return s_tok
        return np.nan

    base = tokens("retrieval k=4")
    table = []
    for name, pred in p.items():
        pred = np.clip(pred, 1, 5)
        t = tokens(name)
        table.append({"method": name + (f" (alpha={alpha:.2f} fit on valid)" if name == "summary + k=1" else ""),
                      "rmse": rmse(pred, rows.truth), "mae": mae(pred, rows.truth),
                      "context_tokens": float(t), "vs_k4": float(t / base) if np.isfinite(t) else np.nan})
    if model_predict is not None:
        pred = model_predict(rows.users, rows.items)
        table.append({"method": "federated model (no retrieval)", "rmse": rmse(pred, rows.truth),
                      "mae": mae(pred, rows.truth), "context_tokens": np.nan, "vs_k4": np.nan})
    return table
