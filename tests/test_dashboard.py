"""Dashboard pages through streamlit.testing's AppTest, on a small trained run and real indices."""
import os
from pathlib import Path

import numpy as np
import pytest

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")
DESCRIPTIONS = {"Recommend": "A user's top-K from the selected run, why each item is there, and the re-ranked "
                             "list with long-tail and novelty targets."}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    import yaml
    from federation.runs.jobs import train
    from recsys.synth import SynthSpec, write_catalogue
    root = tmp_path_factory.mktemp("dash")
    write_catalogue(SynthSpec(n_users=60, n_items=40, mean_activity=10, seed=3), root / "synth", images=True,
                    progress=False, workers=1)
    cfg = {"name": "d", "data": {"path": str(root / "synth")}, "model": {"mode": "explicit", "hidden": [16, 8]},
           "federation": {"rounds": 4, "fraction": 0.5}, "eval": {"every": 2}}
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    train(root / "cfg.yaml", root / "runs" / "good", progress=False)
    cfg["federation"]["strategy"] = "fedavg"                                  # a global model, same split
    (root / "cfg-global.yaml").write_text(yaml.safe_dump(cfg))
    train(root / "cfg-global.yaml", root / "runs" / "global", progress=False)
    cfg["federation"]["strategy"] = "persona"                                 # a federated user embedder
    (root / "cfg-persona.yaml").write_text(yaml.safe_dump(cfg))
    train(root / "cfg-persona.yaml", root / "runs" / "persona", progress=False)
    # a broken run next to the good one: the pages must keep working
    bad = root / "runs" / "broken"
    bad.mkdir()
    (bad / "manifest.json").write_text('{"format": 99, "status": "completed"}')
    with open(root / "runs" / "good" / "metrics.jsonl", "a") as f:
        f.write('{"round": 5, "lo')                                           # a torn last line
    from retrieval.build import BuildOptions, content_index
    from retrieval.embedders import get_embedder
    from federation.runs.jobs import load_run
    run = load_run(root / "runs" / "good")
    content_index(run.data, get_embedder(), BuildOptions(progress=False)).save(root / "indices" / "good" / "content",
                                                                              {"run": "good"})
    os.environ["FEDREC_RUNS"], os.environ["FEDREC_INDICES"] = str(root / "runs"), str(root / "indices")
    os.environ["FEDREC_JOBS"] = str(root / "jobs")
    yield root
    for k in ("FEDREC_RUNS", "FEDREC_INDICES", "FEDREC_JOBS"):
        os.environ.pop(k)


def _app():
    from streamlit.testing.v1 import AppTest
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    return at


def _page(at, name):
    at.sidebar.radio(key="page").set_value(name).run()
    assert not at.exception, at.exception
    return at


def _user_pos(env, run, user):
    from federation.runs.jobs import load_run
    return load_run(env / "runs" / run).data.user_index(user)


def test_recommend_page_users_and_k_change_results(env):
    at = _app()
    at.sidebar.selectbox(key="run").set_value("good").run()
    assert at.caption[0].value == DESCRIPTIONS["Recommend"]
    recs = lambda: at.dataframe[0].value              # noqa: E731
    first = recs()
    assert len(first) == 10
    at.selectbox(key="rec_user_good").set_value(_user_pos(env, "good", "7")).run()
    other = recs()
    assert list(other["title"]) != list(first["title"])        # different users, different lists
    at.slider(key="rec_k").set_value(4).run()
    shown = recs()
    assert len(shown) == 4 and shown["why"].str.startswith("like ").all()
    assert shown["predicted rating (1–5)"].between(1, 5).all()          # clipped to the rating scale
    assert shown["picture"].str.startswith("data:image/").all()          # thumbnails inline
    at.toggle(key="rec_excl").set_value(False).run()
    both = recs()
    for _, row in both.iterrows():                                       # never explained by itself
        assert f"(item {row['item']})" not in row["why"]


def test_search_page_query_changes_results(env):
    at = _page(_app(), "Search")
    at.sidebar.selectbox(key="run").set_value("good").run()
    at.text_input(key="search_q_good").input("red round").run()
    a = at.dataframe[1].value["title"].tolist()
    at.text_input(key="search_q_good").input("blue striped").run()
    got = at.dataframe[1].value
    assert a and got["title"].tolist() and a != got["title"].tolist()
    assert {"item", "similarity", "seen", "why"} <= set(got.columns)
    at.sidebar.selectbox(key="run").set_value("global").run()            # another run: its own query box
    assert at.text_input(key="search_q_global").value == ""


