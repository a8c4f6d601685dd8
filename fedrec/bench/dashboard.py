"""Dashboard latency on a large catalogue: page interactions timed through streamlit's AppTest.

AppTest executes the page script exactly as the server does (same process, same caches) but
without a browser, so the figures are server-side script time: what the user waits for before the
browser starts drawing.
"""
from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

import yaml

log = logging.getLogger(__name__)
APP = str(Path(__file__).resolve().parents[2] / "dashboard" / "app.py")


def bench_dashboard(n_items: int = 100_000, n_users: int = 5_000, rounds: int = 3) -> tuple[list[list], dict]:
    from streamlit.testing.v1 import AppTest

    from federation.runs.jobs import train
    from recsys.synth import SynthSpec, write_catalogue

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        write_catalogue(SynthSpec(n_users=n_users, n_items=n_items, mean_activity=20, seed=0), root / "synth",
                        images=False, progress=False)
        t_data = time.perf_counter() - t
        cfg = {"name": "big", "data": {"path": str(root / "synth")}, "model": {"mode": "explicit"},
               "federation": {"rounds": rounds, "fraction": 0.1}, "eval": {"every": 0}}
        (root / "cfg.yaml").write_text(yaml.safe_dump(cfg))
        t = time.perf_counter()
        train(root / "cfg.yaml", root / "runs" / "big", progress=False)
        t_train = time.perf_counter() - t
        cfg["federation"]["strategy"] = "persona"               # the same federation with a user embedder
        (root / "cfg-persona.yaml").write_text(yaml.safe_dump(cfg))
        train(root / "cfg-persona.yaml", root / "runs" / "big-persona", progress=False)
        old = {k: os.environ.get(k) for k in ("FEDREC_RUNS", "FEDREC_INDICES", "FEDREC_JOBS")}
        os.environ.update(FEDREC_RUNS=str(root / "runs"), FEDREC_INDICES=str(root / "indices"),
                          FEDREC_JOBS=str(root / "jobs"))
        rows = []
        try:
            at = AppTest.from_file(APP, default_timeout=600)

            def timed(label, fn):
                t0 = time.perf_counter()
                fn()
                if at.exception:
                    raise RuntimeError(f"dashboard raised during {label!r}: {at.exception[0].value}")
                rows.append([label, round(time.perf_counter() - t0, 3)])

            timed("first load (run, model and item vectors into the cache)", at.run)
            timed("Recommend: rerun with everything cached", at.run)
            n = len(at.selectbox(key="rec_user_big").options)
            for u in (17 % n, n // 2, n - 1):
                timed(f"Recommend: choose user {u}", lambda u=u: at.selectbox(key="rec_user_big").set_value(u).run())
            timed("Recommend: K slider 10 -> 40", lambda: at.slider(key="rec_k").set_value(40).run())
            timed("Recommend: include seen items", lambda: at.toggle(key="rec_excl").set_value(False).run())
            timed("switch to Training (first: imports the chart library)", lambda: at.sidebar.radio(key="page").set_value("Training").run())
            timed("switch to Indices", lambda: at.sidebar.radio(key="page").set_value("Indices").run())
            timed("switch to Federation (first: evaluates every client)",
                  lambda: at.sidebar.radio(key="page").set_value("Federation").run())
            timed("switch to Indices", lambda: at.sidebar.radio(key="page").set_value("Indices").run())
            timed("switch to New user", lambda: at.sidebar.radio(key="page").set_value("New user").run())
            for word in ("red", "blue", "lamp"):
                at.text_input(key="new_q_big").input(word).run()
                timed(f"New user: add a pick ({word}; fold-in 5 steps over all items)",
                      lambda: at.button(key="new_add_big").click().run())
            timed("switch to the persona run (New user)", lambda: at.sidebar.selectbox(key="run").set_value("big-persona").run())
            for word in ("red", "blue", "lamp"):
                at.text_input(key="new_q_big-persona").input(word).run()
                timed(f"New user, persona run: add a pick ({word}; the user embedder, no fold-in)",
                      lambda: at.button(key="new_add_big-persona").click().run())
            at.sidebar.selectbox(key="run").set_value("big").run()
            import streamlit as st
            st.cache_data.clear()                     # as after a server restart: only the run directory's cache
            at = AppTest.from_file(APP, default_timeout=600)
            at.run()
            timed("Federation in a new session (per-client evaluation read from the run directory)",
                  lambda: at.sidebar.radio(key="page").set_value("Federation").run())
            timed("switch to Recommend", lambda: at.sidebar.radio(key="page").set_value("Recommend").run())
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        return rows, {"items": n_items, "users": n_users, "data_s": t_data, "train_s": t_train}


# -- in a real browser ---------------------------------------------------------------------------------
BROWSER_SCENARIOS = (
    # (run, user, query): the demo's runs (`make demo`), each with a query its catalogue answers
    ("demo-ml100k-implicit", "42", "a funny animated film for children"),
    ("demo-ml100k-explicit", "42", "space adventure"),
    ("demo-synth-cold", "7", "a red striped lamp"),
    ("demo-ml100k-persona", "42", "space adventure"),
)


NEW_USER_PICKS = {"demo-ml100k-implicit": ("star wars", "raiders", "fargo"),
                  "demo-ml100k-explicit": ("star wars", "raiders", "fargo"),
                  "demo-synth-cold": ("red", "striped", "lamp"),
                  "demo-ml100k-persona": ("star wars", "raiders", "fargo")}
SHOT_RUNS = ("demo-ml100k-implicit", "demo-synth-cold")       # screenshots of their pages go to docs/img


def bench_browser(runs: Path, indices: Path, shots: Path | None = None) -> list[list]:
    """Every interaction of the demo's runs in headless Chromium (1400 x 1000), timed from the action to
    the page drawn (fedrec/bench/browser.py). Rows: [run, interaction, seconds, first load?]. The
    per-client evaluation caches are removed first, so the Federation page's first visit computes."""
    import shutil

    from dashboard.views import PER_CLIENT_CACHE
    from fedrec.bench.browser import DashboardBrowser

    rows: list[list] = []
    missing = [r for r, _, _ in BROWSER_SCENARIOS if not (runs / r / "checkpoint.safetensors").exists()]
    if missing:
        raise RuntimeError(f"run `make demo` first: missing {', '.join(missing)} under {runs}")
    for r, _, _ in BROWSER_SCENARIOS:
        shutil.rmtree(runs / r / PER_CLIENT_CACHE, ignore_errors=True)
    with tempfile.TemporaryDirectory() as jobs, DashboardBrowser(runs, indices, jobs=Path(jobs)) as b:
        def row(run, what, seconds, first=False):
            if b.exceptions():
                raise RuntimeError(f"the dashboard raised during {what!r} on {run}: {b.exceptions()[0][:300]}")
            rows.append([run, what, round(seconds, 2), "first" if first else ""])
            log.info("%s: %s %.2f s", run, what, seconds)

        row("(default)", "open the dashboard", b.open(), True)
        for run, user, query in BROWSER_SCENARIOS:
            if b.selected("Run").startswith(f"{run} ·"):    # already selected (the default): loaded by "open"
                rows.append([run, "choose the run (loads it)", "-", "with open"])
            else:
                row(run, "choose the run (loads it)", b.choose("Run", run), True)
            row(run, "Recommend: choose a user", b.choose("User", f"{user} ", f"{user} —"))
            row(run, "Recommend: K 10 -> 11", b.slider_keys("K", 1))
            row(run, "Recommend: include seen items", b.toggle("Exclude items the user has seen"))
            row(run, "Recommend: exclude seen items", b.toggle("Exclude items the user has seen"))
            snap = shots is not None and run in SHOT_RUNS
            if snap:
                b.screenshot(shots / f"recommend-{run}.png")
            row(run, "go to New user", b.page("New user"))
            for word in NEW_USER_PICKS[run]:
                b.type_text("Search the catalogue by title", word)
                row(run, f"New user: add a pick ({word})", b.click_button("Add this item"))
            if snap:
                b.screenshot(shots / f"new-user-{run}.png")
            row(run, "go to Search", b.page("Search"))
            row(run, "Search: first query (loads the text model)", b.type_text("Query", query), True)
            row(run, "Search: another query", b.type_text("Query", query + " please"))
            if snap:
                b.screenshot(shots / f"search-{run}.png")
            row(run, "go to Training (first: charts)", b.page("Training"), True)
            if snap and run == SHOT_RUNS[0]:
                b.screenshot(shots / "training.png")
            row(run, "go to Federation (first: evaluates every client)", b.page("Federation"), True)
            if snap:
                b.screenshot(shots / f"federation-{run}.png")
            row(run, "go to Indices", b.page("Indices"))
            if snap and run == SHOT_RUNS[0]:
                b.screenshot(shots / "indices.png")
            row(run, "go to Training", b.page("Training"))
            row(run, "go to Federation", b.page("Federation"))
            row(run, "go to Recommend", b.page("Recommend"))
        problems = b.console_problems()
        if problems:
            raise RuntimeError(f"browser console: {problems[:3]}")
    return rows
