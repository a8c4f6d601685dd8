"""Item content: open_clip extraction + cache manifest, `clip train`, graph propagation, the content-aware
job and the tasks it serves (search, preference, explanation), and their bad input."""
import json
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import yaml

from cli_inprocess import fedrec
from recsys.errors import ConfigError, ManifestError
from recsys.synth import SynthSpec, write_catalogue

def run(*args):
    return fedrec(*args)


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    d = tmp_path_factory.mktemp("data") / "mm"
    write_catalogue(SynthSpec(n_users=150, n_items=80, mean_activity=12, seed=2), d, images=True, workers=1,
                    progress=False)
    return d


@pytest.fixture(scope="module")
def clip_dir(catalogue, tmp_path_factory):
    from recsys.clip_train import ClipTrainSpec, train_clip
    from recsys.loaders import load_dataset

    out = tmp_path_factory.mktemp("models") / "clip"
    rep = train_clip(load_dataset(catalogue), catalogue, out, ClipTrainSpec(epochs=12, batch_size=16, lr=1e-3),
                     progress=False)
    return out, rep


def test_clip_train_writes_an_open_clip_local_dir(clip_dir):
    out, rep = clip_dir
    assert (out / "open_clip_config.json").exists() and (out / "open_clip_model.safetensors").exists()
    losses = [e["loss"] for e in rep["epochs"]]
    assert losses[-1] < losses[0] * 0.5, losses            # contrastive training makes progress
    assert rep["text_to_image"]["recall@1"] >= 3 * rep["chance"]["recall@1"]   # and generalises to held-out items
    assert rep["items_held_out"] == 10 and rep["chance"]["recall@1"] == pytest.approx(0.1)
    # plain open_clip loads it like any local model
    import open_clip
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{out}")
    assert model.text_projection.shape[1] == 128


def test_features_cache_reused_only_when_manifest_matches(catalogue, clip_dir, tmp_path):
    from recsys.features import ClipSpec, build_features, load_features
    from recsys.loaders import load_dataset

    ds = load_dataset(catalogue)
    spec = ClipSpec(model=str(clip_dir[0]))
    f1, m1 = build_features(ds, catalogue, spec, cache_root=tmp_path, progress=False)
    assert f1.shape == (80, 128) and m1["images_used"] == 80 and m1["images_missing"] == 0
    np.testing.assert_allclose(np.linalg.norm(f1, axis=1), 1, atol=1e-5)
    f2, m2 = build_features(ds, catalogue, spec, cache_root=tmp_path, progress=False)
    assert m2["seconds"] == m1["seconds"] and np.array_equal(f1, f2)          # reused, not recomputed
    # text-only fusion is a different cache entry with different vectors
    f3, _ = build_features(ds, catalogue, ClipSpec(model=str(clip_dir[0]), fusion="text"), cache_root=tmp_path,
                           progress=False)
    assert len(list(tmp_path.iterdir())) == 2 and not np.allclose(f1, f3)
    # a cache whose manifest does not match is refused on load and rebuilt by build_features
    cache = next(p for p in tmp_path.iterdir() if json.loads((p / "MANIFEST.json").read_text())["fusion"] == "mean")
    man = json.loads((cache / "MANIFEST.json").read_text())
    man["extractor"] = "open_clip:other-model:0"
    (cache / "MANIFEST.json").write_text(json.dumps(man))
    with pytest.raises(ManifestError, match="extractor"):
        load_features(cache, expect={"extractor": m1["extractor"]})
    f4, m4 = build_features(ds, catalogue, spec, cache_root=tmp_path, progress=False)
    assert m4["extractor"] == m1["extractor"] and np.allclose(f4, f1, atol=1e-5)


