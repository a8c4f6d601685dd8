"""Real Flower deployments on 127.0.0.1: a flower-superlink, flower-supernode processes bound to
partitions, ``flwr run`` of this repository's app. Slow (every Flower message starts a fresh ClientApp
process that imports torch), so few rounds on a small synthetic catalogue."""
import json
import time

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from federation.runs.config import parse_config
from federation.deploy.process import LocalFederation, alive, make_certificates, make_node_key
from federation.runs.jobs import build_federation, prepare_data, prototype_settings
from federation.simulation import PROTOTYPES_TENSOR
from recsys.synth import SynthSpec, write_catalogue

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("flower")
    write_catalogue(SynthSpec(n_users=90, n_items=40, mean_activity=10, seed=3), root / "data", images=False,
                    progress=False)
    cfg = {"name": "fl", "seed": 1, "data": {"path": str(root / "data")}, "model": {"mode": "explicit", "hidden": [16, 8]},
           "federation": {"strategy": "personalfr", "rounds": 2, "fraction": 0.4}, "eval": {"every": 0}}
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    return root, parse_config(cfg)


def _assert_all_gone(pids):
    assert pids and not alive(pids)        # SuperLink, SuperNodes, SuperExecs, app processes: all gone


def _records(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _run_and_compare(cfg_path, cfg, tmp_path, nodes=3, capture=False, secured=False):
    """flwr run of ``cfg_path`` on ``nodes`` SuperNodes; the checkpoint must equal the in-process
    engine's global parameters after the same rounds. Returns (metrics records, engine). capture: keep
    every reply the ServerApp receives and every node's personal state per round (tmp_path/wire, /state).
    secured: TLS on the SuperLink and SuperNode authentication (each node's public key registered)."""
    env = {"FEDREC_CAPTURE_WIRE": str(tmp_path / "wire"), "FEDREC_CAPTURE_STATE": str(tmp_path / "state")} if capture else {}
    tls = keys = None
    if secured:
        tls = make_certificates(tmp_path / "certs")
        keys = [make_node_key(tmp_path / "keys", f"node{i}") for i in range(nodes)]
    fed = LocalFederation(tmp_path, nodes, env=env, tls=tls, node_keys=[k for k, _ in keys] if keys else None)
    try:
        fed.start_superlink(node_auth=secured)
        for _, pub in keys or []:
            fed.register_node(pub)
        for i in range(nodes):
            fed.start_node(i)
        r = fed.run({"job-config": str(cfg_path), "run-dir": str(tmp_path / "run"), "min-nodes": nodes,
                     "wait-s": 90, "round-timeout": 120}, timeout=480)
        pids = fed.all_pids()
    finally:
        fed.stop()
    _assert_all_gone(pids)
    assert r.returncode == 0, (tmp_path / "logs/flwr-run.log").read_text()[-3000:]
    if secured:
        link = (tmp_path / "logs/superlink.log").read_text()
        assert "running on https://127.0.0.1" in link                   # TLS, not plain HTTP
        assert "authentication is disabled" not in link and link.count("register-node HTTP/1.1\" 200") == nodes
    recs = _records(tmp_path / "run")
    R = cfg.federation.rounds
    assert [x["round"] for x in recs] == list(range(1, R + 1))
    assert all(x["nodes"] == nodes and x["rejected"] == 0 for x in recs)
    data, split = prepare_data(cfg)
    sim = build_federation(cfg, data, split)
    for _ in range(R):
        sim.run_round()
    ck = load_file(str(tmp_path / "run/checkpoint.safetensors"))
    protos = ck.pop(PROTOTYPES_TENSOR, None)
    ck = {k: v for k, v in ck.items() if k.startswith("global.")}     # FedCAC's server also keeps server.*
    assert set(ck) == {f"global.{k}" for k in sim.global_p if not k.startswith("enc")}
    for k in ck:
        torch.testing.assert_close(ck[k], sim.global_p[k.removeprefix("global.")], atol=1e-5, rtol=0)
    assert (protos is not None) == cfg.prototypes.enabled
    if protos is not None:                                   # fitted through query.prototypes messages
        sim.fit_prototypes(prototype_settings(cfg))
        torch.testing.assert_close(protos, sim.prototypes, atol=1e-4, rtol=0)
    return recs, sim


def test_flower_run_equals_the_in_process_engine(job, tmp_path):
    """With prototypes on (k 2): after the rounds, the query.prototypes messages reach every SuperNode,
    the server's prototypes equal the in-process fit, and the federated evaluation scores with the
    blended codes (its test RMSE equals the in-process model's with the same prototypes)."""
    from federation.strategies.comm import client_bytes
    from federation.simulation import FederatedAutoencoder
    from recsys.evaluation import evaluate_model

    root, _ = job
    d = yaml.safe_load((root / "cfg.yaml").read_text())
    d["prototypes"] = {"enabled": True, "k": 2, "blend": 0.75, "iters": 1}
    (tmp_path / "protos.yaml").write_text(yaml.safe_dump(d))
    cfg = parse_config(d)
    recs, sim = _run_and_compare(tmp_path / "protos.yaml", cfg, tmp_path, capture=True)
    _assert_wire_carries_no_personal_state(tmp_path, nodes=3, rounds=cfg.federation.rounds)
    # measured bytes on the wire match the personalfr accounting of the in-process engine
    n = np.diff(sim.train.indptr)
    for r, rec in enumerate(recs):
        assert rec["bytes_up"] == sum(client_bytes("personalfr", sim.shape, int(n[u]))[0] for u in sim.sample(r))
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert summary["prototypes"]["rounds"] == 3 and summary["prototypes"]["failed_nodes"] == 0
    data, split = prepare_data(cfg)
    r = data.ratings.data
    central = evaluate_model(FederatedAutoencoder(sim, (float(r.min()), float(r.max()))), data, split, "test")
    assert summary["test"]["rmse"] == pytest.approx(central["rmse"], abs=1e-4)


def test_flower_content_job_over_tls_equals_the_in_process_engine(job, tmp_path):
    """A content-aware job over a real SuperLink with TLS and SuperNode authentication: each SuperNode computes the public item content
    (MiniLM text features, cached under the data dir), the server learns the projection's width from
    hello, and decoder plus projection equal the in-process engine's. With holder-weighted content and
    content-only steps: the holder counts go up in hello and come back in every train message, so
    each SuperNode weights the content by the whole federation's counts without seeing others' data."""
    from federation.runs.jobs import holder_counts
    from federation.deploy.server import HOLDERS_FILE
    from recsys.io import load_arrays

    root, _ = job
    d = yaml.safe_load((root / "cfg.yaml").read_text())
    d["content"] = {"enabled": True, "backend": "sentence", "model": "minilm", "fusion": "text", "scale": 1.0,
                    "holder_weight": 5.0, "row_dropout": 0.5}
    (tmp_path / "content.yaml").write_text(yaml.safe_dump(d))
    cfg = parse_config(d)
    _, sim = _run_and_compare(tmp_path / "content.yaml", cfg, tmp_path, nodes=2, secured=True)
    assert sim.shape.content_dim == 385
    man = json.loads((tmp_path / "run/manifest.json").read_text())
    assert man["content"].startswith("385:") and man["holders"]["nodes"] == 2
    data, split = prepare_data(cfg)
    np.testing.assert_array_equal(load_arrays(tmp_path / "run" / HOLDERS_FILE)["holders"],
                                  holder_counts(split.matrix(data, "train")))


def test_flower_survives_client_crash_nan_updates_and_a_node_reconnecting(job, tmp_path):
    root, cfg = job
    fed = LocalFederation(tmp_path, 3)
    run = tmp_path / "run"
    try:
        fed.start_superlink()
        fed.start_node(0, {"FEDREC_FAULT_EXIT_AT_ROUND": "1"})   # its ClientApp process dies in round 1
        fed.start_node(1, {"FEDREC_FAULT_NAN_AT_ROUND": "2"})    # sends NaN updates in round 2
        fed.start_node(2)
        import threading
        box = {}
        t = threading.Thread(target=lambda: box.update(r=fed.run(
            {"job-config": str(root / "cfg.yaml"), "run-dir": str(run), "rounds": 3, "min-nodes": 3, "wait-s": 90,
             "round-timeout": 60, "min-fraction": 0.3}, timeout=600)))
        t.start()
        # node 2 disconnects after round 1 and comes back (same state dir, new process, new node id)
        t0 = time.monotonic()
        while not (run / "checkpoint.json").exists() and time.monotonic() - t0 < 400:
            time.sleep(0.5)
        fed.stop_node(2)
        fed.start_node(2)
        t.join()
        pids = fed.all_pids()
    finally:
        fed.stop()
    _assert_all_gone(pids)
    assert box["r"].returncode == 0, (tmp_path / "logs/flwr-run.log").read_text()[-3000:]
    recs = _records(run)
    assert [x["round"] for x in recs] == [1, 2, 3]
    assert recs[0]["failed_nodes"] == 1 and recs[0]["participants"] < recs[0]["sampled"]
    assert recs[1]["rejected"] > 0
    ck = load_file(str(run / "checkpoint.safetensors"))
    assert all(torch.isfinite(v).all() for v in ck.values())
    log = (tmp_path / "logs/flwr-run.log").read_text()
    assert "NaN or infinite" in log
    node2 = (tmp_path / "logs/supernode-2.log").read_text()
    assert "restored the state of" in node2                       # the reconnected node kept its users' state


def test_flower_secure_aggregation_survives_a_dead_node_and_a_bad_share(job, tmp_path):
    """privacy.secure_aggregation over a real SuperLink: SuperNodes send only sealed DPF/masked shares;
    a ClientApp that dies in round 1 and a share that fails to verify in round 2 cost only their users,
    nothing of theirs is revealed, and the decoder equals the in-process engine run over exactly the
    clients that were accepted, round by round."""
    from federation.privacy import secagg as sa

    root, _ = job
    d = yaml.safe_load((root / "cfg.yaml").read_text())
    d["privacy"] = {"secure_aggregation": True, "min_clients": 3, "pad_min": 4}
    (tmp_path / "sec.yaml").write_text(yaml.safe_dump(d))
    cfg = parse_config(d)
    fed = LocalFederation(tmp_path, 3)
    run = tmp_path / "run"
    try:
        fed.start_superlink()
        fed.start_node(0, {"FEDREC_FAULT_EXIT_AT_ROUND": "1"})
        fed.start_node(1, {"FEDREC_FAULT_NAN_AT_ROUND": "2"})
        fed.start_node(2)
        r = fed.run({"job-config": str(tmp_path / "sec.yaml"), "run-dir": str(run), "min-nodes": 3, "wait-s": 90,
                     "round-timeout": 60, "min-fraction": 0.3}, timeout=480)
        pids = fed.all_pids()
    finally:
        fed.stop()
    _assert_all_gone(pids)
    log = (tmp_path / "logs/flwr-run.log").read_text()
    assert r.returncode == 0, log[-3000:]
    recs = _records(run)
    assert [x["round"] for x in recs] == [1, 2]
    assert recs[0]["failed_nodes"] == 1 and recs[1]["rejected"] == 1 and "does not verify" in log
    data, split = prepare_data(cfg)
    sim = build_federation(cfg, data, split)
    from federation.deploy.node import partition_users
    node_users = [set(partition_users(data.n_users, i, 3).tolist()) for i in range(3)]
    lay = sim.secure_layout()
    for rnd, rec in enumerate(recs):
        users = sim.sample(rnd)
        if rnd == 0:
            kept = [u for u in users if u not in node_users[0]]
            assert rec["bytes_up"] == int(sa.upload_bytes(sim.n_per_user[kept], lay, sim.cfg.secagg).sum())
        else:
            bad = min(u for u in users if u in node_users[1])
            kept = [u for u in users if u != bad]
            assert rec["bytes_up"] == int(sa.upload_bytes(sim.n_per_user[users], lay, sim.cfg.secagg).sum())
        assert rec["participants"] == len(kept)
        sim.run_round(users=np.array(kept))
    ck = load_file(str(run / "checkpoint.safetensors"))
    for k in ("dec_W1", "dec_b1", "dec_out", "dec_ob"):
        torch.testing.assert_close(ck[f"global.{k}"], sim.global_p[k], atol=1e-4, rtol=0)


def test_flower_fedcac_sends_each_client_its_own_model(job, tmp_path):
    """FedCAC over a real SuperLink: from round 2 the ServerApp sends each sampled user that has trained
    its own start model inside the train message, the ClientApps train from it, and the decoder equals
    the in-process engine's."""
    root, _ = job
    d = yaml.safe_load((root / "cfg.yaml").read_text())
    d["federation"].update({"strategy": "fedcac", "options": {"tau": 0.5, "beta": 3}, "rounds": 3, "fraction": 0.5})
    (tmp_path / "cac.yaml").write_text(yaml.safe_dump(d))
    recs, sim = _run_and_compare(tmp_path / "cac.yaml", parse_config(d), tmp_path, nodes=2)
    assert recs[0]["bytes_down"] < recs[-1]["bytes_down"]       # the start models travel from round 2 on
    assert int(sim.server_state["cac.trained"].sum()) > 0



def _assert_wire_carries_no_personal_state(tmp_path, nodes, rounds):
    """Every reply the ServerApp received over the real SuperLink (hello, train, evaluate, prototypes),
    as it arrived, checked value by value and row by row against every node's personal state before and
    after each round it trained: none of it appears, not even scaled."""
    from safetensors import safe_open
    from safetensors.numpy import load_file as load_np

    from test_deployment import assert_no_personal_values

    snaps = {p.name: load_np(str(p)) for p in (tmp_path / "state").glob("state-*.safetensors")}
    assert len(snaps) == nodes * 2 * rounds                          # nodes x before/after x rounds
    personal = {f"{n}.{k}": v for n, s in snaps.items() for k, v in s.items()}
    kinds = set()
    replies = sorted((tmp_path / "wire").glob("*.safetensors"))
    for p in replies:
        with safe_open(str(p), "numpy") as f:
            kinds.add(f.metadata()["kind"])
        arrays = {k: v for k, v in load_np(str(p)).items() if v.dtype.kind == "f"}   # ids and counts are ints
        if arrays:
            assert_no_personal_values(arrays, personal)
    assert {"query", "train", "evaluate", "query.prototypes"} <= kinds and len(replies) >= nodes * (1 + rounds)
