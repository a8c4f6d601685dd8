"""The deployment round loop (federation/deploy/server.py) and nodes (federation/deploy/node.py) without a network:
a loopback transport that still encodes every reply as a Flower RecordDict and decodes it again, so the
bytes the server aggregates are the ones a SuperNode would send. The real SuperLink/SuperNode runs are in
tests/test_flower.py."""
import json
import logging

import numpy as np
import pytest
import torch

from federation.runs.config import parse_config
from federation.deploy.flower_app import decode_train_reply
from loopback import Loopback, nodes_for
from federation.runs.jobs import build_federation
from federation.strategies.messages import UPDATE_KEYS
from federation.deploy.node import STATE_FILE, ClientNode
from federation.deploy.server import FederatedServer
from federation.simulation import PROTOTYPES_TENSOR, FederatedAutoencoder, sample_clients
from recsys.evaluation import evaluate_model
from recsys.models.autoencoder import ENCODER_KEYS
from recsys.synth import SynthSpec, write_catalogue


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    d = tmp_path_factory.mktemp("data") / "synth"
    write_catalogue(SynthSpec(n_users=90, n_items=40, mean_activity=10, seed=3), d, images=False, progress=False)
    return d


def _cfg(synth, **over):
    d = {"name": "dep", "seed": 1, "data": {"path": str(synth)}, "model": {"mode": "explicit", "hidden": [16, 8]},
         "federation": {"strategy": "personalfr", "rounds": 3, "fraction": 0.4},
         "eval": {"every": 0}}
    for k, v in over.items():
        d[k] = {**d.get(k, {}), **v}
    return parse_config(d)


def _nodes(cfg, tmp_path, parts=3):
    return nodes_for(cfg, tmp_path, parts)



def _deploy_and_simulate(cfg, tmp_path):
    """Run ``cfg`` on three loopback nodes and the same rounds in process: (transport, data, split, engine)."""
    nodes, data, split = _nodes(cfg, tmp_path)
    t = Loopback(nodes)
    FederatedServer(cfg, tmp_path / "run", t).run()
    sim = build_federation(cfg, data, split)
    for _ in range(cfg.federation.rounds):
        sim.run_round()
    return t, data, split, sim


@pytest.mark.parametrize("model", [{}, {"input_tie": 3.0}])
def test_deployment_equals_the_in_process_engine(synth, tmp_path, model):
    """Also with the tied encoder input: a node's encoders read the rows it received in the round."""
    cfg = _cfg(synth, model=model)
    nodes, data, split = _nodes(cfg, tmp_path)
    FederatedServer(cfg, tmp_path / "run", Loopback(nodes)).run()
    sim = build_federation(cfg, data, split)
    for _ in range(cfg.federation.rounds):
        sim.run_round()
    ck = __import__("safetensors.torch", fromlist=["load_file"]).load_file(str(tmp_path / "run/checkpoint.safetensors"))
    for k in ("dec_W1", "dec_b1", "dec_out", "dec_ob"):
        torch.testing.assert_close(ck[f"global.{k}"], sim.global_p[k], atol=1e-5, rtol=0)
    # each node's persisted encoders equal the engine's for its users
    for node in nodes.values():
        for k in ENCODER_KEYS:
            st = node.fed.store
            if k == "enc_in":
                own = np.concatenate([np.arange(sim.train.indptr[u], sim.train.indptr[u + 1]) for u in node.users])
                torch.testing.assert_close(st.full(k), sim.store.full(k)[own], atol=1e-5, rtol=0)
            else:
                torch.testing.assert_close(st.full(k)[node.users], sim.store.full(k)[node.users],
                                           atol=1e-5, rtol=0)
    lines = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in lines] == [1, 2, 3]
    # federated evaluation (each node scores its own users, sums come back) == central evaluation
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    r = data.ratings.data
    central = evaluate_model(FederatedAutoencoder(sim, (float(r.min()), float(r.max()))), data, split, "test")
    assert summary["test"]["rmse"] == pytest.approx(central["rmse"], abs=1e-4)
    assert summary["test"]["n"] == central["n"]