def test_changed_catalogue_invalidates_features_and_clip_model(catalogue, clip_dir, tmp_path):
    """Same model, same item ids, but an item image (or text) changed: the feature cache is rebuilt and
    `clip train --if-stale` no longer counts the model as current."""
    import shutil

    from recsys.clip_train import ClipTrainSpec, model_is_current
    from recsys.features import ClipSpec, build_features
    from recsys.loaders import load_dataset
    from recsys.synth import render_item_image

    d = tmp_path / "mm"
    shutil.copytree(catalogue, d, ignore=shutil.ignore_patterns("features"))
    ds = load_dataset(d)
    spec = ClipSpec(model=str(clip_dir[0]))
    f1, m1 = build_features(ds, d, spec, progress=False)
    assert model_is_current(ds, catalogue, clip_dir[0], ClipTrainSpec(epochs=12, batch_size=16, lr=1e-3))
    assert not model_is_current(ds, catalogue, clip_dir[0], ClipTrainSpec(epochs=13, batch_size=35, lr=3e-3))
    i = ds.item_index("3")
    render_item_image("red", "circle", "plain", "vase", "playful").save(d / "images" / "3.png")
    f2, m2 = build_features(ds, d, spec, progress=False)
    assert m2["catalogue_checksum"] != m1["catalogue_checksum"]
    assert not np.allclose(f2[i], f1[i]) and np.allclose(np.delete(f2, i, 0), np.delete(f1, i, 0), atol=1e-5)
    assert not model_is_current(ds, d, clip_dir[0], ClipTrainSpec(epochs=12, batch_size=16, lr=1e-3))


def test_missing_or_corrupt_images_fall_back_to_text(catalogue, clip_dir, tmp_path):
    import shutil
    from recsys.features import ClipSpec, build_features
    from recsys.loaders import load_dataset

    d = tmp_path / "mm"
    shutil.copytree(catalogue, d, ignore=shutil.ignore_patterns("features"))
    (d / "images" / "0.png").unlink()
    (d / "images" / "1.png").write_bytes(b"not a png")
    ds = load_dataset(d)
    feats, man = build_features(ds, d, ClipSpec(model=str(clip_dir[0])), progress=False)
    assert man["images_missing"] == 2 and man["images_used"] == 78
    text, _ = build_features(ds, d, ClipSpec(model=str(clip_dir[0]), fusion="text"), progress=False)
    i0, i1 = ds.item_index("0"), ds.item_index("1")
    np.testing.assert_allclose(feats[[i0, i1]], text[[i0, i1]], atol=1e-6)     # text features only
    assert not np.allclose(feats[ds.item_index("2")], text[ds.item_index("2")])


def test_fusion_by_hand():
    from recsys.features import fuse

    t = np.array([[3.0, 0.0], [0.0, 2.0]])
    im = np.array([[0.0, 1.0], [5.0, 5.0]])
    out = fuse(t, im, np.array([True, False]))
    np.testing.assert_allclose(out[0], [2 ** -0.5, 2 ** -0.5])      # mean of unit text and unit image
    np.testing.assert_allclose(out[1], [0.0, 1.0])                  # no image: unit text


def test_whitening_by_hand():
    """Soft ZCA whitening: centred rows +-[2, 1], +-[2, -1] have covariance diag(4, 1); eps 0.25 divides
    the axes by sqrt(4 + 1) and sqrt(1 + 1) before unit-norming. Rotating the input rotates the output
    (ZCA is unique, no eigenvector signs leak); eps 0 leaves the features alone."""
    from recsys.features import whiten

    f = np.array([[2.0, 1.0], [-2.0, -1.0], [2.0, -1.0], [-2.0, 1.0]]) + 1.0       # mean (1, 1)
    r = np.array([2 / 5 ** 0.5, 1 / 2 ** 0.5])
    np.testing.assert_allclose(whiten(f, 0.25)[0], r / np.linalg.norm(r), rtol=1e-6)
    np.testing.assert_allclose(whiten(f, 1e-12)[0], [2 ** -0.5, 2 ** -0.5], rtol=1e-6)   # full whitening
    q = np.linalg.qr(np.random.default_rng(0).normal(size=(2, 2)))[0]
    np.testing.assert_allclose(whiten(f @ q, 0.25), whiten(f, 0.25) @ q, atol=1e-6)
    np.testing.assert_array_equal(whiten(f, 0.0), f.astype(np.float32))
    assert whiten(f, 0.25).dtype == np.float32


