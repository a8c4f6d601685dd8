"""FedLoGe: the conformance suite, and its equations on hand-computed cases."""
from strategy_conformance import StrategyConformance


class TestFedLoGe(StrategyConformance):
    strategy = "fedloge"
    options: dict = {}
