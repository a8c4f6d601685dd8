"""Ditto: the conformance suite, the personal objective by hand, and the personal model in scoring."""
import numpy as np
import torch

from federation.engine.generic import train_generic
from federation.engine.local_sgd import SGDConfig
from federation.simulation import Federation, FedSettings
from recsys.models.autoencoder import AEShape
from recsys.splits import ratio_split
from strategy_conformance import StrategyConformance


class TestDitto(StrategyConformance):
    strategy = "ditto"
    options = {"lam": 0.5}


def _fed(tiny_data, options, mode="explicit"):
    train = ratio_split(tiny_data, seed=1).matrix(tiny_data, "train")
    shape = AEShape(tiny_data.n_items, h1=16, h2=8, mode=mode)
    cfg = FedSettings(strategy="ditto", options=options, rounds=2, fraction=0.5, local_epochs=3, seed=3,
                      sgd=SGDConfig(clip_norm=None))
    return Federation(shape, cfg, train, dtype=torch.float64)


def test_the_personal_objective_by_hand(tiny_data):
    """personal_loss(v) = F(encoder, v, global rows) + lam/2 |v - w_global|^2: with v = w_global + 0.1 on
    every dense-layer entry (16 x 8 + 16) the penalty is lam/2 * 144 * 0.01."""
    lam = 0.7
    fed = _fed(tiny_data, {"lam": lam})
    c = fed.cohorts(np.array([0]))[0]
    seen = {}

    class Probe(type(fed.strategy)):
        def local_update(self, run):
            p = dict(run.values)
            p["ditto.dec_W1"] = run.global_p["dec_W1"].expand_as(p["ditto.dec_W1"]) + 0.1
            p["ditto.dec_b1"] = run.global_p["dec_b1"].expand_as(p["ditto.dec_b1"]) + 0.1
            q = dict(p, dec_W1=p["ditto.dec_W1"], dec_b1=p["ditto.dec_b1"])
            seen["penalty"] = self.personal_loss(run, p, 0) - run.model_loss(q, 0)
            return super().local_update(run)

    train_generic(Probe({"lam": lam}), fed.shape, c, fed.global_p, fed.store, fed.cfg.sgd, 0.1, 1, 3, 0, torch.float64)
    torch.testing.assert_close(seen["penalty"], torch.tensor([lam / 2 * 144 * 0.01], dtype=torch.float64))


def test_a_large_lam_keeps_the_personal_model_at_the_global_one_and_scoring_uses_it(tiny_data):
    tight, loose = _fed(tiny_data, {"lam": 5.0, "personal_steps": 20}), _fed(tiny_data, {"lam": 0.0, "personal_steps": 20})
    users = tight.sample(0)
    g0 = tight.global_p["dec_W1"].clone()
    tight.run_round(), loose.run_round()
    c = tight.cohorts(users)[0]
    v_tight = tight.store.gather("ditto.dec_W1", c, torch.float64)
    v_loose = loose.store.gather("ditto.dec_W1", c, torch.float64)
    assert (v_tight - g0).norm() < 0.5 * (v_loose - g0).norm()
    # scoring reads the personal copy: changing it changes the user's scores, the global layer does not
    u = np.array([int(users[0])])
    before = loose.user_scores(u).clone()
    loose.global_p["dec_W1"] = loose.global_p["dec_W1"] + 1.0
    torch.testing.assert_close(loose.user_scores(u), before)
    loose.store.tensors["ditto.dec_W1"][u] += 1.0
    assert (loose.user_scores(u) - before).abs().max() > 1e-3
