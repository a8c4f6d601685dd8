"""fedrec dashboard (Streamlit). Start it with ``fedrec dashboard [--runs runs/] [--indices indices/]``.

Pages: Recommend, New user, Search (a content-aware run searches with its own CLIP model and explains hits;
other runs use a content index), Training, Federation, Indices. Heavy artifacts (runs, indices, the text
embedder) load once per process through ``st.cache_resource``; nothing trains in this script, and its
one write is the per-client evaluation it keeps in a run's ``dashboard-cache/``. A page whose artifacts
are missing says so and the other pages keep working.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import views

PAGES = ("Recommend", "New user", "Search", "Training", "Federation", "Indices")
THUMBS = 12                    # New user: matches shown as pictures in an image catalogue
# One line under each page's header: what the page is for.
DESCRIPTIONS = {
    "Recommend": "A user's top-K from the selected run, why each item is there, and the re-ranked list "
                 "with long-tail and novelty targets.",
    "New user": "Someone the run has never seen picks a few items; the list updates after each pick (the run's "
                "federated user embedder for a persona run, else a fresh personal encoder folded in on the picks; "
                "scored by the shared decoder; nothing leaves the device).",
    "Search": "Find items by text for a user: matches ordered by the query and by the user's own model.",
    "Training": "Launch and follow training jobs; compare runs round by round.",
    "Federation": "How well each client is served by the selected run, and who gains over another run.",
    "Indices": "The FAISS indices built for retrieval, with their size and measured recall.",
}

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


@st.cache_data(show_spinner="evaluating every client on the validation split (once per run; kept in the run "
                            "directory)…")
def _per_user(path: str, stamp: float) -> pd.DataFrame:
    return views.per_user_metric_cached(_run(path, stamp), "valid")


@st.cache_data(show_spinner=False, max_entries=20_000)
def _thumb(path: str) -> str:
    return views.thumbnail_uri(path)


def _with_pictures(df: pd.DataFrame) -> pd.DataFrame:
    """The table with its ``image`` paths turned into a ``picture`` column of thumbnails (a neutral
    placeholder for items without one), first after the rank."""
    if "image" not in df:
        return df
    out = df.drop(columns=["image"])
    out.insert(1 if "rank" in out else 0, "picture", [_thumb(p) for p in df["image"]])
    return out


def _table(df: pd.DataFrame, key: str, help: dict[str, str] | None = None, pictures: bool = True) -> None:
    """A table as users read it: pictures inline, column help as tooltips, and a CSV export button."""
    shown = _with_pictures(df) if pictures else df.drop(columns=["image"], errors="ignore")
    cfg = {c: st.column_config.Column(help=h) for c, h in (help or {}).items() if c in shown}
    if "picture" in shown:
        cfg["picture"] = st.column_config.ImageColumn("picture", width="small")
    st.dataframe(shown, hide_index=True, column_config=cfg, width="stretch")
    st.download_button("Export CSV", df.drop(columns=["image"], errors="ignore").to_csv(index=False),
                       file_name=f"{key}.csv", mime="text/csv", key=f"csv_{key}")


def _stamp(p: Path) -> float:
    f = p / "checkpoint.safetensors" if (p / "checkpoint.safetensors").exists() else p / "manifest.json"
    return f.stat().st_mtime if f.exists() else 0.0


def _sidebar_run(runs: list[views.RunInfo]):
    """The run every page shows, chosen once in the sidebar (name · dataset · mode · strategy);
    preselected: the first implicit run (a ranker). Returns the loaded run, or None."""
    usable = [r for r in runs if r.problem is None]
    if not usable:
        st.sidebar.info("No trained run found. Train one: `fedrec train configs/ml100k-explicit.yaml`.")
        return None
    by_name = {r.name: r for r in usable}
    name = st.sidebar.selectbox("Run", list(by_name), index=views.preferred_run(usable, "implicit"),
                                format_func=lambda n: by_name[n].label, key="run")
    info = by_name[name]
    try:
        with st.spinner(f"loading run {name}…"):
            return _run(str(info.path), _stamp(info.path))
    except Exception as e:  # noqa: BLE001 - show any load failure on the page, keep the app alive
        st.sidebar.error(f"Cannot open run {info.name}: {e}")
        return None


def _header(page: str) -> None:
    st.header(page)
    st.caption(DESCRIPTIONS[page])


def _no_run() -> None:
    st.info("Pick a run in the sidebar (none can be opened yet: train one with `fedrec train CONFIG`).")


@st.cache_data(show_spinner=False)
def _user_choices(path: str, stamp: float) -> tuple[list[str], list[int]]:
    run = _run(path, stamp)
    return [str(u) for u in run.data.user_ids], np.diff(run.train.indptr).tolist()


def _pick_user(run, key: str) -> tuple[str, int]:
    """A searchable user picker (type to filter) that shows each user's history size."""
    ids, sizes = _user_choices(str(run.dir), _stamp(run.dir))
    pos = st.selectbox("User (type to search)", range(len(ids)), key=f"{key}_{run.dir.name}",
                       format_func=lambda j: f"{ids[j]} — {sizes[j]} items in history")
    return ids[pos], pos


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
               "without targets it reaches: " + ", ".join(f"{v} {x:.2f}" for v, x in base.items()) + ".")
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
        st.dataframe(report, hide_index=True)
    _table(recs, f"reranked-top{k}", {"ranker score": "The LightGBM re-ranker's score (a ranking score, not a "
                                                      "rating): only its order matters."})


