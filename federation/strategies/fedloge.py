"""FedLoGe (Xiao et al., ICLR 2024): one federated backbone, a global head for the generic model and
personal heads for the local ones, joined by norm realignment (GLA-FR).

Adapted to the autoencoder. The backbone is PersonalFR's (personal encoder, shared dense decoder) and
the auxiliary global head is the federated item layer W (N, H1), trained as PersonalFR trains it.
Classifier norms carry the long tail: a popular item's row grows longer. FedLoGe realigns them:

  * generic model: every row at the mean norm, ŵ_i = W_i / |W_i| · mean_j |W_j|            (1)
  * personal model: the global direction with the norm of the client's local head,
    score_ui = n_ui · (W_i / |W_i|) · h_u + b_i                                           (2)

A client's local head is learned on its own data with the backbone frozen (FedLoGe trains it on
detached features). A per-item local head would exist only for the items the client has seen, and
ranking is about the items it has not, so the local head's norms are a per-user curve over the
global norms,

    n_ui = exp(a_u) · |W_i| ^ γ_u                                                         (3)

(a_u = 0, γ_u = 1: the global norms, PersonalFR's scores; γ_u = 0: equal norms, (1)). a_u and γ_u are
trained each round for ``head_steps`` steps on the received model (backbone and rows frozen), before
PersonalFR's update of the backbone and the global head; they are never sent.

The paper's static sparse equiangular classifier (SSE-C) needs a width of at least classes − 1
(1,681 for ml-100k's items on a 256-wide layer), so it does not carry over; the global head is
trained as usual. ``scoring = "generic"`` scores with (1) for every user (the generic model).
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from federation.strategies.base import Param
from federation.strategies.personalfr import PersonalFR
from recsys.models.autoencoder import AEShape

LOG_SCALE, GAMMA = "loge.a", "loge.gamma"


class FedLoGeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    head_steps: int | None = Field(None, ge=0)      # local-head steps per round (default: local_epochs)
    scoring: Literal["personal", "generic"] = "personal"


def row_norms(rows: torch.Tensor) -> torch.Tensor:
    """|W_i| (N,) of rows (N, H1), kept away from 0."""
    return rows.norm(dim=1).clamp(min=1e-12)


def personal_scale(a: torch.Tensor, gamma: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """n_ui / |W_i| = exp(a_u) |W_i|^(γ_u − 1): the factor on W_i·h_u in (2)-(3). a, gamma (B,), norms
    (..., ) broadcastable as (B, N) when norms is (N,) -> (B, N)."""
    return torch.exp(a[:, None] + (gamma[:, None] - 1) * torch.log(norms)[None, :])


def generic_scale(norms: torch.Tensor) -> torch.Tensor:
    """(1)'s factor mean_j |W_j| / |W_i| (N,)."""
    return norms.mean() / norms


class FedLoGe(PersonalFR):
    name = "fedloge"
    summary = "PersonalFR plus norm realignment of the item layer: equal norms (generic), personal norm curve (local)"
    paper = "Xiao et al. 2024, FedLoGe: Joint Local and Generic Federated Learning under Long-tailed Data"
    Options = FedLoGeOptions
    closed_form = False
    split_update = True
    shared_item_vectors = False
    extra_personal = {LOG_SCALE: Param("personal", LOG_SCALE, False), GAMMA: Param("personal", GAMMA, False)}

    no_content = "realigns the free item rows' norms"

    def personal_init(self, shape: AEShape, seed: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        return {LOG_SCALE: torch.zeros(1, dtype=dtype), GAMMA: torch.ones(1, dtype=dtype)}

    # -- training ------------------------------------------------------------------------------
    def head_loss(self, run, p: dict[str, torch.Tensor], step: int) -> torch.Tensor:
        """The local head's objective: the model's loss with scores (2)-(3) on the received model's
        features (the backbone frozen, no gradient into it) and the received global rows."""
        q = {k: (p[k] if k in self.extra_personal else run.start[k]) for k in p}
        h3, m = run.start_hidden(step)
        norms = row_norms(run.global_p["dec_out"])                                    # (N,)
        scale = personal_scale(p[LOG_SCALE][:, 0], p[GAMMA][:, 0], norms)             # (B, N)
        per_entry = scale[run.cohort.seg, run.cohort.items]                           # (T,)
        return run.loss_from_hidden(q, h3, m, scale=(per_entry, scale))

    def personal_update(self, run) -> None:
        steps = run.steps if self.options.head_steps is None else self.options.head_steps
        if steps:
            run.sgd((LOG_SCALE, GAMMA), self.head_loss, steps)

    def local_update(self, run) -> torch.Tensor:
        self.personal_update(run)                        # the local head on the received backbone
        return super().local_update(run)                 # backbone + auxiliary global head (PersonalFR)

    # -- inference -----------------------------------------------------------------------------
    def score(self, g: dict[str, torch.Tensor], h3: torch.Tensor, personal: dict[str, torch.Tensor],
              content: torch.Tensor | None = None) -> torch.Tensor:
        norms = row_norms(g["dec_out"])
        dots = h3 @ g["dec_out"].T                                                    # (B, N)
        if self.options.scoring == "generic":
            return dots * generic_scale(norms) + g["dec_ob"]
        return dots * personal_scale(personal[LOG_SCALE][:, 0], personal[GAMMA][:, 0], norms) + g["dec_ob"]