def test_gain_by_activity_and_biggest_changes_by_hand():
    import pandas as pd

    from dashboard import views

    gain = pd.DataFrame({"user": list("abcdefgh"), "history": [1, 2, 3, 4, 5, 6, 7, 8],
                         "gain": [0.1, -0.2, 0.0, 0.3, -0.1, 0.2, 0.05, -0.05]})
    t = views.gain_by_activity(gain)
    assert t["clients"].tolist() == [2, 2, 2, 2]
    assert t["history"].tolist() == ["1-2", "3-4", "5-6", "7-8"]
    assert t["mean gain"].tolist() == [-0.05, 0.15, 0.05, 0.0]
    assert t["better"].tolist() == ["50%", "50%", "50%", "50%"] and t["worse"].tolist()[1] == "0%"
    up, down = views.biggest_changes(gain, n=2)
    assert up["user"].tolist() == ["d", "f"] and down["user"].tolist() == ["b", "e"]


def test_training_federation_indices_pages(env):
    at = _page(_app(), "Training")
    table = at.dataframe[0].value
    assert set(table["run"]) == {"good", "global", "persona", "broken"}
    assert "not supported" in table.set_index("run").loc["broken", "problem"]
    at.multiselect(key="train_runs").set_value(["good"]).run()
    assert any("unreadable line" in w.value for w in at.warning)        # the torn line is reported
    assert len(at.get("arrow_vega_lite_chart")) >= 3 or len(at.get("vega_lite_chart")) >= 3
    at = _page(at, "Federation")
    at.sidebar.selectbox(key="run").set_value("good").run()
    assert not at.exception, at.exception
    assert len(at.dataframe[0].value) == 10 and "rmse" in at.dataframe[0].value
    assert at.selectbox(key="fed_ref_good").value == "global"
    assert "clients served better by good than by global" in at.metric[0].label
    by_activity = at.dataframe[1].value
    assert by_activity["clients"].sum() > 10
    assert list(by_activity["activity"]) == ["lightest 25%", "2nd 25%", "3rd 25%", "heaviest 25%"]
    gains, losses = at.dataframe[2].value, at.dataframe[3].value
    assert (gains["gain"] > 0).all() and (losses["gain"] < 0).all()
    assert list(gains["gain"]) == sorted(gains["gain"], reverse=True)
    assert any("plain messages: the server saw each sampled client's item ids" in i.value for i in at.info)
    at = _page(at, "Indices")
    assert at.dataframe[0].value["kind"].tolist() == ["content"]


# -- a real browser against a real server ----------------------------------------------------------

def _chart_specs(at) -> list[dict]:
    import json as _json
    return [_json.loads(c.proto.spec) for c in at.get("vega_lite_chart")]


def _axis_problems(spec: dict) -> list[str]:
    """A chart whose x axis has no title, or plots a row index / bin number instead of a value."""
    enc = spec.get("encoding", {})
    x = enc.get("x", {})
    problems = []
    if not x.get("title"):
        problems.append(f"x axis without a title: {x}")
    if x.get("field") in ("index", "bin", "bins", "level_0") or (x.get("type") == "ordinal" and "bin" in str(x)):
        problems.append(f"x axis is an index: {x}")
    if not enc.get("y", {}).get("title"):
        problems.append("y axis without a title")
    return problems


def test_every_page_runs_and_every_chart_axis_reads_in_values(env):
    """Every page in turn (AppTest): no exception, a description line, and every chart's axes carry
    titles and plot values (bin edges, rounds), never bin numbers or row indices."""
    at = _app()
    at.sidebar.selectbox(key="run").set_value("good").run()
    seen = 0
    for page in ("Recommend", "Search", "Training", "Federation", "Indices"):
        at = _page(at, page)
        assert at.header[0].value == page and at.caption[0].value, page
        for spec in _chart_specs(at):
            assert not _axis_problems(spec), (page, _axis_problems(spec))
            seen += 1
    assert seen >= 5                          # Training: loss, RMSE, MAE, clients, bytes; Federation: 2+