def test_bad_models_are_clear_errors(tmp_path):
    from recsys.features import ClipExtractor, ClipSpec

    with pytest.raises(ConfigError, match="unknown open_clip model"):
        ClipExtractor(ClipSpec(model="no-such-model"))
    with pytest.raises(ConfigError, match="no such checkpoint"):
        ClipExtractor(ClipSpec(model="fedrec-clip-tiny", pretrained=str(tmp_path / "missing.safetensors")))
    with pytest.raises(ConfigError, match="no such model directory"):
        ClipExtractor(ClipSpec(model=f"local-dir:{tmp_path / 'nope'}"))


def test_graphs_and_propagation_by_hand():
    from recsys.content_graph import co_interaction_graph, propagate

    # co-counts 0-1: 2, 1-2: 2, 0-2: 1; item 3 never rated (cold: no edges)
    train = sp.csr_matrix(np.array([[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 0]], float))
    ei, ew = co_interaction_graph(train, k=1)
    edges = set(map(tuple, ei.T.tolist()))
    assert edges == {(0, 1), (1, 0), (1, 2), (2, 1)}             # top-1 each, symmetrized; 0-2 dropped
    x = np.eye(4, dtype=np.float32)
    y = propagate(x, ei, ew, layers=1)
    np.testing.assert_allclose(y[3], x[3])                       # isolated item keeps its own content
    assert y[0, 1] > 0 and y[0, 2] == 0                          # 0 hears from its neighbour 1 only
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1, atol=1e-6)


def test_tasks_by_hand():
    from recsys.tasks import explain, personalized_search, prefer

    feats = np.eye(4)[[0, 0, 1, 1, 2]] * 1.0                     # items 0,1 alike; 2,3 alike; 4 apart
    q = np.array([1.0, 0.2, 0, 0])
    a = personalized_search(q, feats, np.array([0.0, 5.0, 0, 0, 0]), k=2, candidates=2, relevance=0.3)[0]
    b = personalized_search(q, feats, np.array([5.0, 0.0, 0, 0, 0]), k=2, candidates=2, relevance=0.3)[0]
    assert set(a) == set(b) == {0, 1} and list(a) == [1, 0] and list(b) == [0, 1]   # same matches, own order
    assert prefer(np.array([2.0, 1.0]), 0, 1) == (0, pytest.approx(1 / (1 + np.exp(-1))))
    titles = ["A", "B", "C", "D", "E"]
    texts = ["red striped lamp", "red striped mug", "blue lamp", "blue mug", "green vase"]
    e = explain(0, np.array([1, 2, 4]), np.array([5.0, 5.0, 1.0]), feats, texts, titles)
    assert e["support"][0]["item"] == 1 and e["shared"][:2] == ["red", "striped"]
    assert "B (similarity 1.00, rated 5)" in e["sentence"]
    # the item itself never explains itself; two history items with one title count once
    e = explain(0, np.array([0, 1, 3]), None, feats, texts, ["A", "B", "C", "B", "E"])
    assert [x["item"] for x in e["support"]] == [1] and "A (similarity" not in e["sentence"]
    # "recommended because" only inside the top-k; further down it says where the item ranks
    e = explain(0, np.array([1, 2, 4]), np.array([5.0, 5.0, 1.0]), feats, texts, titles, rank=4, top_k=3)
    assert e["sentence"].startswith("A: ranked 4 of 5 for you (not in your top 3); closest in your history: B")
    assert "recommended" not in e["sentence"]
    e = explain(0, np.array([1, 2, 4]), np.array([5.0, 5.0, 1.0]), feats, texts, titles, rank=3, top_k=3)
    assert "recommended because you liked B" in e["sentence"]


