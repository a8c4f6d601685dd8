"""The ranking stage's candidates, features and federated boosting: hand-computed cases, holders see
only their rows, merged trees predict the weighted sum, and the job end to end."""
import json

import lightgbm as lgb
import numpy as np
import pytest
import scipy.sparse as sp
import yaml

from cli_inprocess import fedrec
from federation.ranking import boosting
from federation.ranking.boosting import BoostSettings, Holder, merge, n_trees, ndcg_sum, split_model
from recsys.ranking.candidates import candidates, feature_names, features, labels, masked, ranks


def test_candidates_and_features_by_hand():
    # one user, 5 items, item 1 seen; source a prefers 0 > 2 > 3 > 4, source b prefers 4 > 3 > ...
    seen = sp.csr_matrix(np.array([[0, 1, 0, 0, 0]]))
    sc = {"a": masked(np.array([[5.0, 9.0, 4.0, 3.0, 1.0]]), seen),
          "b": masked(np.array([[0.0, 9.0, 1.0, 2.0, 3.0]]), seen)}
    assert sc["a"][0, 1] == -np.inf
    rk = {k: ranks(v) for k, v in sc.items()}
    np.testing.assert_array_equal(rk["a"][0], [0, 4, 1, 2, 3])
    c = candidates(rk, 1, np.array([1]))                       # top-1 of each: item 0 (a), item 4 (b)
    np.testing.assert_array_equal(c.items, [0, 4])
    content = np.eye(5, dtype=np.float32)
    X = features(c, sc, rk, 1, seen, np.arange(5, dtype=np.float32), np.zeros(5, np.float32), content)
    names = feature_names(("a", "b"))
    col = {n: X[:, names.index(n)] for n in names}
    np.testing.assert_allclose(col["a_score"], [5.0, 1.0])
    np.testing.assert_allclose(col["a_z"], (np.array([5.0, 1.0]) - 3.25) / np.std([5.0, 4.0, 3.0, 1.0]), rtol=1e-5)
    np.testing.assert_allclose(col["b_rank"], np.log1p([3, 0]))
    np.testing.assert_allclose(col["b_rrank"], [1 / 4, 1.0])
    np.testing.assert_allclose(col["item_pop"], [0, 4])
    np.testing.assert_allclose(col["n_sources"], [1, 1])
    np.testing.assert_allclose(col["hist_max_sim"], [0, 0])     # orthogonal to the seen item
    np.testing.assert_allclose(col["user_activity"], np.log1p([1, 1]))
    np.testing.assert_array_equal(labels(c, sp.csr_matrix(np.array([[0, 0, 0, 0, 1]]))), [False, True])


def test_ndcg_sum_by_hand():
    # group 1: positive at rank 2 -> 1/log2(3); group 2: no positive (skipped)
    s, n = ndcg_sum(np.array([0.9, 0.5, 0.1, 0.3, 0.2]), np.array([0, 1, 0, 0, 0.0]), np.array([3, 2]), k=10)
    assert n == 1 and s == pytest.approx(1 / np.log2(3))