@pytest.mark.e2e
def test_dashboard_in_headless_chromium_walks_every_page(env):
    """The real server in a real browser (1400 x 1000): every page and its main interactions, with no
    Python exception on the page and no error or warning in the browser console (Vega-Lite reports
    bad chart specs there); the model's top items are on screen; a screenshot of each page is kept
    under test-artifacts/."""
    pytest.importorskip("selenium")
    from fedrec.bench.browser import DashboardBrowser, chromium_paths

    if chromium_paths() is None:
        pytest.skip("Debian chromium + chromium-driver are not installed (`make test` installs them as root)")
    out = Path(os.environ.get("FEDREC_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts"))
    with DashboardBrowser(env / "runs", env / "indices", jobs=env / "jobs") as b:
        b.open()
        port = b.port

        def clean(where):
            assert not b.exceptions(), (where, b.exceptions())
            assert not b.console_problems(), (where, b.console_problems())
        clean("first load")
        b.choose("Run", "good")
        b.choose("User", "7 ", "7 —")
        assert "Top 10 for user 7" in b.body()
        from federation.runs.jobs import load_run
        run = load_run(env / "runs" / "good")
        ids, _ = run.model().recommend(__import__("numpy").array([run.data.user_index("7")]), 3, exclude=run.train)
        cells = b.cells()
        for i in ids[0]:
            assert run.data.title(int(i)) in cells                 # the model's top items are on screen
        b.slider_keys("K", -3)
        assert "Top 7 for user 7" in b.body()
        b.toggle("Exclude items the user has seen")
        clean("Recommend")
        b.screenshot(out / "dashboard-recommend.png")
        b.page("New user")
        b.type_text("Search the catalogue by title", "red")
        b.click_button("Add this item")
        assert "Top 10 after 1 pick(s)" in b.body() and any("which you picked" in c for c in b.cells())
        clean("New user")
        b.screenshot(out / "dashboard-new-user.png")
        b.page("Search")
        b.type_text("Query", "red round")
        assert "For this user" in b.body() and "Not personalized" in b.body()
        clean("Search")
        for page in ("Training", "Federation", "Indices"):
            b.page(page)
            assert page in b.body()
            clean(page)
            b.screenshot(out / f"dashboard-{page.lower()}.png")
        assert "Deploy" not in b.body()                             # the toolbar's deploy button is hidden
        server = b.server
    import socket
    assert server.poll() is not None
    with socket.socket() as s:                       # the server is really gone: nothing listens any more
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_launch_progress_and_cancel_a_background_job(env, tmp_path):
    import time
    import yaml
    from dashboard import jobs as J
    cfg = yaml.safe_load((env / "cfg.yaml").read_text())
    cfg["federation"]["rounds"] = 2000                    # long enough to cancel mid-run
    cfg["name"] = "bg"
    (tmp_path / "long.yaml").write_text(yaml.safe_dump(cfg))
    jobs_dir = tmp_path / "jobs"
    job = J.launch(tmp_path / "long.yaml", tmp_path / "runs", jobs_dir)
    deadline = time.time() + 120
    while (j := J.list_jobs(jobs_dir)[0]).rounds_done < 3:
        assert j.status == "running", J.tail(j.log)
        assert time.time() < deadline
        time.sleep(0.5)
    assert j.rounds_total == 2000 and 0 < j.progress < 1
    J.cancel(j, jobs_dir)
    j = J.list_jobs(jobs_dir)[0]
    assert j.status == "cancelled" and j.rounds_done < 2000
    with pytest.raises(Exception, match="run directory exists"):
        J.launch(tmp_path / "long.yaml", tmp_path / "runs", jobs_dir)
    with pytest.raises(Exception, match="unknown key"):
        (tmp_path / "bad.yaml").write_text("federation: {roundz: 3}")
        J.launch(tmp_path / "bad.yaml", tmp_path / "runs", jobs_dir)


def test_recommend_page_preselects_a_ranker():
    """The Recommend page preselects the first implicit (ranking) run: a rating model's top-K favours
    items with a few high ratings. Without one it keeps the first run."""
    from dashboard.views import RunInfo, preferred_run
    runs = [RunInfo(Path(n), n, "completed", m, "personalfr", 10, {}) for n, m in
            (("a-explicit", "explicit"), ("b-explicit", "explicit"), ("c-implicit", "implicit"), ("d-implicit", "implicit"))]
    assert preferred_run(runs, "implicit") == 2
    assert preferred_run(runs[:2], "implicit") == 0
    assert preferred_run(runs, None) == 0


