"""Strategies: which parameters stay on the client, which decoder rows a client trains, what is averaged.

This is policy only; the math lives in ``aggregation`` and the round loop in ``simulation``.
"""
from __future__ import annotations

from dataclasses import dataclass

from recsys.models.autoencoder import ALL_KEYS, ENCODER_KEYS


@dataclass(frozen=True)
class Strategy:
    name: str
    personal: tuple[str, ...]      # parameters that live only in client state
    rows: str                      # "touched": a client holds decoder rows of its own items; "all": every row
    federated: bool                # whether the server aggregates anything
    description: str = ""

    @property
    def shared(self) -> tuple[str, ...]:
        return tuple(k for k in ALL_KEYS if k not in self.personal)


STRATEGIES = {
    "personalfr": Strategy(
        "personalfr", ENCODER_KEYS, "touched", True,
        "encoder personal; dense decoder averaged; item rows averaged over the clients holding the item "
        "(partial compression: a client sends only its own items' rows)"),
    "fedavg": Strategy(
        "fedavg", (), "all", True,
        "whole model federated: every parameter averaged over the round's clients (full-model messages)"),
    "local": Strategy(
        "local", ALL_KEYS, "touched", False,
        "no federation: each client trains its own model from the common initialization; rows of items "
        "it never saw stay at their initial values"),
}


def get_strategy(name: str) -> Strategy:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r} (choose from {', '.join(STRATEGIES)})") from None