def page_recommend(run, idx_root: Path, rankers: list[dict] | None = None) -> None:
    _header("Recommend")
    if run is None:
        return _no_run()
    if run.cfg.model.mode == "explicit":
        st.caption("This run predicts ratings (explicit): its top-K favours items with few, high ratings. "
                   "An implicit run ranks better; pick one in the sidebar.")
    user, u = _pick_user(run, "rec_user")
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
    mode = run.cfg.model.mode
    label = recs.columns[3]
    _table(recs, f"top{k}-user-{user}", {label: views.SCORE_HELP[mode],
                                          "cold start": "No training interactions: scored from content alone.",
                                          "why": "The item of the user's history closest to this one."})
    cold = views.cold_items(run) if run.cfg.content.enabled else []
    if len(cold):
        st.subheader(f"New items for user {user}")
        st.caption(f"{len(cold):,} items have no training interactions yet; a content-aware run scores them from "
                   "their content. In the full list they compete with items users already know, so here they "
                   "are ranked among themselves (as the cold-item evaluation does).")
        new = views.recommendations(run, u, k, exclude, _item_vecs(str(run.dir), _stamp(run.dir)), among=cold)
        _table(new, f"new-items-user-{user}", {new.columns[3]: views.SCORE_HELP[mode]})
    with st.expander(f"History ({run.train[u].nnz} items)"):
        _table(views.history_table(run, u), f"history-user-{user}")
    _rerank_section(run, u, k, rankers or [])


@st.cache_resource(show_spinner="drawing the encoder a new client starts from (once per run)…")
def _new_client_start(path: str, stamp: float):
    from federation.runs.onboard import new_client_start
    return new_client_start(_run(path, stamp).fed)


