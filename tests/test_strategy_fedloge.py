"""FedLoGe: the conformance suite, and its equations on hand-computed cases."""
from strategy_conformance import StrategyConformance, tiny_fed


class TestFedLoGe(StrategyConformance):
    strategy = "fedloge"
    options: dict = {}


import math

import numpy as np
import pytest
import torch

from federation.strategies import fedloge
from recsys.errors import ConfigError
from recsys.models.autoencoder import AEShape


def test_norm_realignment_by_hand():
    norms = torch.tensor([4.0, 1.0])
    s = fedloge.personal_scale(torch.tensor([math.log(2.0)]), torch.tensor([0.5]), norms)
    torch.testing.assert_close(s, torch.tensor([[1.0, 2.0]]))     # 2 * |w|^(0.5 - 1)
    torch.testing.assert_close(fedloge.personal_scale(torch.zeros(1), torch.ones(1), norms), torch.ones(1, 2))
    torch.testing.assert_close(fedloge.generic_scale(norms), torch.tensor([0.625, 2.5]))   # every row at norm 2.5




@pytest.mark.parametrize("mode", ["explicit", "implicit"])
def test_backbone_and_global_head_train_as_personalfr_and_the_local_head_moves(tiny_data, mode):
    lo, pfr = tiny_fed(tiny_data, "fedloge", {}, mode), tiny_fed(tiny_data, "personalfr", {}, mode)
    for _ in range(2):
        lo.run_round("generic"), pfr.run_round("generic")
    for k in pfr.global_p:
        torch.testing.assert_close(lo.global_p[k], pfr.global_p[k], atol=1e-12, rtol=0)
    moved = (lo.store.tensors[fedloge.GAMMA] - 1).abs().max() + lo.store.tensors[fedloge.LOG_SCALE].abs().max()
    assert moved > 1e-5


def test_scores_personal_and_generic(tiny_data):
    fed = tiny_fed(tiny_data, "fedloge", {})
    fed.run_round("generic")
    u = np.array([0, 3])
    h3, _ = fed.user_hidden(u)
    g = fed.global_p
    p = fed.personal_values(u)
    n = g["dec_out"].norm(dim=1)
    a, gam = p[fedloge.LOG_SCALE][:, 0], p[fedloge.GAMMA][:, 0]
    unit = g["dec_out"] / n[:, None]
    personal = (torch.exp(a)[:, None] * n[None, :] ** gam[:, None]) * (h3 @ unit.T) + g["dec_ob"]
    torch.testing.assert_close(fed.user_scores(u), personal)
    fed.strategy = fedloge.FedLoGe({"scoring": "generic"})
    torch.testing.assert_close(fed.user_scores(u), n.mean() * (h3 @ unit.T) + g["dec_ob"])


def test_content_is_refused():
    with pytest.raises(ConfigError, match="content"):
        fedloge.FedLoGe().check(AEShape(10, h1=4, h2=2, content_dim=3), True)


def test_item_vectors_are_refused_with_one_clear_error(tiny_data):
    from federation.simulation import FederatedAutoencoder
    from recsys.errors import FedrecError

    fed = tiny_fed(tiny_data, "fedloge", {})
    with pytest.raises(FedrecError, match="no single item vector"):
        FederatedAutoencoder(fed).item_vectors()
