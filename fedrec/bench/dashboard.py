"""Dashboard latency on a large catalogue: page interactions timed through streamlit's AppTest.

AppTest executes the page script exactly as the server does (same process, same caches) but
without a browser, so the figures are server-side script time: what the user waits for before the
browser starts drawing.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import yaml

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
            opts = at.selectbox(key="rec_user").options
            for u in (opts[17 % len(opts)], opts[len(opts) // 2], opts[-1]):
                timed(f"Recommend: choose user {u}", lambda u=u: at.selectbox(key="rec_user").set_value(u).run())
            timed("Recommend: K slider 10 -> 40", lambda: at.slider(key="rec_k").set_value(40).run())
            timed("Recommend: include seen items", lambda: at.toggle(key="rec_excl").set_value(False).run())
            timed("switch to Training (first: imports the chart library)", lambda: at.sidebar.radio(key="page").set_value("Training").run())
            timed("switch to Indices", lambda: at.sidebar.radio(key="page").set_value("Indices").run())
            timed("switch to Federation (first: evaluates every client)",
                  lambda: at.sidebar.radio(key="page").set_value("Federation").run())
            timed("switch to Recommend", lambda: at.sidebar.radio(key="page").set_value("Recommend").run())
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        return rows, {"items": n_items, "users": n_users, "data_s": t_data, "train_s": t_train}