def test_run_table_and_charts_put_the_headline_metric_first():
    """The Training page's table and charts lead with RMSE (ratings) or NDCG (ranking), and leave the
    count columns out, whatever order evaluate_model returned the metrics in."""
    from dashboard.views import RunInfo, metric_columns, run_table
    runs = [RunInfo(Path("e"), "e", "completed", "explicit", "personalfr", 3, {"test_mae": 0.7, "test_rmse": 0.9}),
            RunInfo(Path("i"), "i", "completed", "implicit", "personalfr", 3,
                    {"test_recall@10": 0.2, "test_ndcg@10": 0.3, "test_hit@10": 0.8}, None),
            RunInfo(Path("b"), "b", "unknown", None, None, None, {}, "unreadable manifest")]
    df = run_table(runs)
    assert list(df.columns) == ["run", "dataset", "status", "mode", "strategy", "rounds", "test_rmse", "test_ndcg@10",
                                "test_mae", "test_recall@10", "test_hit@10", "problem"]
    assert df["mode"].tolist() == ["explicit", "implicit", ""]                      # no None cells
    assert df["problem"].tolist() == ["", "", "unreadable manifest"]
    cols = ["round", "loss", "valid_recall@10", "valid_ndcg@10", "valid_n_users", "valid_n", "test_rmse", "lr"]
    assert metric_columns(cols) == ["test_rmse", "valid_ndcg@10", "valid_recall@10"]


def test_a_data_only_index_serves_every_run_on_the_same_data():
    """Summaries and history entries come from a user's data, not from a model: a run without its own
    summaries index uses one built by another run on the same dataset (never one on other data); a
    model-derived kind (items) needs its own run."""
    from dashboard.views import index_for
    ixs = [{"kind": "summaries", "run": "explicit", "dataset_checksum": "D1", "path": "a"},
           {"kind": "items", "run": "explicit", "dataset_checksum": "D1", "path": "b"},
           {"kind": "summaries", "run": "other-data", "dataset_checksum": "D2", "path": "c"}]
    calls = []

    def checksum(value):
        return lambda: calls.append(value) or value

    assert index_for(ixs, "summaries", "explicit", checksum("D1"))["path"] == "a" and calls == []   # own: no hashing
    assert index_for(ixs, "summaries", "implicit", checksum("D1"))["path"] == "a"
    assert index_for(ixs, "summaries", "implicit", checksum("D3")) is None
    assert index_for(ixs, "items", "implicit", checksum("D1")) is None
    assert index_for(ixs, "summaries", "implicit") is None


def test_privacy_line_says_how_a_run_protected_its_clients():
    from dashboard.views import privacy_line

    fed = {"strategy": "personalfr"}
    assert privacy_line({"federation": fed}, {}).startswith("plain messages")
    sec = privacy_line({"federation": fed, "privacy": {"secure_aggregation": True, "min_clients": 3}}, {})
    assert sec == "secure aggregation: the server saw only per-round sums over at least 3 clients"
    dp = privacy_line({"federation": fed, "privacy": {"secure_aggregation": True, "dp": True}},
                      {"epsilon": 7.994, "delta": 1e-4})
    assert dp.endswith("differential privacy, epsilon 7.99 at delta 0.0001")
    assert privacy_line({"federation": {"strategy": "local"}}, {}).startswith("local: nothing leaves")


@pytest.fixture(scope="module")
def rank_env(tmp_path_factory):
    """An implicit run, federated EASE and a re-ranker over them, in their own runs directory."""
    import yaml
    from federation.ranking.jobs import train_ease
    from federation.ranking.reranker import train_ranker
    from federation.runs.jobs import train
    from recsys.synth import SynthSpec, write_catalogue
    root = tmp_path_factory.mktemp("dash-rank")
    write_catalogue(SynthSpec(n_users=120, n_items=50, mean_activity=12, seed=4), root / "synth", images=False,
                    progress=False)

    def w(name, cfg):
        (root / name).write_text(yaml.safe_dump(cfg))
        return root / name
    train(w("f.yaml", {"name": "f", "data": {"path": str(root / "synth")},
                       "model": {"mode": "implicit", "hidden": [16, 8], "input_norm": "l2"},
                       "federation": {"rounds": 4, "fraction": 0.5}, "eval": {"every": 0}}), root / "runs" / "imp",
          progress=False)
    train_ease(w("e.yaml", {"name": "e", "data": {"path": str(root / "synth")}, "ease": {"lam": 20.0}}),
               root / "runs" / "ease")
    train_ranker(w("r.yaml", {"name": "r", "sources": {"personalfr": str(root / "runs" / "imp"),
                                                       "ease": str(root / "runs" / "ease"), "content": False},
                              "candidates": {"per_source": 10}, "training": {"nodes": 2, "rounds": 2,
                                                                             "min_data_in_leaf": 10}}),
                 root / "runs" / "ranker", progress=False)
    return root


