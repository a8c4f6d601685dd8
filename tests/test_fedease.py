"""Federated EASE: the closed form on a hand-computed case, federated == central bit for bit (plain and
secure), the real two-aggregator protocol adds up to the in-process ring sum, DP clipping and noise,
the top-k form, and the job's run directory."""
import numpy as np
import pytest
import scipy.sparse as sp

from federation.privacy import channel
from federation.privacy.fixedpoint import ring_add
from federation.privacy.secagg import Aggregator, Layout, SecAggSettings, aad, dense_payloads
from federation.ranking.ease import (EaseSettings, client_contribution, dense_from_triu, federated_gram, ring_gram,
                                     solve, triu_size, user_weights)
from recsys.models.baselines import EASE
from recsys.ranking.ease import ease_weights, gram, neighbours_matrix, scores, top_neighbours, user_gram


def _binary(U=40, N=15, density=0.3, seed=1):
    X = sp.random(U, N, density=density, random_state=seed, format="csr")
    X.data[:] = 1.0
    return X


def test_closed_form_by_hand():
    # G = [[2, 1], [1, 1]], λ = 1: P = (G + I)⁻¹ = 1/5 [[2, -1], [-1, 3]]; B_ij = -P_ij / P_jj
    B = ease_weights(np.array([[2.0, 1.0], [1.0, 1.0]]), 1.0)
    np.testing.assert_allclose(B, [[0.0, 1 / 3], [1 / 2, 0.0]], atol=1e-15)
    # one user with items {0, 2} contributes ones at (0,0) (0,2) (2,0) (2,2)
    np.testing.assert_array_equal(user_gram(np.array([0, 2]), 3).toarray(), [[1, 0, 1], [0, 0, 0], [1, 0, 1]])


@pytest.mark.parametrize("secure", [False, True])
def test_federated_equals_central_exactly(secure):
    X = _binary()
    r = federated_gram(X, EaseSettings(lam=7.0, secure=secure))
    np.testing.assert_array_equal(r.G, gram(X))
    m = solve(r.G, EaseSettings(lam=7.0, share="dense"))
    central = EASE(7.0).fit(X)
    np.testing.assert_array_equal(m.B, central.B)
    np.testing.assert_array_equal(scores(X, m.B), central.score(np.arange(X.shape[0])))


def test_contributions_sum_to_the_ring_gram():
    X = _binary(U=12, N=9)
    tot = np.zeros(triu_size(9), np.uint32)
    for u in range(12):
        tot = ring_add(tot, client_contribution(X[u].indices, 9, 1.0, 8))
    np.testing.assert_array_equal(tot, ring_gram(X, np.ones(12), 8))


def test_real_two_aggregator_protocol_reveals_the_gram_only_as_a_sum():
    X = _binary(U=8, N=6)
    N, D, tag, run = 6, triu_size(6), "ease-gram", "run-1"
    keys = [channel.new_private_key() for _ in range(2)]
    pub = [channel.public_bytes(k) for k in keys]
    aggs = [Aggregator(p, keys[p], Layout(N, 4, 0), SecAggSettings(), run) for p in (0, 1)]
    for a in aggs:
        a.open_dense(tag, range(8), D)
    for u in range(8):
        plain = dense_payloads(client_contribution(X[u].indices, N, 1.0, 8).view(np.int32).astype(np.int64))
        for p in (0, 1):
            aggs[p].receive_dense(u, channel.seal(pub[p], plain[p], aad(run, tag, u, p)))
    # each share alone is not the Gram; their sum is
    share_b = aggs[1].dense_share(range(8))
    assert not np.array_equal(share_b, ring_gram(X, np.ones(8), 8))
    total = ring_add(aggs[0].dense_share(range(8)), share_b)
    np.testing.assert_array_equal(total, ring_gram(X, np.ones(8), 8))
    from federation.privacy.fixedpoint import decode

    np.testing.assert_array_equal(dense_from_triu(decode(total, 8), N), gram(X))


def test_dp_clips_each_user_and_adds_the_stated_noise():
    n = np.array([1, 50, 200, 400])
    w = user_weights(n, EaseSettings(dp=True, clip=100.0))
    np.testing.assert_allclose(w * n, [1, 50, 100, 100])             # ‖w·x xᵀ‖_F = w·n_u ≤ clip
    X = _binary(U=60, N=40, density=0.5)
    s = EaseSettings(dp=True, clip=10.0, noise_multiplier=3.0, noise_seed=0)
    clean = gram(X, user_weights(np.diff(X.indptr), s))
    for secure, parties in ((False, 1), (True, 2)):       # under secagg each aggregator adds the full noise
        noise = federated_gram(X, EaseSettings(**{**s.__dict__, "secure": secure})).G - clean
        iu = np.triu_indices(40)
        np.testing.assert_allclose(noise, noise.T)
        std = 3.0 * 10.0 * np.sqrt(parties)
        assert abs(noise[iu].std() / std - 1) < 0.08
        assert abs(noise[iu].mean()) < 4 * std / np.sqrt(len(iu[0]))


def test_top_neighbours_keep_the_largest_entries_of_each_row():
    rng = np.random.default_rng(0)
    B = rng.standard_normal((20, 20))
    idx, val = top_neighbours(B, 5)
    for i in range(20):
        np.testing.assert_array_equal(idx[i], np.argsort(-B[i])[:5])
    M = neighbours_matrix(idx, val, 20).toarray()
    assert (M != 0).sum() == 100 and np.allclose(M[0, idx[0]], B[0, idx[0]])
    m = solve(gram(_binary(N=30)), EaseSettings(lam=5.0, share="neighbours", neighbours=4))
    assert m.B is None and m.idx.shape == (30, 4) and m.download_bytes == 30 * 4 * 8


@pytest.mark.e2e
def test_rank_ease_job_writes_a_run_that_evaluates_and_refuses_bad_input(tmp_path):
    import json

    import yaml

    from recsys.synth import SynthSpec, write_catalogue

    data = tmp_path / "synth"
    write_catalogue(SynthSpec(n_users=80, n_items=40, mean_activity=10, seed=1), data, images=False, progress=False)
    cfg = tmp_path / "ease.yaml"
    cfg.write_text(yaml.safe_dump({"name": "e", "data": {"path": str(data)}, "ease": {"lam": 20.0},
                                   "privacy": {"secure_aggregation": True}}))
    from cli_inprocess import fedrec as run
    r = run("rank", "ease", str(cfg), "--run-dir", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["metrics"]["test"]["ndcg@10"] > 0 and s["shared_as"] == "dense"
    r = run("evaluate", str(tmp_path / "run"), "--split", "test")
    assert r.returncode == 0 and "ndcg@10" in r.stdout
    # bad input: one line, exit 2, the run directory untouched
    before = sorted(p.name for p in (tmp_path / "run").iterdir())
    for bad in ({"ease": {"lam": -1}}, {"ease": {"share": "sparse"}}, {"privacy": {"dp": True}}, {"nope": 1}):
        cfg.write_text(yaml.safe_dump({"data": {"path": str(data)}, **bad}))
        r = run("rank", "ease", str(cfg), "--run-dir", str(tmp_path / "run2"))
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    cfg.write_text(yaml.safe_dump({"data": {"path": str(data)}}))
    r = run("rank", "ease", str(cfg), "--run-dir", str(tmp_path / "run"))
    assert r.returncode == 2 and "exists" in r.stderr
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == before
    assert not (tmp_path / "run2").exists()
