"""Federated prototypes of user codes (federation/engine/prototypes.py): the math by hand, the rounds, what
one client sends, and a job that fits, saves, resumes and serves them."""
import json

import numpy as np
import pytest
import torch
import yaml

from federation.engine import prototypes as P
from recsys.errors import ConfigError


def test_nearest_stats_update_by_hand():
    codes = torch.tensor([[0., 0.], [0., 2.], [10., 0.], [10., 2.], [9., 1.]])
    C = torch.tensor([[0., 1.], [10., 1.], [50., 50.]])
    assert P.nearest(codes, C).tolist() == [0, 0, 1, 1, 1]
    st = P.client_stats(codes, C)
    torch.testing.assert_close(st.sums, torch.tensor([[0., 2.], [29., 3.], [0., 0.]]))
    torch.testing.assert_close(st.counts, torch.tensor([2., 3., 0.]))
    torch.testing.assert_close(st.sq, torch.tensor([4., 100. + 104. + 82., 0.]))
    C2 = P.lloyd_update(C, st)
    torch.testing.assert_close(C2, torch.tensor([[0., 1.], [29 / 3, 1.], [50., 50.]]))   # the empty one stays
    # Spread around C2 from the stats alone: squared distances 1, 1 | (1/3)^2+1, (1/3)^2+1, (2/3)^2+0.
    want = np.sqrt((1 + 1 + 2 * (1 / 9 + 1) + 4 / 9) / 5)
    assert P.rms_spread(C2, st) == pytest.approx(want, rel=1e-6)
    # One client's message is the B = 1 case: its code in its centroid's row, zeros elsewhere.
    one = P.client_stats(codes[4:5], C).as_message()
    assert set(one) == {P.SUMS_KEY, P.COUNTS_KEY, P.SQ_KEY}
    np.testing.assert_array_equal(one[P.SUMS_KEY], [[0, 0], [9, 1], [0, 0]])
    np.testing.assert_array_equal(one[P.COUNTS_KEY], [0, 1, 0])
    np.testing.assert_array_equal(one[P.SQ_KEY], [0, 82, 0])


def test_split_and_blend_by_hand():
    C = torch.tensor([[0., 0., 0.], [1., 1., 1.]])
    gen = torch.Generator().manual_seed(0)
    out = P.split_widest(C, torch.tensor([1., 3.], dtype=torch.float64), radius=0.5, gen=gen)
    assert out.shape == (3, 3)
    torch.testing.assert_close(out[0], C[0])                                   # the tighter one is kept
    torch.testing.assert_close((out[1] + out[2]) / 2, C[1])                    # c + r d and c - r d
    assert float((out[1] - C[1]).norm()) == pytest.approx(0.5, rel=1e-5)
    codes = torch.tensor([[0.2, 0., 0.], [0.8, 1., 1.]])
    torch.testing.assert_close(P.blend(codes, C, 0.0), codes)
    torch.testing.assert_close(P.blend(codes, C, 1.0), C)
    torch.testing.assert_close(P.blend(codes, C, 0.5), torch.tensor([[0.1, 0., 0.], [0.9, 1., 1.]]))


def test_fit_recovers_separated_groups_in_the_announced_rounds():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, (4, 6))
    lab = rng.integers(0, 4, 400)
    codes = torch.tensor(centres[lab] + rng.normal(0, 0.3, (400, 6)), dtype=torch.float64)
    calls = []

    def stats_of(C):
        calls.append(C.shape[0])
        return P.client_stats(codes, C)

    s = P.PrototypeSettings(k=4, blend=1.0, iters=5)
    C = P.fit_prototypes(stats_of, 6, s, seed=0, dtype=torch.float64)
    assert len(calls) == P.rounds_needed(s) == 16 and calls == [1] + [2] * 5 + [3] * 5 + [4] * 5
    # Every true centre has a prototype within the noise of its mean.
    d = torch.cdist(torch.tensor(centres), C).min(1).values
    assert float(d.max()) < 0.15
    assert P.rounds_needed(P.PrototypeSettings(k=16, iters=3)) == 46


@pytest.fixture(scope="module")
def proto_run(tmp_path_factory):
    from federation.runs.jobs import train
    from recsys.synth import SynthSpec, write_catalogue

    tmp = tmp_path_factory.mktemp("protos")
    d = write_catalogue(SynthSpec(n_users=300, n_items=60, mean_activity=12, seed=4), tmp / "s", images=False,
                        progress=False)
    cfg = {"name": "p", "seed": 0, "data": {"path": str(d)},
           "model": {"mode": "implicit", "hidden": [32, 16], "input_norm": "l2"},
           "federation": {"strategy": "personalfr", "rounds": 6, "fraction": 0.3, "row_average": "participants"},
           "prototypes": {"enabled": True, "k": 4, "blend": 0.75, "iters": 2},
           "eval": {"every": 0, "k": [10]}, "output": {"checkpoint_every": 3}}
    p = tmp / "p.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return train(p, tmp / "run", progress=False), p, cfg


