"""fedrec dashboard (Streamlit). Start it with ``fedrec dashboard [--runs runs/] [--indices indices/]``.

Pages: Recommend, Search (a content-aware run searches with its own CLIP model and explains hits;
other runs use a content index), Training, Federation, Indices. Heavy artifacts (runs, indices, the text
embedder) load once per process through ``st.cache_resource``; nothing trains in this script and
nothing is written into run or index directories. A page whose artifacts are missing says so and
the other pages keep working.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import views

PAGES = ("Recommend", "Search", "Training", "Federation", "Indices")


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--runs", default=os.environ.get("FEDREC_RUNS", "runs"))
    p.add_argument("--indices", default=os.environ.get("FEDREC_INDICES", "indices"))
    p.add_argument("--jobs", default=os.environ.get("FEDREC_JOBS", ".fedrec-jobs"))
    a, _ = p.parse_known_args(sys.argv[1:])
    return a


@st.cache_resource(show_spinner="loading run…")
def _run(path: str, stamp: float):
    from federation.runs.jobs import load_run
    return load_run(path)


@st.cache_resource(show_spinner="loading item vectors…")
def _item_vecs(path: str, stamp: float) -> np.ndarray:
    g = _run(path, stamp).fed.global_p
    return g["dec_out"].float().cpu().numpy()


@st.cache_resource(show_spinner="loading text embedder…")
def _embedder():
    from retrieval.embedders import get_embedder
    return get_embedder("minilm")


@st.cache_resource(show_spinner="loading index…")
def _index(path: str, stamp: float):
    from retrieval.index import VectorIndex
    return VectorIndex.load(path)


@st.cache_data(show_spinner=False)
def _summaries(path: str, stamp: float) -> dict:
    from retrieval.summaries import SummaryStore
    return {u: s.text for u, s in SummaryStore.load(path).entries.items()}


@st.cache_data(show_spinner="evaluating every client…")
def _per_user(path: str, stamp: float) -> pd.DataFrame:
    return views.per_user_metric(_run(path, stamp), "valid")


def _stamp(p: Path) -> float:
    f = p / "checkpoint.safetensors" if (p / "checkpoint.safetensors").exists() else p / "manifest.json"
    return f.stat().st_mtime if f.exists() else 0.0


def _pick_run(runs: list[views.RunInfo], key: str, prefer_mode: str | None = None):
    """A run chosen by the user; preselected: the first run in ``prefer_mode`` (if any)."""
    usable = [r for r in runs if r.problem is None]
    if not usable:
        st.info("No trained run found. Train one: `fedrec train configs/ml100k-explicit.yaml`.")
        return None
    name = st.selectbox("Run", [r.name for r in usable], index=views.preferred_run(usable, prefer_mode), key=key)
    info = next(r for r in usable if r.name == name)
    try:
        return _run(str(info.path), _stamp(info.path))
    except Exception as e:  # noqa: BLE001 - show any load failure on the page, keep the app alive
        st.error(f"Cannot open run {info.name}: {e}")
        return None


def _indices_for(root: Path, run, kind: str) -> dict | None:
    return views.index_for(views.list_indices(root), kind, run.dir.name, run.data.checksum)


@st.cache_resource(show_spinner="loading the re-ranker and its sources…")
def _ranker(path: str, stamp: float):
    from federation.ranking.reranker import load_ranker
    return load_ranker(path)


def _rerank_section(run, u: int, k: int, rankers: list[dict]) -> None:
    """The re-ranked list of a user, with sliders for list targets (MAP palette) and what is reached."""
    mine = views.rankers_for(rankers, run.dir)
    if not mine:
        return
    st.subheader("Re-ranked, with list targets")
    name = st.selectbox("Re-ranker", [r["name"] for r in mine], key="rr_name")
    info = next(r for r in mine if r["name"] == name)
    try:
        rk = _ranker(str(info["path"]), _stamp(info["path"]))
    except Exception as e:  # noqa: BLE001 - a stale or broken ranker is shown, the page keeps working
        st.error(f"Cannot use re-ranker {name}: {e}")
        return
    if not 0 <= u < rk.src.data.n_users or rk.src.data.checksum() != run.data.checksum():
        st.warning(f"{name} ranks another dataset than this run.")
        return
    base = views.list_values(rk, u, k)
    st.caption("Each slider asks for at least this share in the list (0–1). The list is the re-ranker's, "
               "moved as little as possible (MAP palette) until the targets are met; "
               f"without targets it reaches: " + ", ".join(f"{v} {x:.2f}" for v, x in base.items()) + ".")
    cols = st.columns(len(base))
    targets = {}
    for c, (v, x) in zip(cols, base.items()):
        start = float(round(x, 2))
        t = c.slider(v, 0.0, 1.0, start, 0.01, key=f"rr_{v}")
        if t > start:                        # a slider left where it starts asks for nothing
            targets[v] = t
    recs, report, feasible = views.reranked(rk, u, k, targets)
    if targets and not feasible:
        st.warning("These targets cannot all be met from this user's candidates; showing the closest list.")
    if len(report):
        st.table(report.set_index("target"))
    st.table(recs.set_index("rank"))


def page_recommend(runs, idx_root: Path, rankers: list[dict] | None = None) -> None:
    st.header("Recommend")
    # A ranker first: a rating (explicit) model's top-K favours items with few, high ratings.
    run = _pick_run(runs, "rec_run", prefer_mode="implicit")
    if run is None:
        return
    users = [str(u) for u in run.data.user_ids]
    user = st.selectbox("User", users, key="rec_user")
    u = run.data.user_index(user)
    c1, c2 = st.columns(2)
    k = c1.slider("K", 1, 50, 10, key="rec_k")
    exclude = c2.toggle("Exclude items the user has seen", True, key="rec_excl")
    summ_ix = _indices_for(idx_root, run, "summaries")
    if summ_ix and (Path(summ_ix["path"]) / "summaries.jsonl").exists():
        p = Path(summ_ix["path"]) / "summaries.jsonl"
        text = _summaries(str(p), p.stat().st_mtime).get(user)
        if text:
            st.markdown(f"**Summary.** {text}")
    recs = views.recommendations(run, u, k, exclude, _item_vecs(str(run.dir), _stamp(run.dir)))
    st.subheader(f"Top {len(recs)} for user {user}")
    shown = recs.drop(columns=["image"]).assign(cold_start=recs["cold_start"].map({True: "cold", False: ""}))
    st.table(shown.set_index("rank"))
    imgs = [(r.title, r.image) for r in recs.itertuples() if r.image and Path(r.image).exists()]
    if imgs:
        cols = st.columns(min(len(imgs), 10))
        for c, (title, img) in zip(cols, imgs[:10]):
            c.image(img, caption=title, width=64)
    with st.expander(f"History ({run.train[u].nnz} items)"):
        hist = views.history_table(run, u)
        pics = [(f"{r.title} ({r.rating:g})", r.image) for r in hist.itertuples() if r.image and Path(r.image).exists()]
        if pics:
            cols = st.columns(min(len(pics), 10))
            for c, (cap, img) in zip(cols, pics[:10]):
                c.image(img, caption=cap, width=64)
        st.dataframe(hist.drop(columns=["image"]), hide_index=True)
    _rerank_section(run, u, k, rankers or [])


@st.cache_resource(show_spinner="loading the run's content model and item features…")
def _content_tools(path: str, stamp: float):
    from federation.runs.serve import content_tools
    return content_tools(_run(path, stamp))


def _content_search(run) -> None:
    """Search of a content-aware run: the query goes through the run's own CLIP (or sentence) model,
    the matches are re-ranked by the user's model, and any hit can be explained (federation/runs/serve.py)."""
    from federation.runs.serve import explain_run, search_run

    user = st.selectbox("User", [str(u) for u in run.data.user_ids], key="search_user")
    query = st.text_input("Query", "", key="search_q", placeholder="e.g. a red striped lamp")
    relevance = st.slider("Query match vs this user's taste", 0.0, 1.0, 0.5, 0.05, key="search_rel")
    if not query.strip():
        return
    try:
        ext, feats = _content_tools(str(run.dir), _stamp(run.dir))
    except Exception as e:  # noqa: BLE001 - a missing model or cache is shown, the app stays up
        st.error(f"Cannot load the content model of {run.dir.name}: {e}")
        return
    u = run.data.user_index(user)
    hits = search_run(run, ext, feats, u, query, 10, relevance=relevance)
    plain = search_run(run, ext, feats, u, query, 10, relevance=1.0)
    c1, c2 = st.columns(2)
    c1.subheader("For this user")
    c1.dataframe(pd.DataFrame(hits)[["rank", "title", "similarity", "score"]], hide_index=True)
    c2.subheader("Query match only")
    c2.dataframe(pd.DataFrame(plain)[["rank", "title", "similarity"]], hide_index=True)
    pics = [(h["title"], views.image_of(run.data, h["index"])) for h in hits]
    pics = [(t, p) for t, p in pics if p and Path(p).exists()]
    if pics:
        for c, (t, img) in zip(st.columns(len(pics)), pics):
            c.image(img, caption=t, width=64)
    if hits:
        pick = st.selectbox("Why this item?", [h["index"] for h in hits], format_func=run.data.title,
                            key="search_why")
        e = explain_run(run, feats, u, int(pick))
        extra = f", predicted rating {e['predicted_rating']:.2f}" if "predicted_rating" in e else ""
        st.markdown(f"{e['sentence']}  \n*(rank {e['rank']} of {run.data.n_items} for this user{extra})*")