def page_new_user(run) -> None:
    _header("New user")
    if run is None:
        return _no_run()
    from federation.runs.onboard import check_supported
    try:
        check_supported(run.fed)
    except Exception as e:  # noqa: BLE001 - a strategy without onboarding: say why, keep the app up
        st.info(str(e))
        return
    key = f"new_picks_{run.dir.name}"
    picks: list[int] = st.session_state.setdefault(key, [])
    c1, c2 = st.columns([3, 1])
    text = c1.text_input("Search the catalogue by title", "", key=f"new_q_{run.dir.name}",
                         placeholder="e.g. star wars")
    found = [i for i in views.search_titles(run.data, text) if i not in picks]
    match_key = f"new_match_{run.dir.name}"

    def add_pick():                     # a callback: the pick is in the state before the page reruns (one run)
        if st.session_state.get(match_key) is not None and st.session_state[match_key] not in picks:
            picks.append(int(st.session_state[match_key]))
    if found:
        c1.selectbox("Matches", found, key=match_key,
                     format_func=lambda i: f"{run.data.title(i)} (item {run.data.item_ids[i]})")
        c2.button("Add this item", key=f"new_add_{run.dir.name}", on_click=add_pick)
        shown = [i for i in found if views.image_of(run.data, i)][:THUMBS]
        if shown:                       # an image catalogue: pick by thumbnail too
            st.caption("Or pick by picture:")
            cols = st.columns(THUMBS // 2)
            for j, i in enumerate(shown):
                col = cols[j % len(cols)]
                col.image(_thumb(views.image_of(run.data, i)), caption=run.data.title(i), width=72)
                col.button("Add", key=f"new_pic_{run.dir.name}_{i}", on_click=picks.append, args=(int(i),))
    elif text.strip():
        c1.caption("No title matches.")
    if picks:
        st.markdown("**Your items:** " + "; ".join(f"{run.data.title(i)} (item {run.data.item_ids[i]})" for i in picks))
        c2.button("Start over", key=f"new_clear_{run.dir.name}", on_click=picks.clear)
    d1, d2 = st.columns(2)
    k = d1.slider("K", 1, 50, 10, key="new_k")
    embedder = bool(run.fed.shape.embedder_heads)
    if embedder:
        steps = d2.slider("Fold-in steps (0: the run's user embedder alone)", 0, 20, 0, key="new_steps_embedder")
    else:
        steps = d2.slider("Fold-in steps (0: the fresh encoder as it starts)", 0, 20, 5, key="new_steps")
    if not picks:
        st.info("Search for an item you like and add it; the list appears with the first pick.")
        return
    st.caption(("Scored by this run's federated user embedder from your picks" +
                (f", then a personal encoder started at its vector and folded in for {steps} steps" if steps else "")
                if embedder else "Scored by a fresh personal encoder" +
                (f" folded in for {steps} steps" if steps else " as it starts")) +
               "; nothing leaves this device.")
    start = None if embedder and not steps else _new_client_start(str(run.dir), _stamp(run.dir))  # not needed
    recs = views.new_user_recommendations(run, picks, k, steps, _item_vecs(str(run.dir), _stamp(run.dir)), start)
    st.subheader(f"Top {len(recs)} after {len(picks)} pick(s)")
    _table(recs, "new-user", {recs.columns[3]: views.SCORE_HELP[run.cfg.model.mode],
                              "why": "The picked item closest to this one in the model's item space."})


@st.cache_resource(show_spinner="loading the run's content model and item features…")
def _content_tools(path: str, stamp: float):
    from federation.runs.serve import content_tools
    return content_tools(_run(path, stamp))


def _content_search(run, user: str, u: int) -> None:
    """Search of a content-aware run: the query goes through the run's own CLIP (or sentence) model,
    the matches are re-ranked by the user's model, and any hit can be explained (federation/runs/serve.py)."""
    from federation.runs.serve import explain_run, search_run

    query = st.text_input("Query", "", key=f"search_q_{run.dir.name}", placeholder="e.g. a red striped lamp")
    relevance = st.slider("Query match vs this user's taste", 0.0, 1.0, 0.5, 0.05, key="search_rel")
    if not query.strip():
        return
    try:
        ext, feats = _content_tools(str(run.dir), _stamp(run.dir))
    except Exception as e:  # noqa: BLE001 - a missing model or cache is shown, the app stays up
        st.error(f"Cannot load the content model of {run.dir.name}: {e}")
        return
    hits = search_run(run, ext, feats, u, query, 10, relevance=relevance)
    plain = search_run(run, ext, feats, u, query, 10, relevance=1.0)
    seen = set(run.train[u].indices.tolist())

    def frame(rows, cols):
        df = pd.DataFrame(rows)
        if df.empty:
            return df
        df["item"] = [str(run.data.item_ids[i]) for i in df["index"]]
        df["seen"] = ["seen" if int(i) in seen else "" for i in df["index"]]
        df["image"] = [views.image_of(run.data, int(i)) for i in df["index"]]
        return df[["rank", "image", "item", "title", *cols, "seen"]].round(3)
    c1, c2 = st.columns(2)
    with c1:
        st.subheader("For this user")
        _table(frame(hits, ["similarity", "score"]), f"search-user-{user}",
               {"similarity": "Cosine similarity of the query and the item's content (text and image).",
                "score": "Query match blended with this user's own score (the slider above)."})
    with c2:
        st.subheader("Query match only")
        _table(frame(plain, ["similarity"]), "search-query-only")
    if hits:
        pick = st.selectbox("Why this item?", [h["index"] for h in hits], key=f"search_why_{run.dir.name}",
                            format_func=lambda i: f"{run.data.title(i)} (item {run.data.item_ids[i]})")
        e = explain_run(run, feats, u, int(pick))
        extra = f", predicted rating {e['predicted_rating']:.2f}" if "predicted_rating" in e else ""
        st.markdown(f"{e['sentence']}  \n*(rank {e['rank']} of {run.data.n_items} for this user{extra})*")


def page_search(run, idx_root: Path) -> None:
    _header("Search")
    if run is None:
        return _no_run()
    user, u = _pick_user(run, "search_user")
    if run.cfg.content.enabled:
        _content_search(run, user, u)
        return
    content = _indices_for(idx_root, run, "content") or next(
        (m for m in views.list_indices(idx_root) if m.get("kind") == "content"
         and m.get("dataset_checksum") == run.data.checksum()), None)
    if content is None:
        st.info("No content index for this run's dataset yet. Build one: "
                f"`fedrec index build content {run.dir} --out indices/{run.dir.name}/content`.")
        return
    query = st.text_input("Query", "", key=f"search_q_{run.dir.name}",
                          placeholder="e.g. a funny animated film for children")
    if not query.strip():
        return
    ix = _index(content["path"], Path(content["path"], "manifest.json").stat().st_mtime)
    with st.spinner("loading the text model (first search only)…"):
        emb = _embedder()
    if ix.meta.get("embedder") != emb.id:
        st.error("The content index was built with another text model; rebuild it.")
        return
    res = ix.search(emb.encode([query]), 50)
    cand = res.ids[0][res.ids[0] >= 0]
    sim = res.scores[0][: len(cand)]
    personal = run.model().score(np.array([u]))[0][cand]
    # Personalized order: content relevance first, the user's own model breaks near-ties.
    z = (personal - personal.mean()) / (personal.std() + 1e-9)
    order = np.argsort(-(sim + 0.05 * z), kind="stable")
    vecs = _item_vecs(str(run.dir), _stamp(run.dir))
    seen = set(run.train[u].indices.tolist())

    def frame(pos):
        items = cand[pos][:10]
        return pd.DataFrame({"rank": np.arange(1, len(items) + 1), "image": [views.image_of(run.data, int(i)) for i in items],
                             "item": [str(run.data.item_ids[i]) for i in items],
                             "title": [run.data.title(int(i)) for i in items],
                             "similarity": np.round(sim[pos][:10], 3),
                             "seen": ["seen" if int(i) in seen else "" for i in items],
                             "why": views.closest_in_history(run, u, items, vecs)})
    c1, c2 = st.columns(2)
    with c1:
        st.subheader("For this user")
        _table(frame(order), f"search-user-{user}",
               {"similarity": "Cosine similarity of the query and the item's text (MiniLM).",
                "why": "The item of the user's history closest to this one (the model's item vectors)."})
    with c2:
        st.subheader("Not personalized")
        _table(frame(np.arange(len(cand))), "search-query-only")


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


def _line_chart(frame: pd.DataFrame, title: str, colors: dict[str, str], log: bool = False):
    import altair as alt

    shown = sorted(frame["run"].unique())
    return (alt.Chart(frame, title=title).mark_line(point=len(frame) <= 60)
            .encode(x=alt.X("round:Q", title="round", axis=alt.Axis(format="d", tickMinStep=1)),
                    y=alt.Y("value:Q", title=title, scale=alt.Scale(type="log") if log else alt.Scale(zero=False)),
                    color=alt.Color("run:N", title="run", scale=alt.Scale(domain=shown, range=[colors[r] for r in shown])),
                    tooltip=["run", "round", alt.Tooltip("value:Q", title=title, format=".4g")])
            .properties(height=260))


def page_training(runs, run, runs_dir: Path, jobs_dir: Path) -> None:
    _header("Training")
    _launcher(runs_dir, jobs_dir)
    if not runs:
        st.info("No runs yet.")
        return
    table = views.run_table(runs)
    st.dataframe(table, hide_index=True, width="stretch")
    st.download_button("Export CSV", table.to_csv(index=False), file_name="runs.csv", mime="text/csv",
                       key="csv_runs")
    names = [r.name for r in runs]
    first = run.dir.name if run is not None and run.dir.name in names else next(
        (r.name for r in runs if r.problem is None), names[0])
    chosen = st.multiselect("Compare runs", names, default=[first], key="train_runs")
    infos = [r for r in runs if r.name in chosen]
    warn = views.mixed_runs(infos)
    if warn:
        st.warning(warn)
    frames = []
    for r in infos:
        df, bad = views.read_metrics(r.path / "metrics.jsonl")
        if bad:
            st.warning(f"{r.name}: skipped {bad} unreadable line(s) in metrics.jsonl")
        if not df.empty:
            frames.append(df.assign(run=r.name))
    if not frames:
        st.info("No per-round metrics for the chosen runs.")
        return
    df = pd.concat(frames, ignore_index=True)
    colors = views.run_colors(names)
    cols = [c for c in ["loss", *views.metric_columns(df.columns)[:2], "participants", "cum_bytes_up",
                        "cum_fedavg_bytes"] if c in df]
    grid = st.columns(2)
    for j, col in enumerate(cols):
        frame = views.series_frame(df, col)
        if frame.empty:
            continue
        grid[j % 2].altair_chart(_line_chart(frame, views.series_title(col), colors, log=col == "loss"),
                                 width="stretch")


def _histogram(values, x_title: str):
    import altair as alt

    h = views.histogram(values)
    return (alt.Chart(h).mark_bar()
            .encode(x=alt.X("start:Q", title=x_title, bin="binned"), x2="end:Q",
                    y=alt.Y("clients:Q", title="clients"),
                    tooltip=[alt.Tooltip("start:Q", title="from", format=".4g"),
                             alt.Tooltip("end:Q", title="to", format=".4g"), "clients:Q"])
            .properties(height=240))


def page_federation(runs, run) -> None:
    _header("Federation")
    if run is None:
        return _no_run()
    info = next((r for r in runs if r.name == run.dir.name), None)
    if info is not None and info.privacy:
        st.info(f"Privacy — {info.privacy}. See docs/privacy.md.")
    per = _per_user(str(run.dir), _stamp(run.dir))
    metric = per.columns[-1]
    c1, c2 = st.columns(2)
    c1.altair_chart(_histogram(per["history"], "history size (training interactions)"), width="stretch")
    c2.altair_chart(_histogram(per[metric].dropna(), f"{metric} on the validation split"), width="stretch")
    st.subheader("Served worst")
    worst, note = views.served_worst(per)
    if note:
        st.caption(note)
    _table(worst, f"served-worst-{run.dir.name}", pictures=False)
    st.subheader("Per-client comparison with another run")
    others = views.comparable_runs(runs, run)
    if not others:
        st.info("Train another run on the same data and split to compare (e.g. the same config with another "
                "`federation.strategy`, or `fedavg` for a global model); it will be listed here.")
        return
    ref = st.selectbox("Compare with", [r.name for r in others], key=f"fed_ref_{run.dir.name}")
    other = next(r for r in others if r.name == ref)
    gain = views.personalization_gain(per, _per_user(str(other.path), _stamp(other.path)))
    better, worse = float((gain["gain"] > 0).mean()), float((gain["gain"] < 0).mean())
    st.metric(f"clients served better by {run.dir.name} than by {ref}", f"{better:.0%}",
              f"mean gain {gain['gain'].mean():+.4f} {metric}; worse for {worse:.0%}")
    st.altair_chart(_histogram(gain["gain"], f"gain per client ({metric}; positive: {run.dir.name} is better)"),
                    width="stretch")
    st.caption("Who gains: by history size")
    st.dataframe(views.gain_by_activity(gain), hide_index=True)
    winners, losers = views.biggest_changes(gain)
    left, right = st.columns(2)
    left.caption("Gain most")
    left.dataframe(winners, hide_index=True)
    right.caption("Lose most")
    right.dataframe(losers, hide_index=True)


def page_indices(idx_root: Path) -> None:
    _header("Indices")
    rows = views.list_indices(idx_root)
    if not rows:
        st.info(f"No indices under {idx_root}. Build some with `fedrec index build`.")
        return
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")


def main() -> None:
    st.set_page_config(page_title="fedrec", layout="wide")
    t0 = time.perf_counter()
    a = _args()
    runs_dir, idx_root = Path(a.runs), Path(a.indices)
    runs = views.list_runs(runs_dir)
    page = st.sidebar.radio("Page", PAGES, key="page")
    run = _sidebar_run(runs)
    st.sidebar.caption(f"Runs are read from `{runs_dir}/`, indices from `{idx_root}/`.")
    if page == "Recommend":
        page_recommend(run, idx_root, views.list_rankers(runs_dir))
    elif page == "New user":
        page_new_user(run)
    elif page == "Search":
        page_search(run, idx_root)
    elif page == "Training":
        page_training(runs, run, runs_dir, Path(a.jobs))
    elif page == "Federation":
        page_federation(runs, run)
    else:
        page_indices(idx_root)
    # The end of a script run, for the browser test and benchmark (fedrec/bench/browser.py): a run counter
    # they wait on, and the server-side time shown to the user.
    n = st.session_state["drawn"] = st.session_state.get("drawn", 0) + 1
    st.sidebar.caption(f"Page drawn in {time.perf_counter() - t0:.2f} s.")
    st.sidebar.markdown(f'<span class="fedrec-drawn" data-run="{n}"></span>', unsafe_allow_html=True)


main()
