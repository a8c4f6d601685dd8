"""FedCAC: the conformance suite, PFLlib's equations on hand-computed cases, and the server's plan."""
from strategy_conformance import StrategyConformance


class TestFedCAC(StrategyConformance):
    strategy = "fedcac"
    options = {"tau": 0.5, "beta": 2}


import numpy as np
import pytest
import torch

from federation.engine.local_sgd import SGDConfig
from federation.simulation import Federation, FedSettings
from federation.strategies import fedcac
from recsys.errors import ConfigError
from recsys.models.autoencoder import AEShape
from recsys.splits import ratio_split


def test_sensitivity_and_critical_mask_by_hand():
    """clientcac.evaluate_critical_parameter: c = |(after - before) * after|; the top tau of each tensor."""
    c = fedcac.sensitivity(torch.tensor([1.0, 2.0, 0.0, 1.0]), torch.tensor([1.5, 1.0, 0.5, 1.0]))
    torch.testing.assert_close(c, torch.tensor([0.75, 1.0, 0.25, 0.0]))
    assert fedcac.critical_mask(c, 0.5).tolist() == [True, True, False, False]      # t = 2nd largest = 0.75
    assert fedcac.critical_mask(c, 0.75).tolist() == [True, True, True, False]     # t = 0.25
    assert fedcac.critical_mask(c, 0.2).tolist() == [False] * 4                     # floor(0.8) = 0: none
    # t <= 1e-10: the smallest nonzero sensitivity becomes the threshold
    assert fedcac.critical_mask(torch.tensor([0.2, 0.0, 0.0, 0.0]), 0.5).tolist() == [True, False, False, False]
    # every sensitivity zero: t stays 0 and c >= 0 marks all (the reference's "abnormal" case)
    assert fedcac.critical_mask(torch.zeros(4), 0.5).tolist() == [True] * 4
    # a 2-d tensor is one tensor: the threshold is over all its entries
    m = fedcac.critical_mask(torch.tensor([[4.0, 1.0], [3.0, 2.0]]), 0.5)
    assert m.tolist() == [[True, False], [True, False]]


def test_batched_masks_equal_the_per_tensor_rule():
    g = torch.Generator().manual_seed(0)
    c = torch.rand(6, 5, 4, generator=g)
    c[1] = 0.0                                   # all zero
    c[2] = 0.0
    c[2, 0, 0] = 0.3                             # t <= 1e-10 -> smallest nonzero
    c[3, :, :2] = 0.0
    for tau in (0.0, 0.1, 0.5, 0.9, 1.0):
        got = fedcac.critical_masks(c, tau)
        for b in range(6):
            assert torch.equal(got[b], fedcac.critical_mask(c[b], tau)), (tau, b)


