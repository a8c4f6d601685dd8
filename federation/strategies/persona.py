"""Persona: PersonalFR plus a federated user embedder (Persona-Plug, Liu et al. ACL 2025, adapted).

The embedder (``recsys.models.embedder``: entry vectors from the received item rows and the rating,
input-aware attention pooling, a tanh layer) maps any history to a vector z_e (H2) with shared
parameters only; z_e takes the place of the encoder's output and feeds the shared decoder.

A client's local update has two phases, like FedDPA-T's:
  (a) the embedder, for ``steps`` steps against the model it received (decoder and item rows held
      as they arrived), on the model's loss over its whole history with the code z_e(S_u) of a random
      subset S_u of that history, drawn per step (``history_keep``, at least one entry): the embedder
      learns to produce, from a handful of items, the code the federation's decoder turns into the
      whole list;
  (b) PersonalFR's update, unchanged (personal encoder, shared decoder, partial compression).
The message is PersonalFR's plus the embedder's four dense parameters, averaged like the dense
decoder layer (part of DP clipping and secure aggregation: ``AEShape.extra_dense_keys``). The
embedder never changes what (b) computes, so a persona run's encoders, decoder and prototypes are
those of the PersonalFR run with the same seed: existing users score exactly as before.

Inference: a trained client scores with its personal encoder, as in PersonalFR; a user the run never
saw (``federation.runs.onboard``) scores with z_e of the items it picked, at once, with no personal
parameter at all, or starts a personal encoder at z_e and folds it in.
"""
from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from federation.strategies.personalfr import PersonalFR
from recsys.models.autoencoder import AEShape, item_rows
from recsys.models.embedder import EMBEDDER_KEYS, history_keep, user_vector


class PersonaOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    heads: int = Field(2, ge=1, le=16)               # m attention heads of the embedder
    steps: int | None = Field(None, ge=1)            # embedder steps per round (default: local_epochs)
    lr: float | None = Field(None, gt=0)             # their learning rate, as a factor of the round's (default 1)


def entry_values(shape: AEShape, x: torch.Tensor) -> torch.Tensor:
    """v_h of the embedder's entries (T,): the rating (explicit), 1 (implicit; x may be l2-scaled)."""
    return x if shape.mode == "explicit" else torch.ones_like(x)


class Persona(PersonalFR):
    name = "persona"
    summary = ("PersonalFR plus a federated user embedder (attention over the history's item rows): "
               "new users get a list from their first items at once; existing users score with their encoder")
    paper = "Liu et al. 2025, LLMs + Persona-Plug = Personalized LLMs (a shared user embedder), on PersonalFR"
    Options = PersonaOptions
    closed_form = False
    split_update = True

    def model_fields(self) -> dict:
        return {"embedder_heads": self.options.heads}

    def phase_keys(self, shape: AEShape) -> tuple[str, ...]:
        return EMBEDDER_KEYS

    def embedder_input(self, run) -> torch.Tensor:
        """The received rows of the cohort's entries (T, H1): a constant of the round, computed once."""
        rows = getattr(run, "_persona_rows", None)
        if rows is None:
            rows = item_rows(run.global_p, run.content, run.cohort.items)
            run._persona_rows = rows
        return rows

    def embedder_loss(self, run, p: dict[str, torch.Tensor], step: int) -> torch.Tensor:
        """(a) per client (B,): the model's loss scored with z_e of the step's history subset, every
        parameter but the embedder's at its received value."""
        c = run.cohort
        q = {k: (p[k] if k in EMBEDDER_KEYS else run.start[k]) for k in p}
        x = c.x.to(q["dec_b1"].dtype)
        keep = history_keep(run.seed, run.rnd, c.users, c.items, c.seg, step, c.size).to(x.dtype)   # (T,)
        ze = user_vector(q, self.embedder_input(run), entry_values(run.shape, x), c.seg, c.size, keep)   # (B, H2)
        h3, m = run._decode(q, ze, run.mask(step))
        return run.loss_from_hidden(q, h3, m)

    def personal_update(self, run) -> None:
        steps = run.steps if self.options.steps is None else self.options.steps
        f = 1.0 if self.options.lr is None else self.options.lr
        run.sgd(EMBEDDER_KEYS, self.embedder_loss, steps, lr=f * run.lr)

    def local_update(self, run) -> torch.Tensor:
        self.personal_update(run)                         # (a)
        return super().local_update(run)                  # (b) PersonalFR's update
