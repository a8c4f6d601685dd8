"""FedDPA (Yang et al., NeurIPS 2024): a dual-personalizing adapter. A *global* adapter is federated and
a *local* adapter stays on the client; at inference an instance-wise weight mixes them.

Adapted to the autoencoder. The global adapter is PersonalFR's shared decoder. The local adapter is
a per-user rank-r residual on the item layer W (N, H1),

    W_u = W + W A_u B_u           score_ui = W_i · (h + w A_u B_u h) + b_i          (1)

with A_u (H1, r) started at zero and B_u (r, H1) at U(±1/sqrt(H1)) (LoRA's init: the residual starts
at 0). The residual W A_u B_u has rank ≤ r and reaches every item, seen or not, through the shared
rows; only 2·H1·r numbers per user, never sent.

Local training is FedDPA-T's per round: (a) the local adapter for ``adapter_steps`` steps with the
global one mixed in and held fixed (w = 1 in (1), every other parameter at its received/start value);
(b) the global adapter alone, PersonalFR's update (personal encoder, shared decoder, partial
compression), whose message is sent as usual. The client keeps its code h_u under the received
model (no dropout) as the representation of its training instance.

Instance-wise weight (the paper weighs the local adapter by how close a test instance is to the
client's training instances): for a request with code h,

    w = max(0, cos(h, h_u))                                                          (2)

so a request that looks like the user's training history uses the local adapter fully and a
drifted one (new items in the request's history, ``fedrec recommend --history``) falls back
towards the global adapter. A user that never trained has h_u = 0 and w = 0.
"""
from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict, Field

from federation.strategies.base import Param
from federation.strategies.personalfr import PersonalFR
from recsys.models.autoencoder import AEShape

UP, DOWN, CODE = "dpa.up", "dpa.down", "dpa.code"


class FedDPAOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rank: int = Field(4, ge=1)                       # r of the local adapter
    adapter_steps: int | None = Field(None, ge=0)    # local-adapter steps per round (default: local_epochs)
    adapter_lr: float | None = Field(None, ge=0)     # its learning rate, as a factor of the round's (default 1)


def local_hidden(h3: torch.Tensor, up: torch.Tensor, down: torch.Tensor, w: torch.Tensor | float = 1.0
                 ) -> torch.Tensor:
    """(1)'s code h + w A (B h): h3 (B, H1), up A (B, H1, r), down B (B, r, H1), w (B,) or a number."""
    r = torch.bmm(up, torch.bmm(down, h3.unsqueeze(2))).squeeze(2)                   # (B, H1)
    w = w if not torch.is_tensor(w) else w.unsqueeze(1)
    return h3 + w * r


def instance_weight(h: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """(2): max(0, cos(h, code)) per user (B,); 0 where the stored code is zero."""
    num = (h * code).sum(1)
    den = h.norm(dim=1) * code.norm(dim=1)
    return torch.where(den > 0, num / den.clamp(min=1e-30), torch.zeros_like(num)).clamp(min=0)


class FedDPA(PersonalFR):
    name = "feddpa"
    summary = "PersonalFR plus a personal rank-r residual W·A·B on the item layer (FedDPA-T), mixed per request"
    paper = "Yang et al. 2024, Dual-Personalizing Adapter for Federated Foundation Models (FedDPA)"
    Options = FedDPAOptions
    closed_form = False
    split_update = True

    extra_personal = {UP: Param("personal", UP, False), DOWN: Param("personal", DOWN, False),
                      CODE: Param("personal", CODE, False)}

    def personal_init(self, shape: AEShape, seed: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        r, h = self.options.rank, shape.h1
        g = torch.Generator().manual_seed(seed + 4_242)
        bound = 1.0 / math.sqrt(h)
        return {UP: torch.zeros(h, r, dtype=dtype),
                DOWN: (torch.rand(r, h, generator=g, dtype=torch.float64) * 2 - 1).mul_(bound).to(dtype),
                CODE: torch.zeros(h, dtype=dtype)}

    # -- training ------------------------------------------------------------------------------
    def adapter_loss(self, run, p: dict[str, torch.Tensor], step: int) -> torch.Tensor:
        """(a): the model's loss scored with (1) at w = 1, everything but the adapter at its start value."""
        q = {k: (p[k] if k in (UP, DOWN) else run.start[k]) for k in p}
        h3, m = run.start_hidden(step)
        return run.loss_from_hidden(q, local_hidden(h3, p[UP], p[DOWN]), m)

    def personal_update(self, run) -> None:
        """(a), then the code of the client's training instance under the received model (no dropout)."""
        steps = run.steps if self.options.adapter_steps is None else self.options.adapter_steps
        if steps:
            f = 1.0 if self.options.adapter_lr is None else self.options.adapter_lr
            run.sgd((UP, DOWN), self.adapter_loss, steps, lr=f * run.lr)
        h3, _ = run.start_hidden(0, keep=1.0)
        run.values[CODE] = h3.to(run.values[CODE].dtype)

    def local_update(self, run) -> torch.Tensor:
        self.personal_update(run)
        return super().local_update(run)                 # (b) the global adapter alone (PersonalFR)

    # -- inference -----------------------------------------------------------------------------
    def hidden(self, h3: torch.Tensor, personal: dict[str, torch.Tensor]) -> torch.Tensor:
        w = instance_weight(h3, personal[CODE])
        return local_hidden(h3, personal[UP], personal[DOWN], w)