def test_recommend_page_rerank_sliders_show_asked_and_reached(rank_env, monkeypatch):
    monkeypatch.setenv("FEDREC_RUNS", str(rank_env / "runs"))
    monkeypatch.setenv("FEDREC_INDICES", str(rank_env / "indices"))
    at = _app()
    assert at.sidebar.selectbox(key="run").value == "imp"                 # EASE / ranker runs are not listed
    assert len(at.sidebar.selectbox(key="run").options) == 1
    assert at.selectbox(key="rr_name").value == "ranker"
    assert "long tail" not in at.dataframe[0].value.columns
    before = at.dataframe[-1].value
    assert len(before) == 10
    start = at.slider(key="rr_tail").value                     # what the re-ranker's own list reaches
    ask = round(min(1.0, start + 0.3), 2)
    assert start == pytest.approx((before["long tail"] == "yes").mean(), abs=0.01)
    at.slider(key="rr_tail").set_value(ask).run()
    assert not at.exception, at.exception
    report = at.dataframe[-2].value.set_index("target")
    assert list(report.index) == ["tail"] and report.loc["tail", "asked"] == ask
    after = at.dataframe[-1].value
    assert report.loc["tail", "list"] == pytest.approx((after["long tail"] == "yes").mean())
    assert report.loc["tail", "list"] > start                  # the list moved towards the target


def test_chart_helpers_by_hand():
    """Histograms carry real bin edges; the worst-served table says how many tie at the floor; scores
    read as ratings (clipped) or as the share of the catalogue outranked; a run keeps its colour
    whatever else is compared; bytes are charted in GB and losses only where a log axis can show them."""
    import numpy as np
    import pandas as pd

    from dashboard import views
    from dashboard.views import RunInfo

    h = views.histogram([1, 2, 2, 3, 10, np.nan], bins=3)
    assert h["start"].tolist() == [1.0, 4.0, 7.0] and h["end"].tolist() == [4.0, 7.0, 10.0]
    assert h["clients"].tolist() == [4, 0, 1]
    per = pd.DataFrame({"user": list("abcdef"), "history": [5, 9, 1, 7, 3, 2], "ndcg@10": [0, 0, 0, 0.5, 0, 0.2]})
    worst, note = views.served_worst(per, n=2)
    assert worst["user"].tolist() == ["b", "a"]                        # tied at 0: the longest histories
    assert note.startswith("4 of 6 clients (67%) are at ndcg@10 = 0;")
    rm = pd.DataFrame({"user": list("abc"), "history": [1, 2, 3], "rmse": [0.5, 1.5, 1.5]})
    worst, note = views.served_worst(rm, n=2)
    assert worst["user"].tolist() == ["c", "b"] and note == ""         # RMSE: highest is worst
    assert views.readable_scores("explicit", np.array([5.47, 0.2, 3.3]), None, (1.0, 5.0)).tolist() == [5.0, 1.0, 3.3]
    cat = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    assert views.readable_scores("implicit", np.array([0.5, 0.3]), cat, (1.0, 5.0)).tolist() == [100.0, 50.0]
    assert views.score_label("explicit", (1.0, 5.0)) == "predicted rating (1–5)"
    c = views.run_colors(["b", "a", "c"])
    assert c == views.run_colors(["c", "a", "b"]) and c["a"] == views.RUN_PALETTE[0] and len(set(c.values())) == 3
    df = pd.DataFrame({"round": [1, 2, 1], "run": ["a", "a", "b"], "cum_bytes_up": [2e9, 4e9, 1e9],
                       "loss": [0.5, 0.0, 500.0]})
    assert views.series_frame(df, "cum_bytes_up")["value"].tolist() == [2.0, 4.0, 1.0]
    assert views.series_frame(df, "loss")["value"].tolist() == [0.5, 500.0]
    assert views.series_title("cum_bytes_up") == "sent up so far (GB)"
    assert views.series_title("valid_ndcg@10") == "NDCG@10 on valid" and views.series_title("test_rmse") == "RMSE on test"
    runs = [RunInfo(Path(n), n, "completed", m, "personalfr", 3, {}, dataset=d)
            for n, m, d in (("e", "explicit", "ml-100k"), ("i", "implicit", "ml-100k"), ("s", "implicit", "synth"))]
    assert views.mixed_runs(runs[1:2]) == ""
    assert "modes (explicit, implicit" in views.mixed_runs(runs[:2]) and "datasets (ml-100k, synth)" in views.mixed_runs(runs)
    assert runs[0].label == "e · ml-100k · explicit · personalfr"
    assert views.thumbnail_uri("") == views.thumbnail_uri("/no/such.png") == views.PLACEHOLDER_URI
    vecs = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.6, 0.8]])
    # item 0: closest ref is itself (never used) -> item 1; item 2 -> 3; weights can overrule similarity
    assert views.nearest_reference(vecs, [0, 2], [0, 1, 3]).tolist() == [1, 2]
    assert views.nearest_reference(vecs, [0], [1, 3], weights=[0.1, 1.0]).tolist() == [1]
    assert views.nearest_reference(vecs, [0], [0]).tolist() == [-1]               # only itself: none


