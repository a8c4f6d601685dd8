"""Secure aggregation on the deployment round loop (loopback transport that encodes every reply as on the
wire): the decoder equals the in-process engine's, nothing but sealed shares leaves a node, a dead node or a
tampered share costs only its own users, and too few clients refuse the round without revealing anything."""
import json
import logging

import numpy as np
import pytest
import torch

from federation.deploy.node import SEALED_A, SEALED_B
from federation.deploy.server import FederatedServer
from federation.runs.config import parse_config
from federation.runs.jobs import build_federation
from loopback import Loopback, nodes_for
from recsys.synth import SynthSpec, write_catalogue


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    d = tmp_path_factory.mktemp("data") / "synth"
    write_catalogue(SynthSpec(n_users=90, n_items=40, mean_activity=10, seed=3), d, images=False, progress=False)
    return d


def _cfg(synth, rounds=3, **privacy):
    return parse_config({"name": "sec", "seed": 1, "data": {"path": str(synth)},
                         "model": {"mode": "explicit", "hidden": [16, 8]},
                         "federation": {"strategy": "personalfr", "rounds": rounds, "fraction": 0.4},
                         "eval": {"every": 0},
                         "privacy": {"secure_aggregation": True, "min_clients": 3, "pad_min": 4, **privacy}})


def _load(p):
    from safetensors.torch import load_file

    return load_file(str(p))


def _deploy_and_simulate(cfg, tmp_path):
    """Run ``cfg`` on three loopback nodes and the same rounds in process: (transport, nodes, engine, checkpoint)."""
    nodes, data, split = nodes_for(cfg, tmp_path)
    t = Loopback(nodes)
    FederatedServer(cfg, tmp_path / "run", t).run()
    sim = build_federation(cfg, data, split)
    for _ in range(cfg.federation.rounds):
        sim.run_round()
    return t, nodes, sim, _load(tmp_path / "run/checkpoint.safetensors")


def test_secure_deployment_equals_the_engine_and_sends_only_sealed_shares(synth, tmp_path):
    cfg = _cfg(synth)
    t, nodes, sim, ck = _deploy_and_simulate(cfg, tmp_path)
    for k in ("dec_W1", "dec_b1", "dec_out", "dec_ob"):
        # same revealed ring sums; float training order differs between a node and the engine, which can
        # move a value across a rounding boundary of the 2^-16 grid
        torch.testing.assert_close(ck[f"global.{k}"], sim.global_p[k], atol=1e-4, rtol=0)
    for _, content in t.sent:
        rec = {k: v.numpy() for k, v in content["updates"].items()}
        assert set(rec) == {"users", "offsets", SEALED_A, SEALED_B, SEALED_A + "_offsets", SEALED_B + "_offsets"}
        assert rec[SEALED_A].dtype == np.uint8 and rec[SEALED_B].dtype == np.uint8
    recs = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in recs] == [1, 2, 3] and all(r["participants"] == r["sampled"] for r in recs)


def test_a_dead_node_and_a_tampered_share_cost_only_their_users(synth, tmp_path, caplog):
    cfg = _cfg(synth, rounds=1)
    nodes, data, split = nodes_for(cfg, tmp_path)

    class Tamper(Loopback):
        def train(self, requests):
            out = super().train(requests)
            rep = out.get(101)
            if rep is not None and not isinstance(rep, Exception):
                u = min(rep.updates)
                bad = rep.updates[u][SEALED_B].copy()
                bad[-1] ^= 1
                rep.updates[u][SEALED_B] = bad
                self.tampered = u
            return out

    t = Tamper(nodes)
    t.down.add(102)
    with caplog.at_level(logging.WARNING):
        FederatedServer(cfg, tmp_path / "run", t, min_fraction=0.2).run()
    assert "does not verify" in caplog.text
    rec = json.loads((tmp_path / "run/metrics.jsonl").read_text().splitlines()[0])
    assert rec["failed_nodes"] == 1 and rec["rejected"] == 1
    # The engine over exactly the clients that were accepted gives the same decoder.
    sim = build_federation(cfg, data, split)
    users = sim.sample(0)
    kept = [u for u in users if u not in set(nodes[102].active.tolist()) and u != t.tampered]
    assert rec["participants"] == len(kept)
    sim.run_round(users=np.array(kept))
    ck = _load(tmp_path / "run/checkpoint.safetensors")
    torch.testing.assert_close(ck["global.dec_out"], sim.global_p["dec_out"], atol=1e-4, rtol=0)