def _holders(K=3, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(K):
        X = rng.standard_normal((600, 4))
        y = (X[:, 0] + 0.5 * rng.standard_normal(600) > 1).astype(np.float64)
        out.append(Holder(X, y, np.full(30, 20)))
    return out


def test_merged_trees_predict_the_weighted_sum():
    H = _holders(2)
    p = boosting.params(BoostSettings(num_leaves=4, min_data_in_leaf=5))
    a = lgb.train(p, lgb.Dataset(H[0].X, H[0].y, group=H[0].group), 3).model_to_string()
    b = lgb.train(p, lgb.Dataset(H[1].X, H[1].y, group=H[1].group), 2).model_to_string()
    head, ta, foot = split_model(a)
    m = merge(head, [(t, 0.5) for t in ta] + [(t, 0.25) for t in split_model(b)[1]], foot)
    assert n_trees(m) == 5
    X = H[0].X
    want = 0.5 * lgb.Booster(model_str=a).predict(X) + 0.25 * lgb.Booster(model_str=b).predict(X)
    np.testing.assert_allclose(lgb.Booster(model_str=m).predict(X), want, atol=1e-9)


@pytest.mark.parametrize("scheme", ["cyclic", "bagging"])
def test_each_holder_trains_on_its_own_rows_only(monkeypatch, scheme):
    H, V = _holders(3), _holders(1, seed=9)
    seen = []
    real = lgb.train

    def spy(params, ds, num_boost_round, init_model=None):
        seen.append((ds.get_label().copy(), init_model is not None))
        return real(params, ds, num_boost_round, init_model=init_model)
    monkeypatch.setattr(lgb, "train", spy)
    s = BoostSettings(scheme=scheme, rounds=2, trees_per_round=2, num_leaves=4, min_data_in_leaf=5, patience=5)
    res = boosting.train(H, V, s, ["f0", "f1", "f2", "f3"])
    assert len(seen) == 6
    for j, (y, continued) in enumerate(seen):                      # holder j % 3, its labels exactly
        np.testing.assert_array_equal(y, H[j % 3].y)
        assert continued == (j > 0 if scheme == "cyclic" else j >= 3)
    assert res.history[-1]["trees"] == 12            # cyclic: 3 visits x 2 trees per round; bagging: 3 x 2 at 1/3
    assert n_trees(res.model) == 6 * res.best_round
    if scheme == "bagging":     # a round adds the holders' trees at weight 1/3: the mean of their steps
        model1 = boosting.train(H, V, BoostSettings(**{**s.__dict__, "rounds": 1}), ["f0", "f1", "f2", "f3"]).model
        X = V[0].X
        steps = [lgb.train(boosting.params(s), lgb.Dataset(h.X, h.y, group=h.group), 2).predict(X) for h in H]
        np.testing.assert_allclose(lgb.Booster(model_str=model1).predict(X), np.mean(steps, 0), atol=1e-9)


def _run(*a):
    return fedrec(*a)


@pytest.fixture(scope="module")
def pipeline_runs(tmp_path_factory):
    """A small implicit federation run, a federated EASE run on the same split, and a re-ranker."""
    from recsys.synth import SynthSpec, write_catalogue

    d = tmp_path_factory.mktemp("rank")
    data = d / "synth"
    write_catalogue(SynthSpec(n_users=150, n_items=60, mean_activity=14, seed=2), data, images=False, progress=False)
    fed = d / "fed.yaml"
    fed.write_text(yaml.safe_dump({"name": "f", "data": {"path": str(data)},
                                   "model": {"mode": "implicit", "hidden": [16, 8], "input_norm": "l2"},
                                   "federation": {"rounds": 6, "fraction": 0.3}, "eval": {"every": 0},
                                   "output": {"checkpoint_every": 6}}))
    assert _run("train", str(fed), "--run-dir", str(d / "fed")).returncode == 0
    ease = d / "ease.yaml"
    ease.write_text(yaml.safe_dump({"name": "e", "data": {"path": str(data)}, "ease": {"lam": 20.0}}))
    assert _run("rank", "ease", str(ease), "--run-dir", str(d / "ease")).returncode == 0
    rk = d / "ranker.yaml"
    rk.write_text(yaml.safe_dump({"name": "r", "sources": {"personalfr": str(d / "fed"), "ease": str(d / "ease"),
                                                           "content": False},
                                  "candidates": {"per_source": 10},
                                  "training": {"nodes": 2, "rounds": 3, "min_data_in_leaf": 20}}))
    r = _run("rank", "train", str(rk), "--run-dir", str(d / "ranker"), "--quiet")
    assert r.returncode == 0, r.stderr
    return d


@pytest.mark.e2e
def test_rank_train_writes_a_lightgbm_model_with_a_manifest(pipeline_runs):
    from federation.ranking.jobs import load_ease
    from federation.ranking.reranker import load_ranker
    from recsys.models.baselines import EASE

    d = pipeline_runs
    m = json.loads((d / "ranker" / "manifest.json").read_text())
    assert m["kind"] == "ranker" and m["source_names"] == ["personalfr", "ease", "popularity"]
    b = lgb.Booster(model_file=str(d / "ranker" / "ranker.txt"))            # plain LightGBM text
    assert b.feature_name() == m["feature_names"]
    s = json.loads((d / "ranker" / "summary.json").read_text())
    assert set(s["test"]["rows"]) == {"personalfr", "ease", "popularity", "union (RRF, no re-ranker)", "union + re-ranker"}
    assert 0 < s["test"]["candidate_recall"] <= 1
    # no leakage: the generators saw the train part only (EASE equals central EASE on train)
    e = load_ease(d / "ease")
    np.testing.assert_allclose(e.model.B, EASE(20.0).fit(e.train).B, atol=1e-6)
    r = load_ranker(d / "ranker", d / "fed")
    items, scores, _ = r.top(0, 5)
    assert len(items) == 5 and not set(items) & set(r.src.seen("test")[0].indices)


@pytest.mark.e2e
def test_ranker_refuses_changed_sources_and_bad_input(pipeline_runs, tmp_path):
    from federation.ranking.reranker import load_ranker
    from recsys.errors import ManifestError

    d = pipeline_runs
    with pytest.raises(ManifestError, match="trained on other runs"):
        load_ranker(d / "ranker", d / "elsewhere")
    mp = d / "ease" / "manifest.json"
    orig = mp.read_text()
    try:
        mp.write_text(orig.replace('"status": "done"', '"status": "done" '))
        with pytest.raises(ManifestError, match="retrained"):
            load_ranker(d / "ranker")
    finally:
        mp.write_text(orig)
    rm = d / "ranker" / "manifest.json"
    orig = rm.read_text()
    try:
        m = json.loads(orig)
        m["feature_names"] = m["feature_names"][:-1] + ["something_else"]
        rm.write_text(json.dumps(m))
        with pytest.raises(ManifestError, match="other features"):
            load_ranker(d / "ranker")
        r = _run("recommend", str(d / "fed"), "--user", "0", "--rerank", str(d / "ranker"))
        assert r.returncode == 2 and "other features" in r.stderr and r.stderr.count("\n") == 1
    finally:
        rm.write_text(orig)
    cfg = tmp_path / "bad.yaml"
    for bad in ({"sources": {"content": False}}, {"training": {"scheme": "ring"}},
                {"sources": {"ease": str(tmp_path / "nope")}}):
        cfg.write_text(yaml.safe_dump(bad))
        r = _run("rank", "train", str(cfg), "--run-dir", str(tmp_path / "out"))
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.e2e
def test_recommend_with_rerank_and_targets(pipeline_runs):
    d = pipeline_runs
    user = "0"
    r = _run("recommend", str(d / "fed"), "--user", user, "-k", "5", "--rerank", str(d / "ranker"),
             "--target", "tail=0.4", "--target", "novelty=0.3")
    assert r.returncode == 0, r.stderr
    assert "re-ranked by" in r.stdout and "tail: asked 0.40, list" in r.stdout and "novelty: asked 0.30" in r.stdout
    import re
    assert len(re.findall(r"^\s*\d+\. ", r.stdout, re.M)) == 5
    for args, msg in ((("--target", "tail=2"), "share in [0, 1]"), (("--target", "fun=0.1"), "unknown value"),
                      (("--target", "diversity=0.3"), "needs item content"),
                      (("--target", "tail=0.2", "--query", "x"), "--query is only used")):
        r = _run("recommend", str(d / "fed"), "--user", user, "--rerank", str(d / "ranker"), *args)
        assert r.returncode == 2 and msg in r.stderr and r.stderr.count("\n") == 1, r.stderr
    r = _run("recommend", str(d / "ease"), "--user", user, "--rerank", str(d / "fed"))
    assert r.returncode == 2 and "not a re-ranker run" in r.stderr
    r = _run("recommend", str(d / "fed"), "--user", user, "--target", "tail=0.2")
    assert r.returncode == 2 and "need --rerank" in r.stderr


class _Loopback:
    """federation.ranking.deployed.RankTransport over in-process RankNodes. Node ids run against the
    partitions (as a SuperLink's random ids may): turns must follow the partitions, not the ids."""

    def __init__(self, nodes):
        self.by_id = {100 - i: node for i, node in enumerate(nodes)}

    def node_ids(self):
        return sorted(self.by_id)

    def rank_hello(self, nodes):
        return {n: self.by_id[n].hello() for n in nodes}

    def rank_grow(self, node, model):
        return self.by_id[node].grow(model or None)

    def rank_eval(self, nodes, model, part):
        return {n: self.by_id[n].evaluate(model, part) for n in nodes}


def _ranker_cfg(d, nodes, scheme="cyclic"):
    from federation.ranking.config import parse_ranker_config

    c = yaml.safe_load((d / "ranker" / "config.yaml").read_text())
    c["training"] = {**c["training"], "nodes": nodes, "scheme": scheme}
    return c, parse_ranker_config(c)


@pytest.mark.e2e
@pytest.mark.parametrize("scheme", ["cyclic", "bagging"])
def test_deployed_ranker_equals_the_in_process_one(pipeline_runs, tmp_path, scheme):
    from federation.ranking.deployed import RankNode, serve_ranker
    from federation.ranking.reranker import train_ranker

    d = pipeline_runs
    raw, cfg = _ranker_cfg(d, 3, scheme)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(raw))
    local = train_ranker(tmp_path / "r.yaml", tmp_path / "local", progress=False)
    nodes = [RankNode(cfg, i, 3, tmp_path / f"node{i}") for i in range(3)]
    out = serve_ranker(cfg, tmp_path / "deployed", _Loopback(nodes))
    assert (out / "ranker.txt").read_text() == (local / "ranker.txt").read_text()
    s_dep = json.loads((out / "summary.json").read_text())
    s_loc = json.loads((local / "summary.json").read_text())
    assert s_dep["test"]["rows"]["union + re-ranker"]["ndcg@10"] == \
        pytest.approx(s_loc["test"]["rows"]["union + re-ranker"]["ndcg@10"], abs=1e-9)
    assert s_dep["history"] == s_loc["history"]
    assert any(p.name.startswith("rank-") for p in (tmp_path / "node0").iterdir())      # examples cached on the node


