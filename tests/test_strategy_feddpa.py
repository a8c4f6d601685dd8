"""FedDPA: the conformance suite, and its equations on hand-computed cases."""
from strategy_conformance import StrategyConformance


class TestFedDPA(StrategyConformance):
    strategy = "feddpa"
    options: dict = {}
