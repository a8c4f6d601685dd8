"""Local training only: each client trains its own model from the common initialization and nothing
is sent or aggregated; rows of items a client never saw stay at their initial values. The
no-federation baseline."""
from __future__ import annotations

from recsys.models.autoencoder import ALL_KEYS

from federation.strategies.base import Strategy


class Local(Strategy):
    name = "local"
    summary = ("no federation: each client trains its own model from the common initialization; rows of items "
               "it never saw stay at their initial values")
    paper = "baseline"
    personal_model_keys = ALL_KEYS
    federated = False
    closed_form = True
