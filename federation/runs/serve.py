"""Run-level tasks for the CLI and dashboard: personalized search, preference and explanations from a
trained content-aware run (I/O and model loading here; the math is recsys/tasks.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from federation.runs.jobs import Run, content_spec, load_run, resolve_device
from recsys.errors import FedrecError
from recsys.features import build_features, item_texts, make_extractor
from recsys.tasks import explain, personalized_search, prefer


def _content_run(run_dir: str | Path, device: str) -> Run:
    run = load_run(run_dir, device)
    if not run.cfg.content.enabled:
        raise FedrecError(f"{run_dir}: this run has no content features (content.enabled is false); "
                          "search and explanations need a content-aware run")
    return run


def raw_features(run: Run, device: str = "cpu", extractor=None) -> np.ndarray:
    """(N, D) unit-norm item features in the query space (the cached extractor output, before any
    graph propagation)."""
    feats, _ = build_features(run.data, Path(run.cfg.data.path), content_spec(run.cfg), device, progress=False,
                              extractor=extractor)
    return feats


def _user_scores(run: Run, u: int) -> np.ndarray:
    return run.model().score(np.array([u]))[0]


def content_tools(run: Run, device: str = "cpu"):
    """The run's query encoder and its (N, D) raw item features, loaded once (the dashboard caches them)."""
    if not run.cfg.content.enabled:
        raise FedrecError(f"{run.dir}: this run has no content features (content.enabled is false); "
                          "search and explanations need a content-aware run")
    ext = make_extractor(content_spec(run.cfg), resolve_device(device))
    return ext, raw_features(run, resolve_device(device), ext)


def search_run(run: Run, ext, feats: np.ndarray, u: int, query: str, k: int = 10, candidates: int = 100,
               relevance: float = 0.5) -> list[dict]:
    """Personalized search for user index ``u`` with loaded tools; rows best first. ``relevance`` 1.0
    orders by query similarity alone (the non-personalized view)."""
    if not query.strip():
        raise FedrecError("--query: empty query")
    q = ext.encode_text([query])[0]                                                      # (D,)
    seen = run.train[u].indices
    ids, final, sim = personalized_search(q, feats, _user_scores(run, u), k, candidates, relevance, seen)
    return [{"rank": r + 1, "item_id": str(run.data.item_ids[i]), "title": run.data.title(i),
             "score": float(f), "similarity": float(s), "index": int(i)}
            for r, (i, f, s) in enumerate(zip(ids, final, sim))]


def explain_run(run: Run, feats: np.ndarray, u: int, i: int, top_k: int = 10) -> dict:
    """Why the run would recommend item index ``i`` to user index ``u``: supporting history items +
    shared content, the item's score and rank among all items (the sentence says "recommended" only
    for a rank within ``top_k``)."""
    row = run.split.matrix(run.data, "train")[u]
    ratings = row.data if run.cfg.model.mode == "explicit" else None
    titles = [run.data.title(j) for j in range(run.data.n_items)]
    r = run.data.ratings.data
    scores = _user_scores(run, u)
    rank = int((scores > scores[i]).sum()) + 1
    out = explain(i, row.indices, ratings, feats, item_texts(run.data.items), titles,
                  rating_range=(float(r.min()), float(r.max())), rank=rank, top_k=top_k)
    out["score"] = float(scores[i])
    out["rank"] = rank
    if run.cfg.model.mode == "explicit":
        out["predicted_rating"] = float(run.model().predict(np.array([u]), np.array([i]))[0])
    return out


def search_for(run_dir: str | Path, user: str, query: str, k: int = 10, candidates: int = 100,
               relevance: float = 0.5, device: str = "cpu") -> list[dict]:
    """A text query -> the user's personalized ranking of matching items (items they already
    interacted with in training are left out)."""
    if not query.strip():
        raise FedrecError("--query: empty query")
    run = _content_run(run_dir, device)
    u = run.data.user_index(user)
    ext, feats = content_tools(run, device)
    return search_run(run, ext, feats, u, query, k, candidates, relevance)


def explain_for(run_dir: str | Path, user: str, item: str, device: str = "cpu") -> dict:
    """Why the run would recommend ``item`` to ``user``: supporting history items + shared content."""
    run = _content_run(run_dir, device)
    u, i = run.data.user_index(user), run.data.item_index(item)
    return explain_run(run, raw_features(run, resolve_device(device)), u, i)


def prefer_for(run_dir: str | Path, user: str, a: str, b: str, device: str = "cpu") -> dict:
    run = load_run(run_dir, device)
    u, ia, ib = run.data.user_index(user), run.data.item_index(a), run.data.item_index(b)
    if ia == ib:
        raise FedrecError(f"--a and --b are the same item ({a!r}); give two different items")
    scores = _user_scores(run, u)
    win, p = prefer(scores, ia, ib)
    out = {"preferred": str(run.data.item_ids[win]), "title": run.data.title(win), "p_first_over_second": p}
    if run.cfg.model.mode == "explicit":
        pr = run.model().predict(np.array([u, u]), np.array([ia, ib]))
        out["predicted_ratings"] = [float(pr[0]), float(pr[1])]
    return out
