"""FedDPA: the conformance suite, and its equations on hand-computed cases."""
from strategy_conformance import StrategyConformance, tiny_fed


class TestFedDPA(StrategyConformance):
    strategy = "feddpa"
    options: dict = {"adapter_lr": 0.5}


import numpy as np
import pytest
import torch

from federation.strategies import feddpa


def test_local_adapter_and_instance_weight_by_hand():
    h = torch.tensor([[1.0, 0.0]])
    up = torch.tensor([[[1.0], [2.0]]])          # A (1, H1=2, r=1)
    down = torch.tensor([[[3.0, 4.0]]])          # B (1, r=1, H1=2): B h = 3, A B h = [3, 6]
    torch.testing.assert_close(feddpa.local_hidden(h, up, down), torch.tensor([[4.0, 6.0]]))
    torch.testing.assert_close(feddpa.local_hidden(h, up, down, torch.tensor([0.5])), torch.tensor([[2.5, 3.0]]))
    w = feddpa.instance_weight(torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]),
                               torch.tensor([[1.0, 1.0], [-1.0, 0.0], [0.0, 0.0]]))
    torch.testing.assert_close(w, torch.tensor([2 ** -0.5, 0.0, 0.0]))




@pytest.mark.parametrize("mode", ["explicit", "implicit"])
def test_the_global_adapter_trains_alone_as_personalfr(tiny_data, mode):
    """FedDPA-T's second phase is PersonalFR's update from the received model: the federated state is
    PersonalFR's whatever the local adapter does; the adapter itself moved."""
    dpa, pfr = tiny_fed(tiny_data, "feddpa", {"rank": 2}, mode), tiny_fed(tiny_data, "personalfr", {}, mode)
    for _ in range(2):
        dpa.run_round("generic"), pfr.run_round("generic")
    for k in pfr.global_p:
        torch.testing.assert_close(dpa.global_p[k], pfr.global_p[k], atol=1e-12, rtol=0)
    assert dpa.store.tensors[feddpa.UP].abs().max() > 1e-4


def test_scores_use_the_adapter_weighted_by_the_stored_code(tiny_data):
    fed = tiny_fed(tiny_data, "feddpa", {"rank": 2}, "explicit")
    fed.run_round("generic")
    u = np.array([int(fed.sample(0)[0])])
    h3, _ = fed.user_hidden(u)
    p = fed.personal_values(u)
    w = feddpa.instance_weight(h3, p[feddpa.CODE])
    # the request is the training history, coded under this round's model (the stored code is under the
    # model the client received): similar, not equal
    assert 0.0 < float(w[0]) < 1.0
    hh = h3 + w[:, None] * (p[feddpa.UP][0] @ (p[feddpa.DOWN][0] @ h3[0]))
    expect = hh @ fed.global_p["dec_out"].T + fed.global_p["dec_ob"]
    torch.testing.assert_close(fed.user_scores(u), expect)
    fed.store.tensors[feddpa.CODE][u] = -fed.store.tensors[feddpa.CODE][u]   # a drifted request: w = 0
    torch.testing.assert_close(fed.user_scores(u), h3 @ fed.global_p["dec_out"].T + fed.global_p["dec_ob"])


def test_adapter_lr_zero_keeps_the_adapter(tiny_data):
    fed = tiny_fed(tiny_data, "feddpa", {"rank": 2, "adapter_lr": 0.0}, "implicit")
    before = fed.store.tensors[feddpa.DOWN].clone()
    fed.run_round()
    assert fed.store.tensors[feddpa.UP].abs().max() == 0
    torch.testing.assert_close(fed.store.tensors[feddpa.DOWN], before, atol=0, rtol=0)
