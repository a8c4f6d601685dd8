"""Local training through the conformance suite: it sends nothing."""
from strategy_conformance import StrategyConformance


class TestLocal(StrategyConformance):
    strategy = "local"
