"""FAISS indices, item vectors that reproduce model scores, summaries, LLM backend, retrieval CLI."""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pandas as pd
import pytest

from recsys.errors import ManifestError
from retrieval.index import IndexError_, VectorIndex, exact_topk, recall_at_k


@pytest.fixture(scope="module")
def vecs():
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((20, 16))
    x = centers[rng.integers(0, 20, 3000)] + 0.3 * rng.standard_normal((3000, 16))
    return x.astype(np.float32), (np.arange(3000) * 7 + 11).astype(np.int64)


def test_exact_topk_and_recall_by_hand():
    q = np.array([[1.0, 0.0]], np.float32)
    v = np.array([[0.5, 0], [2, 0], [0, 1], [1, 1]], np.float32)
    ids = np.array([10, 20, 30, 40])
    assert exact_topk(q, v, ids, 2, "ip", batch=3).tolist() == [[20, 40]]     # streamed over 2 batches
    # squared L2 from q: 0.25, 1, 2, 1 -> 10 first, then the tie 20/40 resolved by id order
    assert exact_topk(q, v, ids, 2, "l2", batch=1).tolist() == [[10, 20]]
    assert recall_at_k(np.array([[1, 2, 3]]), np.array([[3, 4, 1]])) == pytest.approx(2 / 3)


@pytest.mark.parametrize("factory", ["Flat", "IVF32,Flat", "HNSW16"])
def test_index_add_search_remove_roundtrip(tmp_path, vecs, factory):
    x, ids = vecs
    ix = VectorIndex.create(16, factory, "ip")
    ix.train(x)
    ix.add(ids, x)
    res = ix.search(x[:100], 10, nprobe=32, ef_search=200)
    assert recall_at_k(res.ids, exact_topk(x[:100], x, ids, 10)) >= 0.95
    # restricted to an id range
    r = ix.search(x[:5], 5, nprobe=32, id_range=(11, 11 + 7 * 50))
    found = r.ids[r.ids >= 0]          # HNSW's graph walk may find fewer than k inside a narrow range
    assert len(found) >= 5 and ((found >= 11) & (found < 11 + 7 * 50)).all()
    if factory != "HNSW16":            # exhaustive within the range
        assert (r.ids >= 0).all()
    info = ix.remove(ids[:10])
    assert info["removed"] == 10 and info["rebuilt"] == (factory == "HNSW16")
    assert ix.count == 2990 and not ix.contains(ids[:10]).any()
    assert not np.isin(ix.search(x[:10], 5, nprobe=32, ef_search=200).ids, ids[:10]).any()
    np.testing.assert_allclose(ix.reconstruct(ids[[20, 500, 2999]]), x[[20, 500, 2999]], atol=1e-6)
    ix.save(tmp_path / "ix", {"kind": "test", "run_checkpoint": "abc"})
    back = VectorIndex.load(tmp_path / "ix", {"kind": "test"})
    assert back.count == 2990 and back.dim == 16
    np.testing.assert_array_equal(back.search(x[:20], 5, nprobe=32, ef_search=200).ids,
                                  ix.search(x[:20], 5, nprobe=32, ef_search=200).ids)


def test_index_bad_input(tmp_path, vecs):
    x, ids = vecs
    ix = VectorIndex.create(16, "Flat")
    with pytest.raises(IndexError_, match="shape"):
        ix.add(ids[:5], x[:5, :8])
    with pytest.raises(IndexError_, match="one id per vector"):
        ix.add(ids[:4], x[:5])
    ix.add(ids[:5], x[:5])
    with pytest.raises(IndexError_, match="collide"):
        ix.add(ids[4:6], x[4:6])
    with pytest.raises(IndexError_, match="twice"):
        ix.add(np.array([99, 99]), x[:2])
    with pytest.raises(IndexError_, match="NaN"):
        ix.add(np.array([1000]), np.full((1, 16), np.nan, np.float32))
    with pytest.raises(IndexError_, match="unknown id"):
        ix.remove(np.array([123456]))
    with pytest.raises(IndexError_, match="cannot build"):
        VectorIndex.create(16, "NotAFactory")
    with pytest.raises(IndexError_, match="trained"):
        VectorIndex.create(16, "IVF8,Flat").add(ids[:2], x[:2])
    assert ix.count == 5                     # failed calls changed nothing