def page_search(runs, idx_root: Path) -> None:
    st.header("Search")
    run = _pick_run(runs, "search_run")
    if run is None:
        return
    if run.cfg.content.enabled:
        _content_search(run)
        return
    content = _indices_for(idx_root, run, "content") or next(
        (m for m in views.list_indices(idx_root) if m.get("kind") == "content"), None)
    if content is None:
        st.info("No content index yet. Build one: `fedrec index build content RUN --out indices/RUN/content`.")
        return
    user = st.selectbox("User", [str(u) for u in run.data.user_ids], key="search_user")
    query = st.text_input("Query", "", key="search_q", placeholder="e.g. a funny animated film for children")
    if not query.strip():
        return
    ix = _index(content["path"], Path(content["path"], "manifest.json").stat().st_mtime)
    emb = _embedder()
    if ix.meta.get("embedder") != emb.id:
        st.error("The content index was built with another text model; rebuild it.")
        return
    res = ix.search(emb.encode([query]), 50)
    cand = res.ids[0][res.ids[0] >= 0]
    sim = res.scores[0][: len(cand)]
    u = run.data.user_index(user)
    personal = run.model().score(np.array([u]))[0][cand]
    # Personalized order: content relevance first, the user's own model breaks near-ties.
    z = (personal - personal.mean()) / (personal.std() + 1e-9)
    order = np.argsort(-(sim + 0.05 * z), kind="stable")
    c1, c2 = st.columns(2)
    c1.subheader("For this user")
    c1.dataframe(pd.DataFrame({"title": [run.data.title(int(i)) for i in cand[order][:10]]}), hide_index=True)
    c2.subheader("Not personalized")
    c2.dataframe(pd.DataFrame({"title": [run.data.title(int(i)) for i in cand[:10]]}), hide_index=True)