def test_job_fits_saves_and_serves_prototypes(proto_run):
    from federation.runs.jobs import load_run
    from federation.simulation import PROTOTYPES_TENSOR
    from safetensors.torch import load_file

    run_dir, _, cfg = proto_run
    info = json.loads((run_dir / "prototypes.json").read_text())
    fed = load_run(run_dir).fed
    n = len(fed.active_users)
    assert info["rounds"] == 7 and info["clients"] == n and sum(info["sizes"]) == n and len(info["sizes"]) == 4
    # Rounds with 1, 2, 2, 3, 3, 4, 4 centroids; each client sends K x (H + 2) float32 per round.
    assert info["bytes_up"] == n * 4 * (1 + 2 + 2 + 3 + 3 + 4 + 4) * (32 + 2)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["prototypes"]["k"] == 4
    assert summary["bytes_up_total"] > info["bytes_up"]
    assert load_file(str(run_dir / "checkpoint.safetensors"))[PROTOTYPES_TENSOR].shape == (4, 32)
    # Scores use the blended code, and the FAISS-ready vectors still reproduce score() exactly.
    from federation.simulation import FederatedAutoencoder

    m = FederatedAutoencoder(fed)
    users = np.arange(20)
    own, _ = fed.user_codes(users)
    blended, _ = fed.user_hidden(users)
    torch.testing.assert_close(blended, P.blend(own, fed.prototypes, 0.75))
    assert not torch.allclose(blended, own)
    np.testing.assert_allclose(m.user_vectors(users) @ m.item_vectors().T, m.score(users), atol=1e-4)


def test_prototype_messages_are_exactly_one_code_each(proto_run):
    """What leaves a client in a prototype round: its own code in its nearest centroid's row, a 1 in
    counts and |code|^2 in sq; nothing else. The server's total is the sum of those messages."""
    from federation.runs.jobs import load_run

    fed = load_run(proto_run[0]).fed
    C = fed.prototypes
    users = fed.active_users[:25]
    msgs = [fed.client_prototype_message(int(u), C) for u in users]
    own, _ = fed.user_codes(users)
    for m, h in zip(msgs, own):
        assert set(m) == {P.SUMS_KEY, P.COUNTS_KEY, P.SQ_KEY}
        nz = np.flatnonzero(np.abs(m[P.SUMS_KEY]).sum(1))
        assert len(nz) == 1 and m[P.COUNTS_KEY].tolist() == [1.0 if k == nz[0] else 0.0 for k in range(4)]
        np.testing.assert_allclose(m[P.SUMS_KEY][nz[0]], h.numpy(), atol=1e-6)
        assert m[P.SQ_KEY][nz[0]] == pytest.approx(float((h * h).sum()), rel=1e-5)
    total = fed.prototype_stats(C, users)
    np.testing.assert_allclose(sum(m[P.SUMS_KEY] for m in msgs), total.sums.numpy(), atol=1e-5)
    none = fed.prototype_stats(C, np.array([], dtype=np.int64))       # a node without users sends zeros
    assert none.sums.shape == C.shape and not none.sums.any() and not none.counts.any() and not none.sq.any()


def test_a_killed_and_resumed_run_fits_the_same_prototypes(proto_run, tmp_path):
    from federation.runs.jobs import load_run, train

    _, p, _ = proto_run
    run_dir = train(p, tmp_path / "r", progress=False, stop_after=3)
    assert not (run_dir / "prototypes.json").exists()
    train(p, run_dir, progress=False, resume=True)
    a, b = load_run(proto_run[0]).fed.prototypes, load_run(run_dir).fed.prototypes
    torch.testing.assert_close(a, b, atol=0, rtol=0)                  # bit-identical
    # Killed after the prototypes were saved but before the summary: resuming keeps them (no refit)
    # and the summary counts their bytes as an uninterrupted run does.
    full = json.loads((run_dir / "summary.json").read_text())
    (run_dir / "summary.json").unlink()
    before = (run_dir / "prototypes.json").stat().st_mtime_ns      # a refit would rewrite the file
    train(p, run_dir, progress=False, resume=True)
    again = json.loads((run_dir / "summary.json").read_text())
    assert (run_dir / "prototypes.json").stat().st_mtime_ns == before
    assert again["bytes_up_total"] == full["bytes_up_total"] and again["prototypes"] == full["prototypes"]


def test_prototypes_bad_config(proto_run, tmp_path):
    from federation.runs.config import parse_config

    cfg = proto_run[2]
    with pytest.raises(ConfigError, match="prototypes: not covered by privacy.dp"):
        parse_config({**cfg, "privacy": {"dp": True, "noise_multiplier": 1.0}})
    with pytest.raises(ConfigError, match="prototypes.k"):
        parse_config({**cfg, "prototypes": {"enabled": True, "k": 1}})
    with pytest.raises(ValueError, match="proto_sums: shape"):
        P.stats_from_message({P.SUMS_KEY: np.zeros((2, 3)), P.COUNTS_KEY: np.zeros(3), P.SQ_KEY: np.zeros(3)}, (3, 3))
    with pytest.raises(ValueError, match="negative"):
        P.stats_from_message({P.SUMS_KEY: np.zeros((3, 3)), P.COUNTS_KEY: -np.ones(3), P.SQ_KEY: np.zeros(3)}, (3, 3))
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**cfg, "prototypes": {"enabled": True, "blend": 1.5}}))
    from cli_inprocess import fedrec
    r = fedrec("train", bad, "--run-dir", tmp_path / "x")
    assert r.returncode == 2 and "prototypes.blend" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x").exists()