def test_prototype_deployment_equals_the_in_process_prototypes(synth, tmp_path):
    """prototypes.enabled on the deployment: after the last round the server runs the prototype rounds
    through the nodes (each sends its users' stats summed: three arrays, nothing else), saves the
    prototypes with the checkpoint, and evaluates with blended codes; all equal to the in-process job."""
    from federation.engine import prototypes as P
    from federation.runs.jobs import prototype_settings
    from federation.simulation import PROTOTYPES_TENSOR
    from safetensors.torch import load_file

    cfg = _cfg(synth, prototypes={"enabled": True, "k": 3, "blend": 0.75, "iters": 2})
    t, data, split, sim = _deploy_and_simulate(cfg, tmp_path)
    sim.fit_prototypes(prototype_settings(cfg))
    ck = load_file(str(tmp_path / "run/checkpoint.safetensors"))
    torch.testing.assert_close(ck[PROTOTYPES_TENSOR], sim.prototypes, atol=1e-4, rtol=0)
    stats = [m for _, m in t.proto_sent]
    assert len(stats) == 3 * (P.rounds_needed(prototype_settings(cfg)) + 1)    # + the final size report
    assert all(set(m) == {P.SUMS_KEY, P.COUNTS_KEY, P.SQ_KEY} for m in stats)
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert summary["prototypes"]["rounds"] == P.rounds_needed(prototype_settings(cfg)) + 1
    assert sum(summary["prototypes"]["sizes"]) == len(sim.active_users)
    r = data.ratings.data
    central = evaluate_model(FederatedAutoencoder(sim, (float(r.min()), float(r.max()))), data, split, "test")
    assert summary["test"]["rmse"] == pytest.approx(central["rmse"], abs=1e-4)
    # The blend changed the scores the deployment evaluated with.
    sim.prototypes = None
    plain = evaluate_model(FederatedAutoencoder(sim, (float(r.min()), float(r.max()))), data, split, "test")
    assert abs(plain["rmse"] - central["rmse"]) > 1e-4


def test_what_a_node_sends_is_exactly_the_design(synth, tmp_path):
    """Every record a node sends: one packed record whose per-user slices are one update per sampled
    user with exactly UPDATE_KEYS, rows only of
    items that user interacted with, no encoder parameter, no ratings; plus two totals."""
    cfg = _cfg(synth)
    nodes, data, split = _nodes(cfg, tmp_path)
    t = Loopback(nodes)
    FederatedServer(cfg, tmp_path / "run", t).run()
    train = split.matrix(data, "train")
    assert t.sent and len(t.sent) == len(t.personal)
    for (node_id, content), snap in zip(t.sent, t.personal):
        assert set(content.keys()) == {"updates", "totals"}
        assert set(content["totals"].keys()) == {"num-users", "loss-sum"}
        assert set(content["updates"].keys()) == {"users", "offsets", *UPDATE_KEYS}     # nothing else, packed
        for u, rec in decode_train_reply(content).updates.items():
            assert u in nodes[node_id].users                                     # its own users only
            assert set(rec) == set(UPDATE_KEYS)
            own = train.indices[train.indptr[u]:train.indptr[u + 1]]
            assert sorted(rec["item_ids"].tolist()) == sorted(own.tolist())
            ratings = train.data[train.indptr[u]:train.indptr[u + 1]]
            for k, v in rec.items():
                if k == "item_ids":
                    continue
                flat = v.ravel()
                assert not (len(flat) == len(ratings) and np.allclose(np.sort(flat), np.sort(ratings)))
            # no personal value of this node, as it was when the message was sent or before, in any
            # key: neither a value nor a row proportional to a personal row ("not even scaled")
            assert_no_personal_values({k: v for k, v in rec.items() if k != "item_ids"},
                                      {f"{when}.{k}": e for when, d in snap.items() for k, e in d.items()})


def assert_no_personal_values(msg: dict, personal: dict) -> None:
    """No personal tensor's values in a message, not even scaled. Exact float32 values: a leaked vector
    matches wholesale; an isolated equal value between unrelated tensors happens by chance (tens of
    thousands of float32 values in a narrow range), so up to 2 per message key are allowed."""
    pv = np.concatenate([e.ravel() for e in personal.values()]).astype(np.float32)
    for k, v in msg.items():
        vals = np.asarray(v, np.float32).ravel()
        vals = vals[(np.abs(vals) > 1e-6) & (np.abs(np.abs(vals) - 1) > 1e-6)]        # not 0, not ±1
        assert np.isin(vals, pv).sum() <= 2, f"{k}: personal values in a message"
    for k, v in msg.items():
        v = np.atleast_2d(np.asarray(v, np.float64))
        for pk, e in personal.items():
            rows = [e.reshape(-1, e.shape[-1])] if e.ndim >= 1 else []
            if e.ndim >= 2:                                          # and the columns of each matrix
                rows.append(np.swapaxes(e, -1, -2).reshape(-1, e.shape[-2]))
            for E in rows:
                if E.shape[-1] != v.shape[-1] or v.shape[-1] < 4:
                    continue
                A = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
                P = E / np.maximum(np.linalg.norm(E, axis=1, keepdims=True), 1e-12)
                assert np.abs(A @ P.T).max() < 0.9999, f"{k} has a row proportional to a row of {pk}"