def _launcher(runs_dir: Path, jobs_dir: Path) -> None:
    from dashboard import jobs as J

    with st.expander("Launch a training job"):
        cfg = st.text_input("Config file", "configs/ml100k-explicit.yaml", key="job_cfg")
        name = st.text_input("Run name (default: the config's name)", "", key="job_name")
        if st.button("Start", key="job_start"):
            try:
                job = J.launch(cfg, runs_dir, jobs_dir, name.strip() or None)
                st.success(f"started {job.name} (pid {job.pid}); log: {job.log}")
            except Exception as e:  # noqa: BLE001 - a bad config is shown, not raised
                st.error(str(e))
    for job in J.list_jobs(jobs_dir):
        c1, c2 = st.columns([4, 1])
        c1.progress(min(1.0, job.progress), text=f"{job.name}: {job.status}, round {job.rounds_done}/{job.rounds_total}")
        if job.status == "running" and c2.button("Cancel", key=f"cancel_{job.name}"):
            J.cancel(job, jobs_dir)
            st.rerun()
        with st.expander(f"log of {job.name}"):
            st.code(J.tail(job.log) or "(empty)")


def page_training(runs, runs_dir: Path, jobs_dir: Path) -> None:
    st.header("Training runs")
    _launcher(runs_dir, jobs_dir)
    if not runs:
        st.info("No runs yet.")
        return
    st.dataframe(views.run_table(runs), hide_index=True, width="stretch")
    first = next((r.name for r in runs if r.problem is None), runs[0].name)
    chosen = st.multiselect("Compare runs", [r.name for r in runs], default=[first], key="train_runs")
    frames = []
    for r in runs:
        if r.name in chosen:
            df, bad = views.read_metrics(r.path / "metrics.jsonl")
            if bad:
                st.warning(f"{r.name}: skipped {bad} unreadable line(s) in metrics.jsonl")
            if not df.empty:
                frames.append(df.assign(run=r.name))
    if not frames:
        st.info("No per-round metrics for the chosen runs.")
        return
    df = pd.concat(frames, ignore_index=True)
    metric_cols = views.metric_columns(df.columns)
    for col in ["loss", *metric_cols[:2], "participants", "cum_bytes_up", "cum_fedavg_bytes"]:
        if col in df:
            st.caption(col)
            st.line_chart(df.pivot_table(index="round", columns="run", values=col))