@pytest.fixture(scope="module")
def content_run(catalogue, clip_dir, tmp_path_factory):
    from federation.runs.jobs import train

    tmp = tmp_path_factory.mktemp("runs")
    cfg = {"name": "c", "seed": 0, "data": {"path": str(catalogue)},
           "split": {"kind": "cold_items", "cold_fraction": 0.1},
           "model": {"mode": "explicit", "hidden": [16, 8]},
           "federation": {"strategy": "personalfr", "rounds": 4, "fraction": 0.5},
           "content": {"enabled": True, "model": str(clip_dir[0]), "scale": 1.0},
           "eval": {"every": 0}, "output": {"checkpoint_every": 2}}
    p = tmp / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return train(p, tmp / "run", progress=False), p


def test_content_run_scores_cold_items_from_content(content_run):
    from federation.runs.jobs import load_run

    run = load_run(content_run[0])
    assert run.fed.shape.content_dim == 129 and (content_run[0] / "content.safetensors").exists()
    cold = run.split.cold_items
    assert len(cold) == 8
    s = run.model().score(np.arange(5))
    assert np.isfinite(s).all() and np.ptp(s[:, cold], axis=1).min() > 0      # cold items get real scores
    iv, uv = run.model().item_vectors(), run.model().user_vectors(np.arange(5))
    np.testing.assert_allclose(uv @ iv.T, s, atol=1e-4)                      # FAISS-ready vectors == score()
    assert (run.fed.global_p["dec_out"][cold] == 0).all()                    # no free row: content alone


def test_search_explain_prefer_cli(content_run):
    run_dir = str(content_run[0])
    from federation.runs.jobs import load_run
    job = load_run(run_dir)
    counts = np.diff(job.train.indptr)
    u1, u2 = (str(job.data.user_ids[i]) for i in np.argsort(-counts)[:2])
    r1 = run("search", run_dir, "--user", u1, "--query", "a red striped lamp", "-k", "5")
    r2 = run("search", run_dir, "--user", u2, "--query", "a red striped lamp", "-k", "5")
    assert r1.returncode == 0 and r2.returncode == 0, r1.stderr[-500:]
    lines1, lines2 = r1.stdout.strip().splitlines()[1:], r2.stdout.strip().splitlines()[1:]
    assert len(lines1) == 5 and lines1 != lines2                              # personalized order
    item = str(job.data.item_ids[job.split.cold_items[0]])
    e = run("explain", run_dir, "--user", u1, "--item", item)
    rank = int(re.search(r"\(rank (\d+) of", e.stdout).group(1))
    assert e.returncode == 0 and "predicted rating" in e.stdout
    # the sentence agrees with the rank: "recommended because" only inside the top 10
    assert ("recommended because you liked" in e.stdout) == (rank <= 10), e.stdout
    assert (f"ranked {rank} of {job.data.n_items} for you" in e.stdout) == (rank > 10), e.stdout
    p = run("prefer", run_dir, "--user", u1, "--a", item, "--b", str(job.data.item_ids[0]))
    assert p.returncode == 0 and "prefers" in p.stdout
    from federation.runs.serve import prefer_for
    from recsys.errors import FedrecError
    with pytest.raises(FedrecError, match="same item"):                  # an item against itself
        prefer_for(run_dir, u1, item, item)