CONTENT = {"enabled": True, "backend": "sentence", "model": "minilm", "fusion": "text", "scale": 1.0}


@pytest.mark.parametrize("options", [{}, {"holder_weight": 5.0, "row_dropout": 0.5}])
def test_content_deployment_equals_the_engine_and_sends_only_the_projection_more(synth, tmp_path, caplog, options):
    """A content-aware job on the deployment: every node computes the public item content itself,
    the server learns its width from hello, the aggregated decoder and projection equal the in-process
    engine's, and a message gains exactly dec_P. A node with other content is refused. Also with
    holder-weighted content and content-only steps (each node weights by the same holder counts)."""
    from federation.strategies.messages import KEY_PROJ, update_keys
    from federation.deploy.node import HELLO_CONTENT

    cfg = _cfg(synth, content={**CONTENT, **options})
    t, data, split, sim = _deploy_and_simulate(cfg, tmp_path)
    nodes = t.nodes
    assert sim.shape.content_dim == 385                                       # MiniLM 384 + the 1 column
    if options:
        from recsys.models.autoencoder import holder_weights
        g = holder_weights(np.asarray((split.matrix(data, "train") != 0).sum(0)).ravel(), 5.0)
        assert g.min() < 0.7                                                   # the weighting does something
        torch.testing.assert_close(sim.content, sim.content_drop * torch.as_tensor(g)[:, None])
        torch.testing.assert_close(nodes[100].fed.content, sim.content)      # a node weights by all holders
    ck = __import__("safetensors.torch", fromlist=["load_file"]).load_file(str(tmp_path / "run/checkpoint.safetensors"))
    assert set(ck) == {f"global.{k}" for k in ("dec_W1", "dec_b1", "dec_out", "dec_ob", KEY_PROJ)}
    for k in ("dec_W1", "dec_b1", "dec_out", "dec_ob", KEY_PROJ):
        torch.testing.assert_close(ck[f"global.{k}"], sim.global_p[k], atol=1e-5, rtol=0)
    assert json.loads((tmp_path / "run/manifest.json").read_text())["content"] == nodes[100].hello()[HELLO_CONTENT]
    train = split.matrix(data, "train")
    for _, content in t.sent:
        for u, rec in decode_train_reply(content).updates.items():
            assert set(rec) == set(update_keys(sim.shape)) == set(UPDATE_KEYS) | {KEY_PROJ}
            assert rec[KEY_PROJ].shape == (16, 385)
            assert sorted(rec["item_ids"].tolist()) == sorted(train[u].indices.tolist())
    # a node whose content differs (another scale: other vectors) is refused; so is a content-free node
    other = parse_config({**cfg.model_dump(mode="json"), "content": {**CONTENT, "scale": 2.0}})
    odd = ClientNode(other, nodes[102].users, tmp_path / "odd", data, split)
    plain = ClientNode(_cfg(synth), nodes[102].users, tmp_path / "plain", data, split)
    for bad, why in ((odd, "item content"), (plain, "no item content")):
        caplog.clear()
        with caplog.at_level(logging.WARNING), pytest.raises(Exception, match="usable node"):
            FederatedServer(cfg, tmp_path / f"run-{why}", Loopback({100: nodes[100], 103: bad}), min_nodes=2,
                            wait_s=0).run()
        assert why in caplog.text


