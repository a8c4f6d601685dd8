"""New users from a few items (federation/runs/onboard.py): the fresh client's code by hand, fold-in
that helps, what it refuses, and `fedrec recommend RUN --history`."""
import numpy as np
import pytest
import torch
import yaml

from cli_inprocess import fedrec
from recsys.synth import SynthSpec, write_catalogue


def _trained(root, spec: SynthSpec, model: dict, federation: dict):
    """A run trained on a synthetic catalogue, loaded back from disk."""
    from federation.runs.jobs import load_run, train

    write_catalogue(spec, root / "synth", images=False, progress=False)
    cfg = {"name": "o", "seed": 0, "data": {"path": str(root / "synth")}, "model": model, "federation": federation,
           "eval": {"every": 0}}
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    train(root / "cfg.yaml", root / "run", progress=False)
    return load_run(root / "run")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return _trained(tmp_path_factory.mktemp("onboard"), SynthSpec(n_users=300, n_items=60, mean_activity=14, seed=2),
                    {"mode": "implicit", "hidden": [32, 16], "input_norm": "l2", "input_tie": 3.0},
                    {"rounds": 40, "fraction": 0.3, "row_average": "participants", "server_lr": 5.0})


def test_a_new_clients_first_code_by_hand(run):
    """Steps 0: the encoder a new client starts with (the run's initial rows of its items, tied to the
    received decoder rows) through the received decoder's first layer."""
    from federation.runs.onboard import new_user_code
    from recsys.models.autoencoder import init_params

    fed = run.fed
    items = np.array([3, 17, 40])
    p0 = init_params(fed.shape, fed.cfg.seed)
    g = fed.global_p
    x = torch.full((3,), 1 / np.sqrt(3))                           # l2-normalized implicit inputs
    rows = p0["enc_in"][items] + 3.0 * g["dec_out"][items]
    h1 = torch.tanh(x @ rows + p0["enc_b1"])
    h2 = torch.tanh(p0["enc_W2"] @ h1 + p0["enc_b2"])
    h3 = torch.tanh(g["dec_W1"] @ h2 + g["dec_b1"])
    torch.testing.assert_close(new_user_code(fed, items), h3, atol=1e-6, rtol=0)
    from federation.runs.onboard import new_client_start
    torch.testing.assert_close(new_user_code(fed, items, start=new_client_start(fed)), h3, atol=1e-6, rtol=0)


def test_fold_in_fits_the_users_items_and_never_recommends_them(run):
    """A few local steps of a fresh encoder on the revealed items put more of the softmax on them than
    the first code does (the run's own local loss goes down), for every user tried; the revealed items
    are never in the list. (Whether that ranks the user's other items better is measured on ml-100k in
    docs/benchmarks.md, not asserted on a toy catalogue.)"""
    from federation.runs.onboard import FoldIn, new_user_code, new_user_scores

    fed, train = run.fed, run.train
    rng = np.random.default_rng(0)
    users = [u for u in range(run.data.n_users) if train[u].nnz >= 5][:20]
    for u in users:
        items = rng.permutation(train[u].indices)[:5]
        fit = []
        for steps in (0, 10):
            h3 = new_user_code(fed, items, None, FoldIn(steps, lr=0.1))
            logp = torch.log_softmax(fed.strategy.score(fed.global_p, h3[None], {}, None)[0], 0)
            fit.append(float(logp[items].sum()))
            assert np.isneginf(new_user_scores(fed, items, None, FoldIn(steps, lr=0.1))[items]).all()
        assert fit[1] > fit[0], (u, fit)


def test_unknown_items_and_strategies_without_a_personal_encoder_only_are_refused(run):
    from federation.runs.onboard import new_user_code, parse_history
    from federation.simulation import Federation
    from recsys.errors import ConfigError, FedrecError

    assert parse_history(run.data, f"{run.data.item_ids[4]}, {run.data.item_ids[2]},{run.data.item_ids[4]}").tolist() == [4, 2]
    with pytest.raises(FedrecError, match="unknown item id 'nope'"):
        parse_history(run.data, "nope")
    with pytest.raises(FedrecError, match="at least one item"):
        parse_history(run.data, " , ")
    fed = run.fed
    other = Federation(fed.shape, type(fed.cfg)(strategy="fedrep", seed=0), fed.train)
    with pytest.raises(ConfigError, match="keeps .* per client"):
        new_user_code(other, np.array([1, 2]))


