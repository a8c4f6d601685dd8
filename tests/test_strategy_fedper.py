"""FedPer: the conformance suite, and its equations on hand-computed cases."""
from strategy_conformance import StrategyConformance


class TestFedPer(StrategyConformance):
    strategy = "fedper"
    options: dict = {}


def test_secure_aggregation_and_dp_are_refused():
    import pytest

    from federation.runs.config import parse_config
    from federation.runs.jobs import fed_settings
    from recsys.errors import ConfigError

    base = {"name": "x", "data": {"path": "data/synthetic"}, "model": {"mode": "explicit"},
            "federation": {"strategy": "fedper", "weighting": "uniform"}}
    for privacy in ({"secure_aggregation": True}, {"dp": True, "noise_multiplier": 1.0}):
        with pytest.raises(ConfigError, match="shares no item rows"):
            fed_settings(parse_config({**base, "privacy": privacy}))
