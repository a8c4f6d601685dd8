"""FedProx (Li et al., MLSys 2020): each client minimises its loss plus a proximal term that keeps
the shared parameters near the global model it received,

    h_u(w) = F_u(w) + mu/2 * || w_shared - w_global ||^2

(the sum runs over the shared decoder parameters the client holds: the dense layer and its own
items' rows; the personal encoder has no global value to stay near). Roles, message and
aggregation are PersonalFR's. The proximal gradient mu (w - w_global) is part of the clipped gradient.
"""
from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from federation.strategies.personalfr import PersonalFR


class FedProxOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mu: float = Field(0.01, ge=0)     # proximal weight (the paper tunes it in {0.001, 0.01, 0.1, 1})


class FedProx(PersonalFR):
    name = "fedprox"
    summary = "PersonalFR roles; a proximal term mu/2 |w - w_global|^2 on the shared decoder in the local objective"
    paper = "Li et al. 2020, Federated Optimization in Heterogeneous Networks (FedProx)"
    Options = FedProxOptions
    closed_form = False

    def local_loss(self, run, p: dict[str, torch.Tensor], step: int) -> torch.Tensor:
        loss = super().local_loss(run, p, step)                                     # (B,)
        mu = self.options.mu
        if mu == 0:
            return loss
        for k, prm in self.params(run.shape).items():
            if prm.role != "personal":
                d = (p[k] - run.start[k]).reshape(p[k].shape[0], -1).pow(2).sum(1)  # (B,) or (T,)
                loss = loss + 0.5 * mu * run._per_client(k, d)
        return loss
