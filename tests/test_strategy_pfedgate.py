"""PFedGate: the conformance suite, and its equations on hand-computed cases."""
from strategy_conformance import StrategyConformance


class TestPFedGate(StrategyConformance):
    strategy = "pfedgate"
    options: dict = {}