def test_fewer_clients_than_the_minimum_refuse_the_round(synth, tmp_path, caplog):
    cfg = _cfg(synth, rounds=1, min_clients=1000)
    nodes, *_ = nodes_for(cfg, tmp_path)
    with caplog.at_level(logging.WARNING), pytest.raises(Exception, match="round 1 failed"):
        FederatedServer(cfg, tmp_path / "run", Loopback(nodes), max_retries=1).run()
    assert "fewer than the minimum 1000" in caplog.text
    assert not (tmp_path / "run/checkpoint.safetensors").exists()


def test_secure_aggregation_with_dp_clips_noises_and_equals_the_engine(synth, tmp_path):
    """privacy.dp with secure aggregation: nodes clip, each aggregator adds its seeded noise to its share,
    the server applies the DP rule; the in-process engine adds the same noise to the same ring sums."""
    import dataclasses

    cfg = _cfg(synth, rounds=2, dp=True, noise_multiplier=0.5, clip=0.5, min_clients=1)
    nodes, data, split = nodes_for(cfg, tmp_path)
    server = FederatedServer(cfg, tmp_path / "run", Loopback(nodes))
    server.secagg = dataclasses.replace(server.secagg, noise_seed=7)
    server.settings = dataclasses.replace(server.settings, secagg=server.secagg)
    server.run()
    sim = build_federation(cfg, data, split)
    sim.cfg = dataclasses.replace(sim.cfg, secagg=dataclasses.replace(sim.cfg.secagg, noise_seed=7))
    assert sim.cfg.secagg.noise_std == pytest.approx(0.25) and not sim.cfg.secagg.counts
    for _ in range(cfg.federation.rounds):
        sim.run_round()
    ck = _load(tmp_path / "run/checkpoint.safetensors")
    for k in ("dec_W1", "dec_out", "dec_ob"):
        torch.testing.assert_close(ck[f"global.{k}"], sim.global_p[k], atol=1e-4, rtol=0)
    recs = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert recs[-1]["epsilon"] > 0
    # The noise reaches rows nobody touched: their change is pure noise of the right size.
    untouched = (np.diff(sim.train.tocsc().indptr) == 0)
    if untouched.any():
        assert (ck["global.dec_ob"][torch.as_tensor(untouched)] != 0).any()


def test_fixed_rows_deployment_equals_the_engine_and_every_share_has_one_size(synth, tmp_path):
    cfg = _cfg(synth, rounds=2, fixed_rows=8)
    t, nodes, sim, ck = _deploy_and_simulate(cfg, tmp_path)
    for k in ("dec_W1", "dec_out", "dec_ob"):
        torch.testing.assert_close(ck[f"global.{k}"], sim.global_p[k], atol=1e-4, rtol=0)
    sizes = set()
    for _, content in t.sent:
        off = content["updates"][SEALED_A + "_offsets"].numpy()
        sizes |= set(np.diff(off).tolist())
    assert len(sizes) == 1                          # an aggregator cannot tell heavy from light users
    assert (np.diff(sim.train.indptr) > 8).any()    # (some users had more rows than they sent)


def test_prototype_code_sums_go_through_secure_aggregation(synth, tmp_path):
    """prototypes.enabled with secure aggregation: each user's prototype stats leave its node as sealed
    additive shares (no node-level sum, no code in the clear); the server's prototypes equal the
    in-process engine's, which quantizes and sums the same per-user stats."""
    from federation.engine import prototypes as P
    from federation.runs.jobs import prototype_settings
    from federation.simulation import PROTOTYPES_TENSOR

    cfg = _cfg(synth, rounds=2, min_clients=2)
    cfg = parse_config({**cfg.model_dump(mode="json"), "prototypes": {"enabled": True, "k": 3, "blend": 0.5, "iters": 2}})
    t, nodes, sim, ck = _deploy_and_simulate(cfg, tmp_path)
    sim.fit_prototypes(prototype_settings(cfg))
    torch.testing.assert_close(ck[PROTOTYPES_TENSOR], sim.prototypes, atol=1e-4, rtol=0)
    for n, m in t.proto_sent:
        assert set(m) == {"users", SEALED_A, SEALED_B}
        assert m[SEALED_A].dtype == np.uint8 and m[SEALED_B].shape[0] == len(nodes[n].active)
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert summary["prototypes"]["rounds"] == P.rounds_needed(prototype_settings(cfg)) + 1
    assert sum(summary["prototypes"]["sizes"]) <= len(sim.active_users)