def test_holder_counts_go_up_once_in_hello_and_come_back_with_every_message(synth, tmp_path, caplog):
    """Holder-weighted content on the deployment: each node's hello carries its own users' count per
    item (and nothing else new); the server sums them once, saves them with a checksum, and sends the
    sum with every train and evaluate message; a node weights its content by that sum, not by data it
    cannot see. A resumed server reuses the saved counts; a tampered file, a hello with impossible
    counts, a message without counts and DP together with holder weighting are refused."""
    from federation.runs.jobs import holder_counts
    from federation.deploy.node import HELLO_HOLDERS, HELLO_KEYS
    from federation.deploy.server import HOLDERS_FILE
    from recsys.errors import ConfigError, ManifestError
    from recsys.io import load_arrays

    cfg = _cfg(synth, content={**CONTENT, "holder_weight": 5.0}, federation={"rounds": 2})
    nodes, data, split = _nodes(cfg, tmp_path)
    train = split.matrix(data, "train")
    full = holder_counts(train)                                                       # (N,)
    t = Loopback(nodes)
    FederatedServer(cfg, tmp_path / "run", t).run()
    assert len(t.hellos) == 3
    for n, h in t.hellos:
        assert set(h) == set(HELLO_KEYS) | {HELLO_HOLDERS}
        mine = np.asarray((train[nodes[n].users] != 0).sum(0)).ravel()               # this node's users only
        np.testing.assert_array_equal(h[HELLO_HOLDERS], mine)
        assert (h[HELLO_HOLDERS] < full).any()                                        # a part, not the whole
    np.testing.assert_array_equal(load_arrays(tmp_path / "run" / HOLDERS_FILE)["holders"], full)
    assert {kind for _, kind, _ in t.received} == {"train", "evaluate"}
    for _, _, h in t.received:
        np.testing.assert_array_equal(h, full)
    sim = build_federation(cfg, data, split)
    torch.testing.assert_close(nodes[101].fed.content, sim.content)
    # the bytes down of a round count the counts (8 bytes per item per node) on top of the decoder
    rec = json.loads((tmp_path / "run/metrics.jsonl").read_text().splitlines()[0])
    dec = sum(v.numel() * 4 for k, v in sim.global_p.items() if not k.startswith("enc"))
    assert rec["bytes_down"] == rec["nodes"] * (dec + 8 * data.n_items) + 8 * rec["sampled"]

    # resume: the counts come from the run dir, not from a new sum of hellos
    man = json.loads((tmp_path / "run/manifest.json").read_text())
    assert man["holders"]["nodes"] == 3
    srv = FederatedServer(cfg, tmp_path / "run", Loopback({100: nodes[100]}))
    srv._wait_for_nodes()
    srv._init_state()
    np.testing.assert_array_equal(srv.holders, full)                    # one node now, three nodes' counts
    p = tmp_path / "run" / HOLDERS_FILE
    p.write_bytes(p.read_bytes()[:-8] + np.int64(7).tobytes())
    with pytest.raises(ManifestError, match="checksum"):
        FederatedServer(cfg, tmp_path / "run", Loopback(nodes)).run()

    # a hello whose counts exceed the node's users is refused
    liar = ClientNode(cfg, nodes[102].users, tmp_path / "liar", data, split)
    liar.own_holders = liar.own_holders + len(liar.users) + 1
    with caplog.at_level(logging.WARNING), pytest.raises(Exception, match="usable node"):
        FederatedServer(cfg, tmp_path / "run-liar", Loopback({103: liar}), wait_s=0).run()
    assert "holder counts" in caplog.text
    # a train message without counts is refused by the node, before anything trains
    dec_arrays = {k: v.numpy() for k, v in nodes[100].fed.global_p.items() if not k.startswith("enc")}
    with pytest.raises(Exception, match="no holder counts"):
        nodes[100].train(5, 0.1, nodes[100].active[:2], dec_arrays)
    with pytest.raises(ConfigError, match="holder_weight"):
        build_federation(_cfg(synth, content={**CONTENT, "holder_weight": 5.0},
                              privacy={"dp": True, "noise_multiplier": 1.0}), data, split)


def test_a_dead_node_and_a_nan_node_do_not_stop_the_round(synth, tmp_path, caplog):
    cfg = _cfg(synth, federation={"rounds": 2, "fraction": 0.6})
    nodes, *_ = _nodes(cfg, tmp_path)
    t = Loopback(nodes)
    t.down.add(102)              # connected, sampled, never answers: the round times it out
    t.poison.add(101)            # sends inf rows: rejected and logged
    with caplog.at_level(logging.WARNING):
        FederatedServer(cfg, tmp_path / "run", t, min_fraction=0.2).run()
    recs = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in recs] == [1, 2]
    down_users = set(nodes[102].active.tolist())
    for rnd, r in enumerate(recs):
        assert r["failed_nodes"] == 1 and r["rejected"] > 0
        lost = len(down_users & set(sample_clients(cfg.seed, rnd, np.concatenate(
            [n.active for n in nodes.values()]), cfg.federation.fraction).tolist()))
        assert r["participants"] == r["sampled"] - r["rejected"] - lost
    assert "NaN or infinite" in caplog.text
    ck = __import__("safetensors.torch", fromlist=["load_file"]).load_file(str(tmp_path / "run/checkpoint.safetensors"))
    assert all(torch.isfinite(v).all() for v in ck.values())


