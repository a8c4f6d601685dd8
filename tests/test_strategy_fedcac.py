"""FedCAC: the conformance suite, PFLlib's equations on hand-computed cases, and the server's plan."""
from strategy_conformance import StrategyConformance


class TestFedCAC(StrategyConformance):
    strategy = "fedcac"
    options = {"tau": 0.5, "beta": 2}