def test_recommend_history_cli(run):
    ids = ",".join(str(run.data.item_ids[i]) for i in (1, 5, 9))
    r = fedrec("recommend", run.dir, "--history", ids, "-k", "4", "--fold-steps", "3")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0] == "top 4 for a new user with 3 item(s) (3 fold-in steps):" and len(lines) == 5
    assert not any(f"(item {run.data.item_ids[i]}," in r.stdout for i in (1, 5, 9))
    for args, want in ((("--history", ids, "--user", "0"), "exactly one of"), ((), "exactly one of"),
                       (("--user", "0", "--fold-steps", "2"), "--fold-steps works with --history"),
                       (("--history", "zz"), "unknown item id 'zz'")):
        r = fedrec("recommend", run.dir, *args)
        assert r.returncode == 2 and want in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_held_out_users_and_nested_reveals_by_hand():
    from recsys.splits import hold_out_users, reveal_order

    counts = np.array([0, 5, 12, 3, 11, 30, 11, 2, 15, 11])
    held = hold_out_users(counts, 0.5, seed=1, min_interactions=11)
    assert len(held) == 3 and set(held) <= {2, 4, 5, 6, 8, 9} and list(held) == sorted(held)
    assert hold_out_users(counts, 0.5, seed=1, min_interactions=11).tolist() == held.tolist()     # seeded
    items = np.arange(20, 32)
    order = reveal_order(items, 0, 7)
    assert sorted(order.tolist()) == items.tolist() and order.tolist() == reveal_order(items, 0, 7).tolist()
    assert order.tolist() != reveal_order(items, 0, 8).tolist()                     # per user
    with pytest.raises(ValueError, match="fraction"):
        hold_out_users(counts, 1.0, 0)


def test_onboarding_benchmark_runs_end_to_end(tmp_path):
    """The benchmark's protocol on a tiny catalogue (2 rounds): every method, every k, a figure each."""
    from fedrec.bench.onboarding import bench_onboarding

    write_catalogue(SynthSpec(n_users=120, n_items=40, mean_activity=12, seed=1), tmp_path / "s", images=False,
                    progress=False)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({
        "name": "b", "data": {"path": str(tmp_path / "s")},
        "federation": {"strategy": "persona", "rounds": 2, "fraction": 0.3},
        "model": {"mode": "implicit", "hidden": [16, 8], "input_norm": "l2"},
        "prototypes": {"enabled": True, "k": 2, "iters": 1}}))
    rows, info = bench_onboarding(tmp_path / "c.yaml", ks=(1, 3), steps=(2,))
    methods = ["popularity", "first code + prototypes", "fold-in (n chosen on valid)", "user embedder",
               "user embedder + fold-in (n chosen on valid)"]
    assert [(r["method"], r["k"]) for r in rows] == [(m, k) for k in (1, 3) for m in methods]
    assert all(0 <= r["ndcg"] <= 1 for r in rows) and info["held_out"] + info["train_users"] <= 120
    assert set(info["existing"]) == {"personal encoder", "user embedder alone"}
    assert [r["steps"] for r in rows[:5]] == [None, None, 2, None, 2] and list(rows[2]["tried"]) == [2]


@pytest.fixture(scope="module")
def persona_run(tmp_path_factory):
    return _trained(tmp_path_factory.mktemp("onboard-persona"), SynthSpec(n_users=200, n_items=50, mean_activity=12, seed=3),
                    {"mode": "implicit", "hidden": [16, 8], "input_norm": "l2"},
                    {"strategy": "persona", "options": {"heads": 2}, "rounds": 6, "fraction": 0.3})


def test_a_persona_runs_new_user_scores_with_the_embedder_alone(persona_run):
    """A persona run's new user: h3 = decoder(z_e(items)) with the received parameters, no encoder; and
    the run loaded from disk kept the embedder (its four parameters in the checkpoint)."""
    from federation.runs.onboard import new_user_code
    from recsys.models.autoencoder import decode_hidden, item_rows
    from recsys.models.embedder import EMBEDDER_KEYS, user_vector

    fed = persona_run.fed
    assert fed.shape.embedder_heads == 2 and set(EMBEDDER_KEYS) <= set(fed.global_p)
    items = np.array([4, 9, 31])
    g = fed.global_p
    t = torch.as_tensor(items)
    z = user_vector(g, item_rows(g, None, t), torch.ones(3), torch.zeros(3, dtype=torch.long), 1)
    torch.testing.assert_close(new_user_code(fed, items), decode_hidden(g, z)[0], atol=1e-6, rtol=0)
    out = fedrec("recommend", persona_run.dir, "--history", ",".join(map(str, persona_run.data.item_ids[items])),
                 "-k", "5")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("top 5 for a new user with 3 item(s) (the run's user embedder):")
    assert len(out.stdout.strip().splitlines()) == 6


def test_fold_in_starts_at_the_embedders_vector(persona_run):
    """start_at: a fresh encoder whose enc_b2 comes from it outputs exactly z for its input."""
    from federation.runs.onboard import new_client_start, start_at

    fed = persona_run.fed
    items = torch.tensor([1, 2, 7, 30])
    init = new_client_start(fed)
    personal = {k: (v[items] if k == "enc_in" else v) for k, v in init.items()}
    x = torch.full((4,), 0.5)
    z = torch.linspace(-0.9, 0.9, fed.shape.h2)
    personal["enc_b2"] = start_at(personal, z, x, None)
    h1 = torch.tanh(x @ personal["enc_in"] + personal["enc_b1"])
    torch.testing.assert_close(torch.tanh(personal["enc_W2"] @ h1 + personal["enc_b2"]), z, atol=1e-5, rtol=0)