def test_content_bad_input_cli(content_run, tmp_path, catalogue):
    run_dir = str(content_run[0])
    r = run("search", run_dir, "--user", "no-such-user", "--query", "lamp")
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run("explain", run_dir, "--user", "0", "--item", "no-such-item")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    r = run("features", "build", str(catalogue), "--model", "no-such-model")
    assert r.returncode == 2 and "unknown open_clip model" in r.stderr and "Traceback" not in r.stderr
    r = run("clip", "train", str(tmp_path / "missing"), "--out", str(tmp_path / "m"))
    assert r.returncode == 2 and "Traceback" not in r.stderr and not (tmp_path / "m").exists()
    # a run without content: search says so in one line
    cfg = yaml.safe_load(Path(content_run[1]).read_text())
    cfg["content"] = {"enabled": False}
    cfg["name"] = "plain"
    p = tmp_path / "plain.yaml"
    p.write_text(yaml.safe_dump(cfg))
    assert run("train", str(p), "--run-dir", str(tmp_path / "plain")).returncode == 0
    r = run("search", str(tmp_path / "plain"), "--user", "0", "--query", "lamp")
    assert r.returncode == 2 and "no content features" in r.stderr


def test_shipped_configs_validate():
    from federation.runs.config import load_config

    root = Path(__file__).resolve().parents[1] / "configs"
    names = sorted(p.name for p in root.glob("*.yaml"))
    assert {"synth-cold.yaml", "ml100k-implicit-content.yaml"} <= set(names)
    from federation.runs.jobs import fed_settings

    from federation.ranking.config import parse_ease_config, parse_ranker_config
    from federation.runs.config import read_yaml

    kinds = set()
    for p in root.glob("*.yaml"):                        # strict: an unknown key or bad value raises
        d = read_yaml(p)
        kind = d.get("kind") or ("ranker" if "sources" in d else "ease" if "ease" in d else "federation")
        kinds.add(kind)
        if kind == "ranker":
            parse_ranker_config(d, str(p))
        elif kind == "ease":
            parse_ease_config(d, str(p))
        else:
            fed_settings(load_config(p))
    assert kinds == {"federation", "ease", "ranker"}
    assert load_config(root / "synth-cold.yaml").content.enabled


def test_evaluate_candidates_matches_full_ranking_and_restricts(tiny_data):
    """With every item a candidate it equals evaluate_model's full ranking; with a subset, the ranking
    is over those items only (a model preferring the excluded items still ranks the subset by hand)."""
    from recsys.evaluation import evaluate_candidates, evaluate_model
    from recsys.models.baselines import Popularity
    from recsys.splits import ratio_split

    split = ratio_split(tiny_data, seed=0)
    pop = Popularity().fit(split.matrix(tiny_data, "train"))
    full = evaluate_model(pop, tiny_data, split, "test", "implicit", (5,))
    cand = evaluate_candidates(pop, tiny_data, split, np.arange(tiny_data.n_items), "test", (5,))
    assert cand["ndcg@5"] == pytest.approx(full["ndcg@5"]) and cand["recall@5"] == pytest.approx(full["recall@5"])

    class Anti:                                       # loves items 0-14, which are not candidates
        def score(self, u):
            return np.tile(-np.arange(tiny_data.n_items, dtype=float), (len(u), 1))
    sub = np.arange(15, 30)
    r = evaluate_candidates(Anti(), tiny_data, split, sub, "test", (5,))
    truth = split.matrix(tiny_data, "test").tocsc()[:, sub].tocsr()
    assert r["n_candidates"] == 15 and r["n_users"] == int((np.diff(truth.indptr) > 0).sum())
    from recsys.evaluation import _seen
    from recsys.metrics import ranking_metrics_reference
    seen = _seen(tiny_data, split, "test").tocsc()[:, sub].tocsr()
    users = np.flatnonzero(np.diff(truth.indptr) > 0)
    topk = np.array([[j for j in range(15) if j not in set(seen[u].indices)][:5] for u in users])
    assert r["ndcg@5"] == pytest.approx(ranking_metrics_reference(topk, truth, users, (5,))["ndcg@5"])


