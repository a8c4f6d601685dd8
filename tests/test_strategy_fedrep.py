"""FedRep: the conformance suite, and its equations on hand-computed cases."""
from strategy_conformance import StrategyConformance


class TestFedRep(StrategyConformance):
    strategy = "fedrep"
    options: dict = {}
