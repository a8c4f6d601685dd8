"""PFedGate: the conformance suite, and its equations on hand-computed cases."""
from strategy_conformance import StrategyConformance, tiny_fed


class TestPFedGate(StrategyConformance):
    strategy = "pfedgate"
    options: dict = {}


import numpy as np
import pytest
import torch

from federation.strategies import pfedgate
from recsys.errors import ConfigError
from recsys.models.autoencoder import AEShape


def test_budget_knapsack_and_gating_by_hand():
    assert [pfedgate.kept_blocks(16, s) for s in (1.0, 0.5, 0.3)] == [16, 8, 5]
    assert pfedgate.kept_blocks(4, 0.1) == 1
    g = torch.tensor([[0.9, 0.1, 0.5, 0.7]])
    assert pfedgate.knapsack(g, torch.ones(4), 2.0).tolist() == [[1.0, 0.0, 0.0, 1.0]]
    # unequal sizes: by value per size 0.45, 0.1, 0.5, 0.7 -> blocks 3 (size 1) and 2 (size 1) fill 2
    assert pfedgate.knapsack(g, torch.tensor([2.0, 1.0, 1.0, 1.0]), 2.0).tolist() == [[0.0, 0.0, 1.0, 1.0]]
    h = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    out = pfedgate.gated(h, torch.tensor([[0.9, 0.1]]), torch.tensor([[1.0, 0.0]]))
    torch.testing.assert_close(out, torch.tensor([[0.9, 1.8, 0.0, 0.0]]))
    assert pfedgate.decoder_flops(AEShape(100, h1=16, h2=8), 0.5, 4, rows=100) == 8 * (8 + 100)




@pytest.mark.parametrize("mode", ["explicit", "implicit"])
def test_dropped_blocks_are_sent_unchanged_and_kept_ones_train(tiny_data, mode):
    fed = tiny_fed(tiny_data, "pfedgate", {"sparsity": 0.25, "blocks": 4}, mode)
    users = fed.sample(0)
    g = {k: v.clone() for k, v in fed.global_p.items()}
    msgs, _ = fed.client_messages(users)
    for u in users:
        m = msgs[int(u)]
        W1 = torch.as_tensor(m["dec_W1"])
        same = (W1.double() - g["dec_W1"]).abs().amax(1) < 1e-7        # (H1,) unit unchanged (float32 message)
        assert same.reshape(4, 4).all(1).sum() == 3                                 # 3 of 4 blocks dropped
        assert not same.all()


def test_scores_gate_the_code(tiny_data):
    fed = tiny_fed(tiny_data, "pfedgate", {"sparsity": 0.5, "blocks": 4})
    fed.run_round("generic")
    u = np.array([1, 5])
    h3, _ = fed.user_hidden(u)
    p = fed.personal_values(u)
    gates = torch.sigmoid(torch.einsum("bkh,bh->bk", p[pfedgate.GATE_W], h3) + p[pfedgate.GATE_B])
    top = torch.zeros_like(gates).scatter(1, gates.topk(2, dim=1).indices, 1.0)
    hh = h3 * (gates * top).repeat_interleave(4, dim=1)
    torch.testing.assert_close(fed.user_scores(u), hh @ fed.global_p["dec_out"].T + fed.global_p["dec_ob"])


def test_blocks_must_divide_the_width():
    with pytest.raises(ConfigError, match="divide"):
        pfedgate.PFedGate({"blocks": 5}).check(AEShape(10, h1=16, h2=8), False)


def test_a_deployed_client_sends_only_its_kept_blocks(tiny_data):
    from federation.strategies.comm import client_bytes
    from federation.strategies.messages import RejectedUpdate, expand_update

    fed = tiny_fed(tiny_data, "pfedgate", {"sparsity": 0.25, "blocks": 4}, "explicit", dtype=torch.float32)
    users = fed.sample(0)
    full, _ = fed.client_messages(users)
    s = fed.strategy
    for u in users:
        m = s.compress(full[int(u)], fed.global_p)
        assert m["blocks"].tolist().count(1) == 1 and m["dec_W1"].shape == (4, 8) and m["dec_out"].shape[1] == 4
        assert sum(v.nbytes for v in m.values()) == client_bytes(s, fed.shape, int(fed.n_per_user[u]))[0]
        back = expand_update(m, fed.global_p, fed.shape)
        for k in full[int(u)]:
            np.testing.assert_array_equal(back[k], full[int(u)][k])
    dense = pfedgate.PFedGate({"sparsity": 1.0, "blocks": 4})
    assert client_bytes(s, fed.shape, 10)[0] < client_bytes(dense, fed.shape, 10)[0]
    bad = dict(m, blocks=np.array([1, 0, 2, 0], np.uint8))
    with pytest.raises(RejectedUpdate, match="blocks"):
        expand_update(bad, fed.global_p, fed.shape)
    with pytest.raises(RejectedUpdate, match="dec_W1"):
        expand_update(dict(m, blocks=np.array([1, 1, 0, 0], np.uint8)), fed.global_p, fed.shape)