def test_saved_index_refuses_corruption_and_mismatch(tmp_path, vecs):
    x, ids = vecs
    ix = VectorIndex.create(16, "Flat")
    ix.add(ids, x)
    d = tmp_path / "ix"
    ix.save(d, {"kind": "items", "run_checkpoint": "run-A", "dim_note": 1})
    with pytest.raises(ManifestError, match="run_checkpoint.*rebuild it with `fedrec index build"):
        VectorIndex.load(d, {"run_checkpoint": "run-B"})                  # says what to do, too
    with pytest.raises(ManifestError, match="dim"):
        VectorIndex.load(d, {"dim": 32})
    f = d / "index.faiss"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(ManifestError, match="checksum"):
        VectorIndex.load(d)
    with pytest.raises(ManifestError, match="no such index"):
        VectorIndex.load(tmp_path / "nope")


def test_failed_save_leaves_existing_index_untouched(tmp_path, vecs):
    x, ids = vecs
    d = tmp_path / "ix"
    ix = VectorIndex.create(16, "Flat")
    ix.add(ids[:10], x[:10])
    ix.save(d)
    before = {p.name: p.read_bytes() for p in d.iterdir()}

    def boom(path):
        raise RuntimeError("disk full")

    ix.add(ids[10:20], x[10:20])
    with pytest.raises(RuntimeError):
        ix.save(d, files={"extra.txt": boom})
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["ix"]          # no temp dirs left behind


def test_item_vectors_reproduce_model_scores(tiny_data):
    from federation.simulation import FederatedAutoencoder, Federation, FedSettings
    from recsys.models.autoencoder import AEShape
    from recsys.splits import ratio_split

    train = ratio_split(tiny_data, seed=1).matrix(tiny_data, "train")
    fed = Federation(AEShape(tiny_data.n_items, 16, 8, mode="implicit"), FedSettings(rounds=3, fraction=0.5), train)
    for _ in range(3):
        fed.run_round()
    m = FederatedAutoencoder(fed)
    users = np.arange(12)
    U, V = m.user_vectors(users), m.item_vectors()
    np.testing.assert_allclose(U @ V.T, m.score(users), atol=1e-5)
    ix = VectorIndex.create(V.shape[1], "Flat", "ip")
    ix.add(np.arange(len(V)), V)
    ids, _ = m.recommend(users, 5)
    np.testing.assert_array_equal(ix.search(U, 5).ids, ids)


# -- summaries ------------------------------------------------------------------------------------

ITEMS = pd.DataFrame({"title": ["A", "B", "C", "D"], "text": [""] * 4, "image_path": [""] * 4,
                      "categories": ["Drama", "Drama|War", "Comedy", "Comedy"]})


def _hist(user="u1", ratings=(5, 4, 1, 2)):
    from retrieval.summaries import UserHistory
    return UserHistory(user, np.array([0, 1, 2, 3]), np.array(ratings, float), np.array([1, 2, 3, 4]))


def test_user_facts_and_text_by_hand():
    from retrieval.summaries import render, user_facts
    f = user_facts(_hist(), ITEMS)
    assert f["n"] == 4 and f["mean"] == 3.0 and f["explicit"]
    assert f["favourite_categories"] == ["Comedy", "Drama", "War"]
    assert f["category_mean"] == {"Comedy": 1.5, "Drama": 4.5}             # categories with >= 2 ratings
    assert f["best_categories"] == ["Drama", "Comedy"] and f["liked"][0] == "A"
    assert f["disliked"] == ["C", "D"]
    text = render(f)
    assert "mean 3.0/5" in text and "Drama 4.5" in text and "Comedy 1.5" in text