def test_dashboard_search_page_on_a_content_run(content_run, monkeypatch, tmp_path):
    """The Search page of a content-aware run: the run's own CLIP model embeds the query, two users
    get the same matches in different orders, and a hit is explained in a sentence."""
    from streamlit.testing.v1 import AppTest
    from federation.runs.jobs import load_run

    monkeypatch.setenv("FEDREC_RUNS", str(content_run[0].parent))
    monkeypatch.setenv("FEDREC_INDICES", str(tmp_path / "no-indices"))
    monkeypatch.setenv("FEDREC_JOBS", str(tmp_path / "jobs"))
    job = load_run(content_run[0])
    counts = np.diff(job.train.indptr)
    u1, u2 = (str(job.data.user_ids[i]) for i in np.argsort(-counts)[:2])
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py"), default_timeout=180)
    at.run()
    at.sidebar.radio(key="page").set_value("Search").run()
    name = content_run[0].name
    at.sidebar.selectbox(key="run").set_value(name).run()
    at.selectbox(key=f"search_user_{name}").set_value(job.data.user_index(u1)).run()
    at.text_input(key=f"search_q_{name}").input("a red striped lamp").run()
    assert not at.exception, at.exception
    mine, plain = at.dataframe[0].value, at.dataframe[1].value
    assert len(mine) == 10 and len(plain) == 10
    assert list(plain["similarity"]) == sorted(plain["similarity"], reverse=True)     # query match only
    assert mine["picture"].str.startswith("data:image/").all()                       # thumbnails in the rows
    assert mine["item"].tolist() == [str(job.data.item_ids[job.data.item_index(i)]) for i in mine["item"]]
    why = " ".join(m.value for m in at.markdown)
    rank = int(re.search(r"\(rank (\d+) of", why).group(1))
    assert ("recommended because you liked" in why) == (rank <= 10), why           # the sentence agrees with the rank
    at.selectbox(key=f"search_user_{name}").set_value(job.data.user_index(u2)).run()
    other = at.dataframe[0].value
    assert list(mine["title"]) != list(plain["title"])          # the user's model re-orders the matches
    assert list(other["title"]) != list(mine["title"])          # and differently for another user


def test_new_items_are_flagged_and_listed_among_themselves(content_run):
    """On a cold-item run the Recommend page lists new items (no training interaction) ranked among
    themselves, each flagged; the full list flags exactly the items without interactions."""
    from dashboard import views
    from federation.runs.jobs import load_run

    run = load_run(content_run[0])
    cold = views.cold_items(run)
    assert len(cold) >= round(0.1 * run.data.n_items)          # the cold tenth, and any item never trained on
    vecs = run.fed.global_p["dec_out"].float().numpy()
    new = views.recommendations(run, 0, 5, True, vecs, among=cold)
    assert len(new) == 5 and (new["cold start"] == "no interactions yet").all()
    assert {run.data.item_index(i) for i in new["item"]} <= set(cold.tolist())
    full = views.recommendations(run, 0, 50, True, vecs)
    flagged = {run.data.item_index(i) for i in full.loc[full["cold start"] != "", "item"]}
    assert flagged == {run.data.item_index(i) for i in full["item"]} & set(cold.tolist())


def test_content_run_with_differential_privacy(content_run, tmp_path):
    """privacy.dp works with a content-aware decoder: the run completes, reports epsilon, and the
    shared projection moved (clipped and noised like the rest of the decoder)."""
    import json
    from federation.runs.jobs import load_run, train

    cfg = yaml.safe_load(Path(content_run[1]).read_text())
    cfg["name"] = "c-dp"
    cfg["federation"]["row_average"] = "participants"
    cfg["privacy"] = {"dp": True, "noise_multiplier": 1.0, "clip": 0.5, "delta": 1e-3}
    p = tmp_path / "dp.yaml"
    p.write_text(yaml.safe_dump(cfg))
    run_dir = train(p, tmp_path / "dp", progress=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert 0 < summary["epsilon"] < 100
    import torch
    from recsys.models.autoencoder import init_params

    run = load_run(run_dir)
    P, P0 = run.fed.global_p["dec_P"], init_params(run.fed.shape, cfg["seed"])["dec_P"]
    assert torch.isfinite(P).all() and P.shape == P0.shape and not torch.allclose(P, P0)
