"""FedAvg (McMahan et al., 2017): the whole model is federated; every parameter is averaged over the
round's clients and a client sends (and receives) the full model. An item row a client did not touch
only decays by weight decay during its local steps, so the server averages it exactly from the
holders' rows and that known factor (``aggregation.fedavg_rows_with_decay``)."""
from __future__ import annotations

import torch

from federation.strategies.aggregation import fedavg_rows_with_decay
from federation.strategies.base import RoundInfo, Strategy


class FedAvg(Strategy):
    name = "fedavg"
    summary = "whole model federated: every parameter averaged over the round's clients (full-model messages)"
    paper = "McMahan et al. 2017, Communication-Efficient Learning of Deep Networks from Decentralized Data"
    personal_model_keys = ()
    rows = "all"
    closed_form = True

    def aggregate_rows(self, key: str, old: torch.Tensor, sums: torch.Tensor, wsum: torch.Tensor,
                       total_weight: float, info: RoundInfo) -> torch.Tensor:
        return fedavg_rows_with_decay(old, sums, wsum, total_weight, info.decay)