def test_refresh_regenerates_only_stale(tmp_path):
    from retrieval.summaries import SummaryStore, TemplateGenerator, refresh
    gen = TemplateGenerator(ITEMS)
    store, n = refresh(SummaryStore(), [_hist("u1"), _hist("u2", (1, 1, 5, 5))], gen)
    assert n == 2
    store.save(tmp_path / "s.jsonl")
    store = SummaryStore.load(tmp_path / "s.jsonl")
    store2, n = refresh(store, [_hist("u1"), _hist("u2", (1, 1, 5, 4))], gen)
    assert n == 1 and store2.entries["u1"] == store.entries["u1"]
    assert store2.entries["u2"].text != store.entries["u2"].text
    (tmp_path / "bad.jsonl").write_text('{"format": 1}\n{"user": "x", "te')
    with pytest.raises(ManifestError, match="corrupt"):
        SummaryStore.load(tmp_path / "bad.jsonl")


class _FakeLLM(BaseHTTPRequestHandler):
    mode = "ok"
    prompts: list = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).prompts.append(body["messages"][0]["content"])
        if type(self).mode == "junk":
            payload = b"<html>not json</html>"
        else:
            payload = json.dumps({"choices": [{"message": {"content": "Loves dramas, dislikes comedies."}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *a):
        pass


@pytest.fixture
def fake_llm():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _FakeLLM)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    _FakeLLM.prompts, _FakeLLM.mode = [], "ok"
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()


def test_chat_generator_ok_junk_and_down(fake_llm):
    from retrieval.summaries import ChatConfig, ChatGenerator, SummaryError, SummaryStore, refresh
    cfg = ChatConfig(fake_llm, "local-model", "Summarize: {facts}\n{history}", timeout=2, retries=1, concurrency=2)
    store, n = refresh(SummaryStore(), [_hist("u1"), _hist("u2")], ChatGenerator(ITEMS, cfg))
    assert n == 2 and store.entries["u1"].text == "Loves dramas, dislikes comedies."
    assert store.entries["u1"].generator == "chat:local-model"
    assert '"mean": 3.0' in _FakeLLM.prompts[0] and "- A: 5" in _FakeLLM.prompts[0]
    _FakeLLM.mode = "junk"
    with pytest.raises(SummaryError, match="unusable reply"):
        refresh(SummaryStore(), [_hist("u3")], ChatGenerator(ITEMS, cfg))
    down = ChatConfig("http://127.0.0.1:9/v1", "m", "{facts}", timeout=1, retries=1)
    with pytest.raises(SummaryError, match="unreachable"):
        refresh(SummaryStore(), [_hist("u3")], ChatGenerator(ITEMS, down))


# -- the CLI end to end on a small trained run ------------------------------------------------------

@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    import yaml
    from federation.runs.jobs import train
    from recsys.synth import SynthSpec, write_catalogue
    root = tmp_path_factory.mktemp("retr")
    write_catalogue(SynthSpec(n_users=80, n_items=40, mean_activity=10, seed=2), root / "synth", images=False,
                    progress=False)
    cfg = {"name": "r", "data": {"path": str(root / "synth")}, "model": {"mode": "explicit", "hidden": [16, 8]},
           "federation": {"rounds": 4, "fraction": 0.5}, "eval": {"every": 0}}
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    return train(root / "cfg.yaml", root / "run", progress=False)


@pytest.mark.e2e
def test_index_cli_build_query_and_refusals(tmp_path, trained_run):
    from tests.test_cli import _one_error_line, run

    items = tmp_path / "items"
    r = run("index", "build", "items", str(trained_run), "--out", str(items), "--quiet")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["kind"] == "items" and m["count"] == 40 and m["recall@10"] == 1.0
    r = run("index", "query", str(items), "--run", str(trained_run), "--user", "5", "-k", "4")
    rec = run("recommend", str(trained_run), "--user", "5", "-k", "4")
    assert r.returncode == 0 and rec.returncode == 0
    # the index path and the model path give the same items in the same order
    assert [ln.split("(item ")[1].split(",")[0] for ln in r.stdout.splitlines()] == \
        [ln.split("(item ")[1].split(",")[0] for ln in rec.stdout.splitlines()[1:]]
    hist = tmp_path / "hist"
    r = run("index", "build", "histories", str(trained_run), "--out", str(hist), "--quiet")
    assert r.returncode == 0, r.stderr
    q = run("index", "query", str(hist), "--run", str(trained_run), "--user", "5", "--text", "a red round item", "-k", "3")
    assert q.returncode == 0 and q.stdout.count("(item ") == 3
    from federation.runs.jobs import load_run
    run_ = load_run(trained_run)
    own = {str(run_.data.item_ids[i]) for i in run_.train[run_.data.user_index("5")].indices}
    assert {ln.split("(item ")[1].split(",")[0] for ln in q.stdout.splitlines()} <= own   # only the user's own history
    summ = tmp_path / "summ"
    r = run("index", "build", "summaries", str(trained_run), "--out", str(summ), "--quiet")
    assert r.returncode == 0 and "80 (re)generated" in r.stderr
    r = run("index", "build", "summaries", str(trained_run), "--out", str(summ), "--quiet")
    assert r.returncode == 0 and "0 (re)generated, 80 unchanged" in r.stderr
    assert "embedded 0, reused 80 stored vectors" in r.stderr            # unchanged summaries are not re-embedded
    # refusals: wrong kind of source, a chat endpoint that is down (old summaries untouched), corruption
    before = (summ / "summaries.jsonl").read_bytes()
    tmpl = tmp_path / "prompt.txt"
    tmpl.write_text("Summarize {facts}")
    err = _one_error_line(run("index", "build", "summaries", str(trained_run), "--out", str(summ), "--quiet",
                              "--generator", "chat", "--chat-url", "http://127.0.0.1:9/v1", "--chat-model", "m",
                              "--prompt", str(tmpl), "--retries", "0", "--timeout", "1"))
    assert "unreachable" in err and (summ / "summaries.jsonl").read_bytes() == before
    assert "not a run directory" in _one_error_line(run("index", "build", "items", str(tmp_path), "--out", str(tmp_path / "x")))
    assert "unknown index kind" in _one_error_line(run("index", "build", "users", str(trained_run), "--out", str(tmp_path / "x")))
    f = items / "index.faiss"
    f.write_bytes(f.read_bytes()[:50])
    assert "checksum" in _one_error_line(run("index", "info", str(items)))
    assert "needs --run" in _one_error_line(run("index", "query", str(hist), "--user", "5", "--text", "x"))


@pytest.mark.e2e
def test_a_killed_index_or_summaries_build_leaves_the_old_one_usable(tmp_path, trained_run):
    """SIGKILL (FEDREC_FAULT_KILL=index@0) after every file is written but before the commit: the index
    directory is the previous build, whole and loadable; the next build replaces it."""
    import os
    import subprocess
    import sys

    from retrieval.index import VectorIndex

    def build(kind, out, env=None):
        return subprocess.run([sys.executable, "-m", "fedrec.cli", "index", "build", kind, str(trained_run), "--out",
                               str(out), "--quiet"], capture_output=True, text=True, env={**os.environ, **(env or {})})
    for kind in ("items", "summaries"):
        out = tmp_path / kind
        assert build(kind, out).returncode == 0
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        r = build(kind, out, {"FEDREC_FAULT_KILL": "index@0"})
        assert r.returncode == -9, r.stderr[-1000:]
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before          # untouched
        VectorIndex.load(out)                                                      # checksums verify
        assert build(kind, out).returncode == 0
        VectorIndex.load(out)
