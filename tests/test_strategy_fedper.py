"""FedPer: the conformance suite, and its equations on hand-computed cases."""
from strategy_conformance import StrategyConformance


class TestFedPer(StrategyConformance):
    strategy = "fedper"
    options: dict = {}
