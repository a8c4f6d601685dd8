"""FedAvg through the conformance suite; it sends the whole model, so it has no deployment."""
import torch

from federation.strategies.fedavg import FedAvg
from federation.strategies.base import RoundInfo
from strategy_conformance import StrategyConformance


class TestFedAvg(StrategyConformance):
    strategy = "fedavg"


def test_rows_a_client_did_not_touch_come_back_decayed():
    """Two clients of weight 1 and 3; row 0 held by the first only: (1 * 2.0 + 3 * 0.5 * 1.0) / 4."""
    old = torch.tensor([[1.0], [1.0]])
    sums = torch.tensor([[2.0], [4 * 3.0]])
    wsum = torch.tensor([1.0, 4.0])
    new = FedAvg().aggregate_rows("dec_out", old, sums, wsum, 4.0, RoundInfo(lr=0.1, decay=0.5))
    torch.testing.assert_close(new, torch.tensor([[(2.0 + 1.5) / 4], [3.0]]))
