"""The strategy registry is where names come from: config validation, DP, deployment, the CLI."""
import pytest
from typer.testing import CliRunner

from federation.runs.config import parse_config
from federation.runs.jobs import dp_settings
from federation.strategies.registry import STRATEGIES, get_strategy
from recsys.errors import ConfigError


def test_every_registered_strategy_is_one_class_with_a_test_file():
    from pathlib import Path
    here = Path(__file__).parent
    for name, cls in STRATEGIES.items():
        assert cls.name == name and cls.summary
        assert (here / f"test_strategy_{name}.py").exists(), f"{name}: no conformance test file"


def test_unknown_strategy_and_bad_options_are_one_line_config_errors():
    with pytest.raises(ConfigError, match=r"^<config>: federation: unknown strategy 'fedsgd' \(choose from personalfr, "):
        parse_config({"federation": {"strategy": "fedsgd"}})
    with pytest.raises(ConfigError, match=r"federation.options.mu: unknown option|federation.options.lam: "):
        parse_config({"federation": {"strategy": "ditto", "options": {"mu": 1}}})
    cfg = parse_config({"federation": {"strategy": "fedprox", "options": {"mu": 0.1}}})
    assert get_strategy(cfg.federation.strategy, cfg.federation.options).options.mu == 0.1


def test_dp_needs_a_strategy_that_sends_own_item_messages():
    bad = parse_config({"federation": {"strategy": "fedavg"}, "privacy": {"dp": True, "noise_multiplier": 1.0}})
    with pytest.raises(ConfigError, match="strategy 'fedavg' sends none .use one of: personalfr, fedprox, ditto"):
        dp_settings(bad)
    ok = parse_config({"federation": {"strategy": "ditto"}, "privacy": {"dp": True, "noise_multiplier": 1.0}})
    assert dp_settings(ok).noise_multiplier == 1.0


def test_fedrec_strategies_lists_the_registry():
    from fedrec.cli import app
    r = CliRunner().invoke(app, ["strategies"], env={"COLUMNS": "200"})
    assert r.exit_code == 0
    for name in STRATEGIES:
        assert name in r.output
    assert "mu=0.01" in r.output and "lam=0.1" in r.output
