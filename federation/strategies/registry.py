"""The strategies by name. Config validation, byte accounting, DP, deployment, the dashboard and the
benchmarks take names from here; adding a method is one file plus one line below."""
from __future__ import annotations

from federation.strategies.base import Strategy
from federation.strategies.ditto import Ditto
from federation.strategies.fedavg import FedAvg
from federation.strategies.fedcac import FedCAC
from federation.strategies.feddpa import FedDPA
from federation.strategies.fedloge import FedLoGe
from federation.strategies.fedprox import FedProx
from federation.strategies.fedrep import FedPer, FedRep
from federation.strategies.local import Local
from federation.strategies.persona import Persona
from federation.strategies.personalfr import PersonalFR
from federation.strategies.pfedgate import PFedGate
from recsys.errors import ConfigError

STRATEGIES: dict[str, type[Strategy]] = {s.name: s for s in (PersonalFR, FedAvg, Local, FedProx, Ditto,
                                                                FedCAC, FedDPA, FedLoGe, PFedGate, FedPer, FedRep,
                                                                Persona)}


def message_strategies() -> tuple[str, ...]:
    """Names of the strategies whose clients send own-item messages (what DP and Flower work on)."""
    return tuple(n for n, cls in STRATEGIES.items() if cls().sends_messages)


def get_strategy(name: str, options: dict | None = None) -> Strategy:
    """A configured strategy; ConfigError (one line) for an unknown name or bad options."""
    try:
        cls = STRATEGIES[name]
    except KeyError:
        raise ConfigError(f"unknown strategy {name!r} (choose from {', '.join(STRATEGIES)})") from None
    return cls(options)
