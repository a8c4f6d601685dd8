"""Ditto (Li et al., ICML 2021): besides the global model, each client keeps a personal model v_u
trained towards its own data and regularised towards the global one,

    v_u <- v_u - lr * (grad F_u(v_u) + lam * (v_u - w_global))        (lam = 0: purely local)

Adapted to the autoencoder: the global part is PersonalFR's (personal encoder, federated decoder,
partial compression; the shared update is sent as usual). The personal model is a personal copy of
the dense decoder layer (``ditto.dec_W1``, ``ditto.dec_b1``), trained after the shared update with the
client's trained encoder held fixed, and used to score. Item rows have no personal copy: a client
never trains the rows of items it has not touched, so its personal model scores every item with the
global rows. The copy never leaves the client.
"""
from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from federation.strategies.base import personal_copies
from federation.strategies.personalfr import PersonalFR
from recsys.models.autoencoder import DENSE_DECODER_KEYS

PREFIX = "ditto"


class DittoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lam: float = Field(0.1, ge=0)          # pull of the personal model towards the global one
    personal_steps: int | None = Field(None, ge=1)   # local steps of the personal model (default: local_epochs)


class Ditto(PersonalFR):
    name = "ditto"
    summary = "PersonalFR plus a personal copy of the dense decoder, regularised towards the global one"
    paper = "Li et al. 2021, Ditto: Fair and Robust Federated Learning Through Personalization"
    Options = DittoOptions
    closed_form = False
    extra_personal = personal_copies(DENSE_DECODER_KEYS, PREFIX)

    def inference_key(self, key: str) -> str:
        return f"{PREFIX}.{key}" if key in DENSE_DECODER_KEYS else key

    def personal_loss(self, run, p: dict[str, torch.Tensor], step: int) -> torch.Tensor:
        """F_u at the personal model + lam/2 |v - w_global|^2 (B,). The personal model: the client's
        trained encoder, its personal dense decoder layer, the received (global) shared rest."""
        q = dict(p)
        for k, prm in self.params(run.shape).items():
            if prm.role != "personal":
                q[k] = run.start[k]
        for k in DENSE_DECODER_KEYS:
            q[k] = p[f"{PREFIX}.{k}"]
        loss = run.model_loss(q, step)
        lam = self.options.lam
        for k in DENSE_DECODER_KEYS:
            v = p[f"{PREFIX}.{k}"]
            loss = loss + 0.5 * lam * (v - run.global_p[k]).reshape(v.shape[0], -1).pow(2).sum(1)
        return loss

    def local_update(self, run) -> torch.Tensor:
        loss = super().local_update(run)         # the shared update (and the personal encoder), as PersonalFR
        steps = self.options.personal_steps or run.steps
        run.sgd(tuple(self.extra_personal), self.personal_loss, steps)
        return loss
