"""FedProx: the conformance suite and the proximal term checked by hand."""
import numpy as np
import pytest
import torch

from federation.engine.generic import train_generic
from federation.engine.local_sgd import SGDConfig
from federation.simulation import Federation, FedSettings
from federation.strategies.registry import get_strategy
from recsys.errors import ConfigError
from recsys.models.autoencoder import AEShape
from recsys.splits import ratio_split
from strategy_conformance import StrategyConformance


class TestFedProx(StrategyConformance):
    strategy = "fedprox"
    options = {"mu": 0.5}


def _fed(tiny_data, strategy, options=None, sgd=None):
    train = ratio_split(tiny_data, seed=1).matrix(tiny_data, "train")
    shape = AEShape(tiny_data.n_items, h1=16, h2=8, mode="explicit")
    cfg = FedSettings(strategy=strategy, options=options or {}, rounds=2, fraction=0.5, local_epochs=3, seed=3,
                      sgd=sgd or SGDConfig())
    return Federation(shape, cfg, train, dtype=torch.float64)


def test_the_proximal_term_by_hand(tiny_data):
    """h(w) - F(w) = mu/2 |w - w_global|^2 over the shared parameters only: move every entry of client
    0's dense decoder layer (16 x 8) by 0.1 and one of its rows (16) by 0.2 -> mu/2 (128 * 0.01 + 16 * 0.04)."""
    mu = 0.3
    fed = _fed(tiny_data, "fedprox", {"mu": mu})
    c = fed.cohorts(np.array([0, 1]))[0]
    seen = {}

    class Probe(type(fed.strategy)):
        def local_update(self, run):
            p = dict(run.values)
            p["dec_W1"] = p["dec_W1"].clone()
            p["dec_W1"][0] += 0.1
            p["dec_out"] = p["dec_out"].clone()
            p["dec_out"][0] += 0.2                       # entry 0 belongs to client 0
            p["enc_W2"] = p["enc_W2"] + 5.0              # personal: no proximal term
            seen["prox"] = self.local_loss(run, p, 0) - run.model_loss(p, 0)
            return super().local_update(run)

    train_generic(Probe({"mu": mu}), fed.shape, c, fed.global_p, fed.store, fed.cfg.sgd, 0.1, 1, 3, 0, torch.float64)
    torch.testing.assert_close(seen["prox"], torch.tensor([mu / 2 * (128 * 0.01 + 16 * 0.04), 0.0], dtype=torch.float64))


def test_mu_zero_is_personalfr_and_a_large_mu_holds_the_decoder_near_the_global(tiny_data):
    sgd = SGDConfig(clip_norm=None)
    a, b = _fed(tiny_data, "fedprox", {"mu": 0.0}, sgd), _fed(tiny_data, "personalfr", sgd=sgd)
    c, d = _fed(tiny_data, "fedprox", {"mu": 5.0}, sgd), _fed(tiny_data, "personalfr", sgd=sgd)
    start = a.global_p["dec_W1"].clone()
    a.run_round(), b.run_round(), c.run_round(), d.run_round()
    torch.testing.assert_close(a.global_p["dec_W1"], b.global_p["dec_W1"], atol=1e-10, rtol=0)
    assert (c.global_p["dec_W1"] - start).norm() < 0.75 * (d.global_p["dec_W1"] - start).norm()


def test_bad_options_are_one_clear_error():
    with pytest.raises(ConfigError, match=r"federation.options.mu: .*greater than or equal to 0"):
        get_strategy("fedprox", {"mu": -1})
    with pytest.raises(ConfigError, match=r"federation.options.nu: unknown option \(strategy 'fedprox'\)"):
        get_strategy("fedprox", {"nu": 1})