@pytest.mark.slow
@pytest.mark.e2e
def test_ranker_on_a_real_flower_superlink_equals_the_in_process_one(pipeline_runs, tmp_path):
    from federation.deploy.process import LocalFederation, alive
    from federation.ranking.reranker import load_ranker, train_ranker

    d = pipeline_runs
    raw, cfg = _ranker_cfg(d, 2)
    raw["training"]["rounds"] = 2                     # each turn is a ClientApp process: keep the test short
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(raw))
    local = train_ranker(tmp_path / "r.yaml", tmp_path / "local", progress=False)
    fed = LocalFederation(tmp_path / "fl", 2)
    try:
        fed.start_superlink()
        for i in range(2):
            fed.start_node(i)
        r = fed.run({"job-config": str(tmp_path / "r.yaml"), "run-dir": str(tmp_path / "flower"), "min-nodes": 2,
                     "wait-s": 90, "round-timeout": 120}, timeout=480)
        pids = fed.all_pids()
    finally:
        fed.stop()
    assert pids and not alive(pids)
    assert r.returncode == 0, (tmp_path / "fl/logs/flwr-run.log").read_text()[-3000:]
    assert (tmp_path / "flower" / "ranker.txt").read_text() == (local / "ranker.txt").read_text()
    assert load_ranker(tmp_path / "flower", d / "fed").top(0, 3)[0].shape == (3,)