def test_per_client_evaluation_is_cached_in_the_run_directory(env, monkeypatch):
    """The Federation page's per-client evaluation is computed once and kept beside the run (keyed by
    its checkpoint); a later visit reads it, a new checkpoint recomputes it."""
    from dashboard import views
    from federation.runs.jobs import load_run

    run = load_run(env / "runs" / "good")
    cache = env / "runs" / "good" / views.PER_CLIENT_CACHE
    import shutil
    shutil.rmtree(cache, ignore_errors=True)
    first = views.per_user_metric_cached(run)
    assert (cache / "per-client-valid.csv").exists()
    calls = []
    real = views.per_user_metric
    monkeypatch.setattr(views, "per_user_metric", lambda *a: calls.append(a) or real(*a))
    again = views.per_user_metric_cached(run)
    assert calls == [] and again.equals(first)
    meta = cache / "per-client-valid.json"
    meta.write_text(meta.read_text().replace('"checkpoint": "', '"checkpoint": "0'))     # another checkpoint
    views.per_user_metric_cached(run)
    assert len(calls) == 1


def test_new_user_page_updates_the_list_after_each_pick(env):
    at = _app()
    at.sidebar.selectbox(key="run").set_value("good").run()
    at = _page(at, "New user")
    assert any("add it" in i.value for i in at.info)                   # nothing picked yet: says what to do
    at.text_input(key="new_q_good").input("red").run()
    first = at.selectbox(key="new_match_good").value
    at.button(key="new_add_good").click().run()
    assert not at.exception, at.exception
    one = at.dataframe[0].value
    from federation.runs.jobs import load_run
    data = load_run(env / "runs" / "good").data
    assert len(one) == 10 and str(data.item_ids[first]) not in one["item"].tolist()
    assert one["why"].str.contains(f"(item {data.item_ids[first]}), which you picked", regex=False).all()
    at.text_input(key="new_q_good").input("blue").run()
    at.button(key="new_add_good").click().run()
    two = at.dataframe[0].value
    assert list(two["item"]) != list(one["item"])                      # the second pick moves the list
    at.button(key="new_clear_good").click().run()
    assert not at.dataframe and any("add it" in i.value for i in at.info)


def test_new_user_page_of_a_persona_run_scores_with_its_embedder_and_picks_by_picture(env):
    """An image catalogue shows the matches as pictures with an Add button each; a persona run scores
    the picks with its user embedder (fold-in 0 by default) and says so."""
    from federation.runs.jobs import load_run
    from federation.runs.onboard import new_user_scores

    at = _app()
    at.sidebar.selectbox(key="run").set_value("persona").run()
    at = _page(at, "New user")
    at.text_input(key="new_q_persona").input("red").run()
    pics = [b for b in at.button if b.key.startswith("new_pic_persona_")]
    assert pics and len(at.get("image")) == len(pics)
    pics[0].click().run()
    assert not at.exception, at.exception
    picked = int(pics[0].key.rsplit("_", 1)[1])
    assert any("federated user embedder" in c.value for c in at.caption)
    shown = at.dataframe[0].value
    run = load_run(env / "runs" / "persona")
    s = new_user_scores(run.fed, np.array([picked]), np.array([float(run.data.ratings.data.max())]))
    assert list(shown["item"]) == [str(run.data.item_ids[i]) for i in np.argsort(-s, kind="stable")[:10]]