def test_overlaps_threshold_and_collaborators_by_hand():
    """servercac.get_customized_global_models: o_ij = 1 - sum|m_i - m_j| / (2 sum m_i);
    threshold = mean + (r + 1)/beta (max - mean) over the pairs i != j."""
    M = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 0, 0]], dtype=torch.float64)
    o = fedcac.overlaps(M @ M.T, M.sum(1), M.sum(1))
    expect = torch.tensor([[1.0, 0.5, 1.0], [0.5, 1.0, 0.5], [1.0, 0.5, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(o, expect)
    loop = torch.tensor([[1 - float((M[i] - M[j]).abs().sum()) / (2 * float(M[i].sum())) for j in range(3)]
                         for i in range(3)], dtype=torch.float64)
    torch.testing.assert_close(o, loop)
    valid = ~torch.eye(3, dtype=torch.bool)
    thr = fedcac.collaborator_threshold(o, valid, rnd=0, beta=2)        # mean 4/6, max 1
    assert thr == pytest.approx(4 / 6 + 0.5 * (1 - 4 / 6))
    assert ((o >= thr) & valid).tolist() == [[False, False, True], [False, False, False], [True, False, False]]
    assert fedcac.collaborator_threshold(o, valid, rnd=5, beta=2) > 1      # after beta rounds: nobody


def test_pack_round_trip():
    m = torch.rand(5, 37, generator=torch.Generator().manual_seed(0)) > 0.5
    assert torch.equal(fedcac.unpack(fedcac.pack(m), 37, torch.float32).bool(), m)
    assert fedcac.pack(m).shape == (5, 5)


def _fed(tiny_data, **opt):
    train = ratio_split(tiny_data, seed=1).matrix(tiny_data, "train")
    shape = AEShape(tiny_data.n_items, h1=8, h2=4, mode="explicit")
    cfg = FedSettings(strategy="fedcac", options={"tau": 0.5, "beta": 3, **opt}, rounds=3, fraction=0.75,
                      local_epochs=2, seed=0, sgd=SGDConfig(clip_norm=None))
    return Federation(shape, cfg, train, dtype=torch.float64)


def _reference_customized(fed, users, rnd):
    """servercac.get_customized_global_models + clientcac.set_parameters as plain loops over clients and
    parameters (the server's stored models and masks as per-client dicts; item rows keyed by item)."""
    st, train, beta = fed.server_state, fed.train, fed.strategy.options.beta
    H1, H2 = fed.shape.h1, fed.shape.h2
    D, R = H1 * H2 + H1, H1 + 1
    models, masks = {}, {}
    for u in range(train.shape[0]):
        if not bool(st[fedcac.TRAINED][u]):
            continue
        lo, hi = train.indptr[u], train.indptr[u + 1]
        dm = fedcac.unpack(st[fedcac.DMASK][u:u + 1], D, torch.float64)[0]
        rm = fedcac.unpack(st[fedcac.RMASK][lo:hi], R, torch.float64)
        models[u] = {"dense": st[fedcac.DENSE][u], **{("row", int(t)): st[fedcac.ROWS][lo + k]
                                                       for k, t in enumerate(train.indices[lo:hi])}}
        masks[u] = {"dense": dm, **{("row", int(t)): rm[k] for k, t in enumerate(train.indices[lo:hi])}}

    def overlap(i, j):
        diff = sum(float((masks[i][k] - masks[j].get(k, torch.zeros_like(masks[i][k]))).abs().sum())
                   for k in masks[i])
        diff += sum(float(masks[j][k].sum()) for k in masks[j] if k not in masks[i])
        size = sum(float(v.sum()) for v in masks[i].values())
        return 1 - diff / (2 * size)

    sel = [int(u) for u in users if int(u) in models]
    pairs = {(i, j): overlap(i, j) for i in sel for j in models if j != i}
    vals = list(pairs.values())
    thr = np.mean(vals) + (rnd + 1) / beta * (max(vals) - np.mean(vals))
    g = fed.global_p
    out = {}
    for i in sel:
        collab = [i] + [j for j in models if j != i and pairs[(i, j)] >= thr]
        start = {}
        for k, m in masks[i].items():
            holders = [models[j][k] for j in collab if k in models[j]]
            cust = sum(holders) / len(holders)
            glob = (torch.cat([g["dec_W1"].reshape(-1), g["dec_b1"]]) if k == "dense"
                    else torch.cat([g["dec_out"][k[1]], g["dec_ob"][k[1]:k[1] + 1]]))
            start[k] = m * cust + (1 - m) * glob
        out[i] = start
    return out


def test_the_vectorized_plan_equals_the_reference_loops(tiny_data):
    fed = _fed(tiny_data)
    fed.run_round("generic")
    users = fed.sample(1)
    fed.begin_round(users, 1)
    ref = _reference_customized(fed, users, 1)
    assert ref, "no client of round 2 trained in round 1"
    checked = 0
    for c in fed.cohorts(users):
        got = fed.strategy.client_start(fed.server_state, fed._plan[1], c, fed.global_p, fed.train, torch.float64)
        for b, u in enumerate(c.users.tolist()):
            if u not in ref:
                continue
            dense = torch.cat([got["dec_W1"][b].reshape(-1), got["dec_b1"][b]])
            torch.testing.assert_close(dense, ref[u]["dense"], atol=1e-12, rtol=0)
            for e in (c.seg == b).nonzero().squeeze(1).tolist():
                row = torch.cat([got["dec_out"][e], got["dec_ob"][e:e + 1]])
                torch.testing.assert_close(row, ref[u][("row", int(c.items[e]))], atol=1e-12, rtol=0)
            checked += 1
    assert checked >= 2
    # collaboration changed someone's start: the customized model is not the global one
    g = torch.cat([fed.global_p["dec_W1"].reshape(-1), fed.global_p["dec_b1"]])
    assert any((ref[u]["dense"] - g).abs().max() > 1e-6 for u in ref)


def test_server_keeps_trained_models_and_masks_of_tau(tiny_data):
    fed = _fed(tiny_data, tau=0.25)
    users = fed.sample(0)
    fed.run_round("generic")
    st = fed.server_state
    assert st[fedcac.TRAINED].nonzero().squeeze(1).tolist() == sorted(int(u) for u in users)
    D = fed.shape.h1 * fed.shape.h2 + fed.shape.h1
    dm = fedcac.unpack(st[fedcac.DMASK], D)[torch.as_tensor(users)]
    # tau of dec_W1 (32 entries -> 8) plus tau of dec_b1 (8 -> 2), per client
    assert dm.sum(1).tolist() == [10.0] * len(users)


def test_secure_aggregation_and_dp_are_refused(tmp_path):
    from federation.runs.config import parse_config
    from federation.runs.jobs import fed_settings

    base = {"name": "x", "data": {"path": "data/synthetic"}, "model": {"mode": "explicit"},
            "federation": {"strategy": "fedcac", "weighting": "uniform"}}
    for privacy in ({"secure_aggregation": True}, {"dp": True, "noise_multiplier": 1.0}):
        with pytest.raises(ConfigError, match="each client's own update"):
            fed_settings(parse_config({**base, "privacy": privacy}))


def test_deployed_server_sends_each_client_its_model_and_keeps_the_in_process_state(tmp_path):
    """Over the loopback: the server learns item ids from first updates, sends per-user start models,
    and after a restart resumes with the same per-client state; everything equals the in-process run."""
    from safetensors.torch import load_file

    from federation.deploy.server import FederatedServer
    from federation.runs.config import parse_config
    from federation.runs.jobs import build_federation
    from loopback import Loopback, nodes_for, synth_catalogue

    from federation.deploy.node import ClientNode

    d = {"name": "cac", "seed": 1, "data": {"path": str(synth_catalogue(tmp_path))},
         "model": {"mode": "implicit", "hidden": [16, 8]}, "eval": {"every": 0},
         "federation": {"strategy": "fedcac", "options": {"tau": 0.5, "beta": 4}, "rounds": 3, "fraction": 0.5}}
    cfg = parse_config(d)
    nodes, data, split = nodes_for(cfg, tmp_path)
    sent = []

    class Recording(Loopback):
        def train(self, requests):
            sent.extend(r.starts for r in requests.values())
            if len(sent) > 6 and self.die:              # round 3: the server dies before aggregating it
                raise KeyboardInterrupt
            return super().train(requests)

    t = Recording(nodes)
    t.die = True
    with pytest.raises(KeyboardInterrupt):
        FederatedServer(cfg, tmp_path / "run", t).run()
    nodes2 = {n: ClientNode(cfg, node.users, node.state_dir, data, split) for n, node in nodes.items()}
    t2 = Recording(nodes2)
    t2.die = False
    server = FederatedServer(cfg, tmp_path / "run", t2)      # resumes after round 2 with its per-client state
    server.run()
    assert any(s for s in sent), "no per-user start model was sent"
    sim = build_federation(cfg, data, split)
    for _ in range(3):
        sim.run_round()
    ck = load_file(str(tmp_path / "run/checkpoint.safetensors"))
    for k in sim.strategy.shared:
        torch.testing.assert_close(ck[f"global.{k}"], sim.global_p[k], atol=1e-5, rtol=0)
    st, ref = server.per_client.state, sim.server_state
    trained = ref[fedcac.TRAINED].nonzero().squeeze(1)
    assert torch.equal(st[fedcac.TRAINED][:len(ref[fedcac.TRAINED])], ref[fedcac.TRAINED])
    torch.testing.assert_close(st[fedcac.DENSE][trained], ref[fedcac.DENSE][trained], atol=1e-5, rtol=0)
    dm, dr = fedcac.unpack(st[fedcac.DMASK][trained], 16 * 8 + 16), fedcac.unpack(ref[fedcac.DMASK][trained], 16 * 8 + 16)
    assert (dm != dr).float().mean() < 0.01          # masks: ties at the threshold may flip within float error


def test_start_models_travel_in_a_flower_record():
    from federation.deploy.flower_app import _starts, train_request_content
    from federation.deploy.server import TrainRequest
    from federation.strategies.messages import pack_starts, unpack_starts

    rng = np.random.default_rng(0)
    starts = {u: {"dec_W1": rng.random((4, 2), dtype=np.float32), "dec_b1": rng.random(4, dtype=np.float32),
                  "item_ids": np.sort(rng.choice(20, n, replace=False)), "dec_out": rng.random((n, 4), dtype=np.float32),
                  "dec_ob": rng.random(n, dtype=np.float32)} for u, n in ((3, 5), (7, 2))}
    req = TrainRequest(1, 0.1, np.array([3, 7, 9]), {"dec_W1": np.zeros((4, 2), np.float32)}, None,
                       starts=pack_starts(starts))
    back = unpack_starts(_starts(train_request_content(req)))
    assert sorted(back) == [3, 7]
    for u in starts:
        for k, v in starts[u].items():
            np.testing.assert_array_equal(back[u][k], v)
    assert _starts(train_request_content(TrainRequest(1, 0.1, np.array([1]), {}, None))) is None


def test_global_rows_are_the_holders_average_whatever_the_server_lr():
    """PFLlib's global model is the clients' average: participants/server_lr (steps from the global
    model) do not apply to clients that start from their own models."""
    from federation.strategies.base import RoundInfo

    s = fedcac.FedCAC()
    old = torch.zeros(3, 2)
    sums = torch.tensor([[2.0, 4.0], [0.0, 0.0], [3.0, 3.0]])
    wsum = torch.tensor([2.0, 0.0, 1.0])
    new = s.aggregate_rows("dec_out", old, sums, wsum, 5.0, RoundInfo(0.1, 1.0, "participants", 10.0))
    torch.testing.assert_close(new, torch.tensor([[1.0, 2.0], [0.0, 0.0], [3.0, 3.0]]))
