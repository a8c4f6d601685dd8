"""FedPer (Arivazhagan et al., 2019) and FedRep (Collins et al., ICML 2021): the standard "personal
head" baselines. The model splits into a shared body and a personal head; only the body is
federated.

Adapted to the autoencoder, the head is the item layer (dec_out, dec_ob): every client keeps its own
copy of every item's row (N, H1) and bias (N,), started at the common initialization and never
sent. The body is the shared dense decoder layer (dec_W1, dec_b1), averaged over the round's
clients; the encoder stays personal as in PersonalFR.

  * FedPer trains head and body together (one objective, ``local_epochs`` steps);
  * FedRep trains the head first, ``head_steps`` steps with the body fixed, then the body,
    ``body_steps`` steps with the head fixed.

What this means for recommendation: the item layer is where collaborative filtering lives (an item's
row is what the clients who saw it agree on). A personal head sees only its owner's items, so the
rows of items the user never saw are trained only as negatives of its own softmax (implicit) or not
at all (explicit) and rank like their random start. Kept as the reference point the issue asks for;
the benchmark (docs/benchmarks.md, section strategies) measures it. A client holds N·(H1+1) personal
numbers (1.7 MB at ml-100k), the simulator U times that.
"""
from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from federation.strategies.base import Param, Strategy
from recsys.models.autoencoder import ENCODER_KEYS, ROW_DECODER_KEYS, AEShape

HEAD = ROW_DECODER_KEYS                 # ("dec_out", "dec_ob")


class FedPer(Strategy):
    name = "fedper"
    summary = "personal item layer (every item's row, never sent), shared dense decoder; trained jointly"
    paper = "Arivazhagan et al. 2019, Federated Learning with Personalization Layers (FedPer)"
    personal_model_keys = ENCODER_KEYS + HEAD
    rows = "all"
    closed_form = True           # one plain objective, plain SGD: the closed-form path (per-client head)
    shared_item_vectors = False

    def params(self, shape: AEShape) -> dict[str, Param]:
        out = super().params(shape)
        for k in HEAD:                       # a whole personal table per client, not rows of its own items
            out[k] = Param("personal", k, False)
        return out

    no_content = "keeps a personal item layer"

    def score(self, g: dict[str, torch.Tensor], h3: torch.Tensor, personal: dict[str, torch.Tensor],
              content: torch.Tensor | None = None) -> torch.Tensor:
        """Each user's own head: (B, N, H1) rows times h (B, H1) plus its own biases (B, N)."""
        return torch.bmm(personal["dec_out"], h3.unsqueeze(2)).squeeze(2) + personal["dec_ob"]


class FedRepOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    head_steps: int | None = Field(None, ge=0)     # head steps per round, body fixed (default: local_epochs)
    body_steps: int | None = Field(None, ge=0)     # body steps per round, head fixed (default: local_epochs)


class FedRep(FedPer):
    name = "fedrep"
    summary = "personal item layer trained first with the body fixed, then the shared body with the head fixed"
    paper = "Collins et al. 2021, Exploiting Shared Representations for Personalized Federated Learning (FedRep)"
    Options = FedRepOptions
    closed_form = False          # two phases over different parameters: the generic path

    def local_update(self, run) -> torch.Tensor:
        o = self.options
        head = tuple(k for k in HEAD if k in run.values)
        body = tuple(k for k in run.values if k not in head)
        hs = run.steps if o.head_steps is None else o.head_steps
        bs = run.steps if o.body_steps is None else o.body_steps
        loss = None
        if hs:
            loss = run.sgd(head, self.local_loss, hs)
        if bs:
            loss = run.sgd(body, self.local_loss, bs)
        if loss is None:
            raise ValueError("fedrep: head_steps and body_steps are both 0")
        return loss