def page_federation(runs) -> None:
    st.header("Federation")
    run = _pick_run(runs, "fed_run")
    if run is None:
        return
    info = next((r for r in runs if r.name == run.dir.name), None)
    if info is not None and info.privacy:
        st.info(f"Privacy — {info.privacy}. See docs/privacy.md.")
    per = _per_user(str(run.dir), _stamp(run.dir))
    metric = per.columns[-1]
    st.caption("History size per client (training interactions)")
    st.bar_chart(np.histogram(per["history"], bins=20)[0])
    st.caption(f"Per-client {metric} on the validation split")
    st.bar_chart(np.histogram(per[metric].dropna(), bins=20)[0])
    worst = per.sort_values(metric, ascending=(metric != "rmse")).head(10)
    st.subheader("Served worst")
    st.dataframe(worst, hide_index=True)
    st.subheader("Per-client comparison with another run")
    others = views.comparable_runs(runs, run)
    if not others:
        st.info("Train another run on the same data and split to compare (e.g. the same config with another "
                "`federation.strategy`, or `fedavg` for a global model); it will be listed here.")
        return
    ref = st.selectbox("Compare with", [r.name for r in others], key="fed_ref")
    info = next(r for r in others if r.name == ref)
    gain = views.personalization_gain(per, _per_user(str(info.path), _stamp(info.path)))
    better, worse = float((gain["gain"] > 0).mean()), float((gain["gain"] < 0).mean())
    st.metric(f"clients served better by {run.dir.name} than by {ref}", f"{better:.0%}",
              f"mean gain {gain['gain'].mean():+.4f} {metric}; worse for {worse:.0%}")
    st.caption(f"Gain per client ({metric}, positive: {run.dir.name} is better), histogram over 20 bins")
    hist, edges = np.histogram(gain["gain"], bins=20)
    st.bar_chart(pd.DataFrame({"clients": hist}, index=[f"{e:+.3f}" for e in edges[:-1]]))
    st.caption("Who gains: by history size")
    st.dataframe(views.gain_by_activity(gain), hide_index=True)
    winners, losers = views.biggest_changes(gain)
    left, right = st.columns(2)
    left.caption("Gain most")
    left.dataframe(winners, hide_index=True)
    right.caption("Lose most")
    right.dataframe(losers, hide_index=True)


def page_indices(idx_root: Path) -> None:
    st.header("Indices")
    rows = views.list_indices(idx_root)
    if not rows:
        st.info(f"No indices under {idx_root}. Build some with `fedrec index build`.")
        return
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")


def main() -> None:
    st.set_page_config(page_title="fedrec", layout="wide")
    a = _args()
    runs_dir, idx_root = Path(a.runs), Path(a.indices)
    runs = views.list_runs(runs_dir)
    page = st.sidebar.radio("Page", PAGES, key="page")
    st.sidebar.caption(f"runs: {runs_dir} · indices: {idx_root}")
    if page == "Recommend":
        page_recommend(runs, idx_root, views.list_rankers(runs_dir))
    elif page == "Search":
        page_search(runs, idx_root)
    elif page == "Training":
        page_training(runs, runs_dir, Path(a.jobs))
    elif page == "Federation":
        page_federation(runs)
    else:
        page_indices(idx_root)


main()
