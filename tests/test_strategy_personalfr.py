"""PersonalFR through the conformance suite (its closed-form path and kernels against the reference)."""
from strategy_conformance import StrategyConformance


class TestPersonalFR(StrategyConformance):
    strategy = "personalfr"
