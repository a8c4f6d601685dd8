"""FedRep: the conformance suite, and its equations on hand-computed cases."""
from strategy_conformance import StrategyConformance, tiny_fed


class TestFedRep(StrategyConformance):
    strategy = "fedrep"
    options: dict = {}


import numpy as np
import torch





def test_head_phase_moves_only_the_head_and_body_phase_only_the_body(tiny_data):
    head_only = tiny_fed(tiny_data, "fedrep", {"head_steps": 3, "body_steps": 0})
    body_only = tiny_fed(tiny_data, "fedrep", {"head_steps": 0, "body_steps": 3})
    g0 = {k: v.clone() for k, v in head_only.global_p.items()}
    h0 = head_only.store.tensors["dec_out"].clone()
    head_only.run_round("generic"), body_only.run_round("generic")
    torch.testing.assert_close(head_only.global_p["dec_W1"], g0["dec_W1"], atol=1e-15, rtol=0)
    assert (head_only.store.tensors["dec_out"] - h0).abs().max() > 1e-4
    assert (body_only.global_p["dec_W1"] - g0["dec_W1"]).abs().max() > 1e-4
    torch.testing.assert_close(body_only.store.tensors["dec_out"], h0, atol=0, rtol=0)


def test_each_user_scores_with_its_own_head(tiny_data):
    fed = tiny_fed(tiny_data, "fedrep", {})
    fed.run_round("generic")
    u = np.array([2, 7])
    h3, _ = fed.user_hidden(u)
    rows, bias = fed.store.tensors["dec_out"][u], fed.store.tensors["dec_ob"][u]
    expect = torch.einsum("bnh,bh->bn", rows, h3) + bias
    torch.testing.assert_close(fed.user_scores(u), expect)
    # the global item layer is not used by anyone and never moves
    assert fed.shared_rows() is False
