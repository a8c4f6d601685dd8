"""Tasks served by one content-aware model (UniMP direction): personalized search, preference
prediction and explanations. Pure numpy: scores and content vectors in, rankings and text out.

Inputs everywhere: ``user_scores`` (N,) one user's model scores of every item (the model's
``score``), ``feats`` (N, D) unit-norm item content vectors in the same space as the query
embedding (CLIP: text and image towers share it).
"""
from __future__ import annotations

import re

import numpy as np

_STOP = {"a", "an", "the", "in", "with", "and", "of", "design", "genres", "for", "to", "on", "by", "item"}


def _z(x: np.ndarray) -> np.ndarray:
    s = x.std()
    return (x - x.mean()) / s if s > 1e-12 else np.zeros_like(x)


def personalized_search(query: np.ndarray, feats: np.ndarray, user_scores: np.ndarray, k: int = 10,
                        candidates: int = 100, relevance: float = 0.5, exclude: np.ndarray | None = None
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A query embedding (D,) -> the ``candidates`` items most similar to it in content space, re-ordered
    by relevance * z(similarity) + (1 - relevance) * z(the user's own score) over those candidates.

    Returns (ids (k,), final scores (k,), query similarities (k,)), best first. Two users with
    different histories get the same candidates in different orders.
    """
    sim = feats @ query                                                                  # (N,)
    if exclude is not None and len(exclude):
        sim = sim.copy()
        sim[exclude] = -np.inf
    c = min(candidates, int(np.isfinite(sim).sum()))
    if c <= 0:
        return np.zeros(0, np.int64), np.zeros(0), np.zeros(0)
    cand = np.argpartition(-sim, c - 1)[:c]                                              # (C,)
    final = relevance * _z(sim[cand]) + (1 - relevance) * _z(user_scores[cand].astype(np.float64))
    order = np.argsort(-final, kind="stable")[:k]
    return cand[order].astype(np.int64), final[order], sim[cand[order]]


def prefer(user_scores: np.ndarray, a: int, b: int, temperature: float = 1.0) -> tuple[int, float]:
    """Pairwise preference: (the preferred item of a and b, P(a preferred over b)) under a
    Bradley–Terry reading of the score difference."""
    p = float(1.0 / (1.0 + np.exp(-(float(user_scores[a]) - float(user_scores[b])) / temperature)))
    return (a if p >= 0.5 else b), p


def _tokens(text: str) -> set[str]:
    return {t for t in re.findall(r"[a-z][a-z'\-]+", text.lower()) if t not in _STOP and len(t) > 2}


def explain(item: int, history: np.ndarray, ratings: np.ndarray | None, feats: np.ndarray, texts: list[str],
            titles: list[str], top: int = 3, rating_range: tuple[float, float] = (1.0, 5.0),
            rank: int | None = None, top_k: int = 10) -> dict:
    """Why ``item`` suits a user with ``history`` (H,) item ids and their ``ratings`` (H,) (None: implicit).

    Support of history item h = max(0, cos(c_item, c_h)) * w_h, with w_h = (r_h - min) / (max - min)
    (explicit: loved items count more, disliked ones barely) or 1 (implicit). Returns the top
    supporting items, the content words the item shares with them (weighted by support) and a sentence.
    The item itself never supports itself, and items with the same title count once. ``rank``: the
    item's rank for this user (of len(titles)); the sentence says "recommended because" only when it is
    in the top ``top_k`` (or no rank is given), else "ranked N of M; closest in your history".
    """
    history = np.asarray(history, dtype=np.int64)
    if ratings is not None:
        ratings = np.asarray(ratings)[history != item]
    history = history[history != item]
    if len(history) == 0:
        return {"item": int(item), "support": [], "shared": [], "sentence": f"{titles[item]}: no history to explain it with."}
    cos = feats[history] @ feats[item]                                                   # (H,)
    if ratings is None:
        w = np.ones(len(history))
    else:
        lo, hi = rating_range
        w = np.clip((np.asarray(ratings, np.float64) - lo) / max(hi - lo, 1e-9), 0, 1)
    support = np.maximum(cos, 0) * w
    best, seen = [], set()
    for j in np.argsort(-support, kind="stable"):
        if support[j] <= 0 or len(best) == top:
            break
        if titles[history[j]] not in seen:                   # one title once (catalogues repeat titles)
            seen.add(titles[history[j]])
            best.append(int(j))
    mine = _tokens(texts[item])
    weight: dict[str, float] = {}
    for j in best:
        for t in mine & _tokens(texts[history[j]]):
            weight[t] = weight.get(t, 0.0) + float(support[j])
    shared = [t for t, _ in sorted(weight.items(), key=lambda kv: (-kv[1], kv[0]))][:5]
    parts = []
    for j in best:
        r = f", rated {ratings[j]:g}" if ratings is not None else ""
        parts.append(f"{titles[history[j]]} (similarity {cos[j]:.2f}{r})")
    in_list = rank is None or rank <= top_k
    if parts and in_list:
        sentence = f"{titles[item]}: recommended because you liked " + "; ".join(parts)
        sentence += f" — it shares: {', '.join(shared)}." if shared else "."
    elif parts:
        sentence = (f"{titles[item]}: ranked {rank} of {len(titles)} for you (not in your top {top_k}); closest in "
                    "your history: " + "; ".join(parts) + ".")
    elif in_list:
        sentence = f"{titles[item]}: nothing in your history is close to it in content; it comes from users like you."
    else:
        sentence = f"{titles[item]}: ranked {rank} of {len(titles)} for you; nothing in your history is close to it."
    return {"item": int(item), "support": [{"item": int(history[j]), "similarity": float(cos[j]),
                                            "weight": float(w[j]), "support": float(support[j])} for j in best],
            "shared": shared, "sentence": sentence}