def test_round_below_the_minimum_is_retried_then_fails_clearly(synth, tmp_path):
    cfg = _cfg(synth, federation={"rounds": 1})
    nodes, *_ = _nodes(cfg, tmp_path)
    t = Loopback(nodes)
    t.poison.update(nodes)
    with pytest.raises(Exception, match="round 1 failed 2 times"):
        FederatedServer(cfg, tmp_path / "run", t, max_retries=1).run()
    assert not (tmp_path / "run/checkpoint.safetensors").exists()          # nothing half-applied


@pytest.mark.parametrize("prototypes", [False, True], ids=["plain", "prototypes"])
def test_server_restart_resumes_without_losing_or_repeating_a_round(synth, tmp_path, prototypes):
    """The server dies after the nodes trained round 3 but before it aggregated; server and nodes
    restart (new processes, state from disk). The resumed run equals an uninterrupted one bit for bit,
    prototypes included, and the engine at 1e-5."""
    cfg3 = _cfg(synth, prototypes={"enabled": True, "k": 2, "iters": 1}) if prototypes else _cfg(synth)
    whole, *_ = _nodes(cfg3, tmp_path / "whole")
    FederatedServer(cfg3, tmp_path / "whole/run", Loopback(whole)).run()
    nodes, data, split = _nodes(cfg3, tmp_path)
    t = Loopback(nodes)
    orig = t.train
    calls = {"n": 0}

    def dying_train(reqs):
        calls["n"] += 1
        out = orig(reqs)              # nodes trained round 3 and saved their state ...
        if calls["n"] == 3:
            raise KeyboardInterrupt   # ... but the server dies before aggregating it
        return out
    t.train = dying_train
    with pytest.raises(KeyboardInterrupt):
        FederatedServer(cfg3, tmp_path / "run", t).run()
    assert json.loads((tmp_path / "run/checkpoint.json").read_text())["round"] == 2
    # nodes restart too (new processes read their state files); the server resumes at round 3
    nodes2 = {n: ClientNode(cfg3, node.users, node.state_dir, data, split) for n, node in nodes.items()}
    assert {n.trained_round for n in nodes2.values()} >= {2}
    FederatedServer(cfg3, tmp_path / "run", Loopback(nodes2)).run()
    sim = build_federation(cfg3, data, split)
    for _ in range(3):
        sim.run_round()
    ck = __import__("safetensors.torch", fromlist=["load_file"]).load_file(str(tmp_path / "run/checkpoint.safetensors"))
    for k in ("dec_W1", "dec_out"):
        torch.testing.assert_close(ck[f"global.{k}"], sim.global_p[k], atol=1e-5, rtol=0)
    ref = __import__("safetensors.torch", fromlist=["load_file"]).load_file(str(tmp_path / "whole/run/checkpoint.safetensors"))
    assert ck.keys() == ref.keys() and (PROTOTYPES_TENSOR in ck) == prototypes
    for k in ck:
        torch.testing.assert_close(ck[k], ref[k], atol=0, rtol=0)           # bit-identical
    lines = [json.loads(x)["round"] for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert lines == [1, 2, 3]


def test_corrupt_node_state_reinitializes_with_a_warning(synth, tmp_path, caplog):
    cfg = _cfg(synth)
    nodes, data, split = _nodes(cfg, tmp_path, parts=1)
    node = nodes[100]
    node.train(0, 0.1, node.active[:5], {k: v.numpy() for k, v in node.fed.global_p.items()
                                         if k in ("dec_W1", "dec_b1", "dec_out", "dec_ob")})
    p = node.state_dir / STATE_FILE
    p.write_bytes(p.read_bytes()[:100])                              # truncated by a crash or disk error
    with caplog.at_level(logging.WARNING):
        again = ClientNode(cfg, node.users, node.state_dir, data, split)
    assert "re-initialized the encoders" in caplog.text and again.trained_round == -1
    fresh = build_federation(cfg, data, split)
    torch.testing.assert_close(again.fed.store.full("enc_W2")[0], fresh.store.full("enc_W2")[0])


def test_a_node_with_another_config_is_refused(synth, tmp_path, caplog):
    cfg = _cfg(synth)
    other = _cfg(synth, optimizer={"lr": 0.05})
    nodes, data, split = _nodes(cfg, tmp_path, parts=2)
    nodes[101] = ClientNode(other, nodes[101].users, tmp_path / "x", data, split)
    with caplog.at_level(logging.WARNING):
        FederatedServer(cfg, tmp_path / "run", Loopback(nodes)).run()
    assert "different job config" in caplog.text
    recs = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert all(r["nodes"] == 1 for r in recs)


def test_dp_run_reports_epsilon_and_clips(synth, tmp_path):
    cfg = _cfg(synth, privacy={"dp": True, "noise_multiplier": 1.2, "clip": 0.5, "delta": 1e-3})
    nodes, *_ = _nodes(cfg, tmp_path)
    t = Loopback(nodes)
    summary = FederatedServer(cfg, tmp_path / "run", t).run()
    assert 0 < summary["epsilon"] < 50
    from federation.privacy.dp import epsilon
    assert summary["epsilon"] == pytest.approx(epsilon(1.2, 0.4, 3, 1e-3))
    ck = __import__("safetensors.torch", fromlist=["load_file"]).load_file(str(tmp_path / "run/checkpoint.safetensors"))
    assert all(torch.isfinite(v).all() for v in ck.values())
    # every update on the wire is within the clip, measured against the decoder its node received
    from federation.strategies.messages import update_norm
    norms = [update_norm(m, {k: torch.as_tensor(v) for k, v in dec.items()})
             for (_, content), dec in zip(t.sent, t.decoders) for m in decode_train_reply(content).updates.values()]
    assert norms and max(norms) <= 0.5 * (1 + 1e-4) and max(norms) > 0.25      # clipped, and not trivially small


def test_dp_math_clip_and_noise_free_aggregate_by_hand():
    from federation.strategies.messages import update_norm
    from federation.privacy.dp import DPSettings, clip_update, dp_aggregate, epsilon, noise_for_epsilon

    g = {"dec_out": torch.zeros(4, 2), "dec_ob": torch.zeros(4), "dec_W1": torch.zeros(2, 3), "dec_b1": torch.zeros(2)}
    m1 = {"item_ids": np.array([0, 2]), "dec_out": np.array([[3., 0], [0, 4]], np.float32),
          "dec_ob": np.zeros(2, np.float32), "dec_W1": np.zeros((2, 3), np.float32),
          "dec_b1": np.zeros(2, np.float32), "weight": np.asarray(1.0, np.float32)}
    c, n = clip_update(m1, g, 1.0)
    assert n == pytest.approx(5.0) and update_norm(c, g) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(c["dec_out"], [[0.6, 0], [0, 0.8]], atol=1e-6)
    m2 = dict(m1, item_ids=np.array([2, 3]), dec_out=np.array([[0.5, 0], [0, 0]], np.float32))
    new = dp_aggregate(g, [m1, m2], DPSettings(0.0, 1.0, 1e-5), expected_clients=4.0)
    # sum of clipped deltas / 4: row 0 = (0.6, 0)/4, row 2 = ((0, .8) + (.5, 0))/4, rows 1, 3 unchanged (0)
    np.testing.assert_allclose(new["dec_out"].numpy(), [[0.15, 0], [0, 0], [0.125, 0.2], [0, 0]], atol=1e-6)
    noisy = dp_aggregate(g, [m1, m2], DPSettings(1.0, 1.0, 1e-5, noise_seed=3), expected_clients=4.0)
    assert (noisy["dec_out"][1] != 0).all()                      # noise on rows nobody sent, too
    assert epsilon(1.0, 0.1, 100, 1e-5) > epsilon(2.0, 0.1, 100, 1e-5) > epsilon(2.0, 0.1, 10, 1e-5) > 0
    s = noise_for_epsilon(4.0, 0.3, 300, 1e-4)
    assert epsilon(s, 0.3, 300, 1e-4) == pytest.approx(4.0, rel=1e-3)


def test_dp_clips_and_noises_the_content_projection_by_hand():
    """A content-aware model's projection dec_P is part of the clipped update (its change counts in the
    norm) and is averaged and noised like the other shared coordinates."""
    from federation.privacy.dp import DPSettings, clip_update, dp_aggregate

    g = {"dec_out": torch.zeros(2, 1), "dec_ob": torch.zeros(2), "dec_W1": torch.zeros(1, 1),
         "dec_b1": torch.zeros(1), "dec_P": torch.zeros(1, 2)}
    m = {"item_ids": np.array([0]), "dec_out": np.array([[3.0]], np.float32), "dec_ob": np.zeros(1, np.float32),
         "dec_W1": np.zeros((1, 1), np.float32), "dec_b1": np.zeros(1, np.float32),
         "dec_P": np.array([[0.0, 4.0]], np.float32), "weight": np.asarray(1.0, np.float32)}
    c, n = clip_update(m, g, 1.0)
    assert n == pytest.approx(5.0)                                   # |(3, 4)|: the projection counts
    np.testing.assert_allclose(c["dec_out"], [[0.6]], atol=1e-6)
    np.testing.assert_allclose(c["dec_P"], [[0.0, 0.8]], atol=1e-6)
    new = dp_aggregate(g, [m], DPSettings(0.0, 1.0, 1e-5), expected_clients=2.0)
    np.testing.assert_allclose(new["dec_out"].numpy(), [[0.3], [0.0]], atol=1e-6)
    np.testing.assert_allclose(new["dec_P"].numpy(), [[0.0, 0.4]], atol=1e-6)
    noisy = dp_aggregate(g, [m], DPSettings(1.0, 1.0, 1e-5, noise_seed=1), expected_clients=2.0)
    assert (noisy["dec_P"] != new["dec_P"]).all()


def test_flower_cli_bad_input_is_one_line(tmp_path):
    from cli_inprocess import fedrec

    cases = [(["flower", "run", "configs/ml100k-explicit.yaml", "--superlink", "127.0.0.1:1"], "does not answer"),
             (["flower", "supernode", "--superlink", "127.0.0.1:1", "--partition", "3/3"], "--partition"),
             (["flower", "run", str(tmp_path / "nope.yaml"), "--superlink", "127.0.0.1:1"], "no such config"),
             (["flower", "superlink", "--certs", str(tmp_path)], "is missing")]
    for args, want in cases:
        r = fedrec(*args)
        lines = [ln for ln in r.stderr.strip().splitlines() if ln]
        assert r.returncode == 2 and len(lines) == 1 and want in lines[0] and "Traceback" not in r.stderr, r.stderr


def test_a_packed_train_reply_round_trips_and_a_broken_one_is_refused():
    """train_reply_content packs the users' updates into one record; decode_train_reply gives each user's
    update back exactly; offsets that do not fit the rows, or an extra record, make it undecodable."""
    from flwr.app import Array, ArrayRecord
    from federation.deploy.flower_app import train_reply_content
    from federation.deploy.node import TrainReply
    rng = np.random.default_rng(0)

    def upd(n):
        return {"item_ids": rng.choice(50, n, replace=False).astype(np.int64),
                "dec_out": rng.normal(size=(n, 4)).astype(np.float32), "dec_ob": rng.normal(size=n).astype(np.float32),
                "dec_W1": rng.normal(size=(4, 3)).astype(np.float32), "dec_b1": rng.normal(size=4).astype(np.float32),
                "weight": np.asarray(1.0 + n, np.float32)}
    sent = {7: upd(3), 2: upd(5), 9: upd(1)}
    c = train_reply_content(TrainReply(sent, 3, 1.5))
    got = decode_train_reply(c)
    assert got.num_users == 3 and got.loss_sum == 1.5 and set(got.updates) == set(sent)
    for u, m in sent.items():
        assert set(got.updates[u]) == set(m)
        for k in m:
            assert got.updates[u][k].shape == m[k].shape and np.array_equal(got.updates[u][k], m[k])
    bad = train_reply_content(TrainReply(sent, 3, 1.5))
    bad["updates"]["offsets"] = Array(np.array([0, 5, 6, 8], np.int64))        # 8 rows claimed, 9 sent
    with pytest.raises(ValueError, match="inconsistent"):
        decode_train_reply(bad)
    extra = train_reply_content(TrainReply(sent, 3, 1.5))
    extra["update.7"] = ArrayRecord({"dec_W1": Array(np.zeros((4, 3), np.float32))})
    with pytest.raises(ValueError, match="unexpected record 'update.7'"):
        decode_train_reply(extra)
