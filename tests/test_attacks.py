"""The privacy attack benchmark's metrics and observers (federation.privacy.attacks) on hand-computed cases."""
import numpy as np
import pytest

from federation.privacy import attacks


def test_membership_aucs_by_hand():
    truth = np.array([[1, 0, 1], [0, 1, 1], [0, 0, 1], [1, 0, 0]], bool)     # 4 users x 3 items
    perfect = truth.astype(float)
    assert attacks.membership_auc_items(perfect, truth) == 1.0            # item 3 is held by all but one
    assert attacks.membership_auc_users(perfect, truth) == 1.0
    # A popularity prior scores every user alike for an item: per-item AUC exactly 0.5.
    pop = np.broadcast_to(truth.sum(0).astype(float), truth.shape)
    assert attacks.membership_auc_items(pop, truth) == 0.5
    # Item 0: holders users 0 and 3 scored 0.9 and 0.2, non-holders 0.5 and 0.1 -> 3 of 4 pairs right.
    s = np.zeros((4, 3))
    s[:, 0] = [0.9, 0.5, 0.1, 0.2]
    a = attacks._auc_along(s, truth, 0)
    assert a[0] == pytest.approx(0.75)
    assert np.isnan(attacks._auc_along(np.zeros((2, 1)), np.ones((2, 1), bool), 0)[0])   # one class only


def test_precision_at_size_and_linkage_by_hand():
    truth = np.array([[1, 1, 0, 0], [0, 0, 1, 0]], bool)
    s = np.array([[0.9, 0.1, 0.8, 0.0], [0.0, 0.0, 1.0, 0.0]])
    assert attacks.precision_at_size(s, truth) == pytest.approx((0.5 + 1.0) / 2)
    sets = np.array([[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]], bool)
    assert attacks.linkage_accuracy(sets, sets) == 1.0
    assert attacks.linkage_accuracy(sets, sets[[1, 0, 2]]) == pytest.approx(1 / 3)
    # Sizes only: users of sizes 16, 16, 32 -> 1/2, 1/2, 1.
    assert attacks.size_linkage_accuracy(np.array([16, 16, 32]), np.array([16, 16, 32])) == pytest.approx(2 / 3)


def test_reveal_observer_intersection_attack_finds_a_holder():
    # 3 users, 2 items; user 0 holds item 1. Rounds {0,1}: counts [0,1]; {1,2}: [0,0]; {0,2}: [0,1].
    obs = attacks.RevealObserver(3, 2)
    for users, counts in (([0, 1], [0, 1]), ([1, 2], [0, 0]), ([0, 2], [0, 1])):
        obs.observe(np.array(users), np.array(counts), np.zeros(2))
    s = obs.scores()
    assert s[0, 1] == pytest.approx(1 - 2 / 3) and s[1, 1] == pytest.approx(0.5 - 2 / 3)
    assert np.argmax(s[:, 1]) == 0


def test_plain_observer_recovers_residual_signs_and_rating_attack_beats_a_constant():
    rng = np.random.default_rng(0)
    obs = attacks.PlainObserver(1, 6)
    h = rng.normal(size=8)
    e = np.array([1.0, -0.5, 0.25, -1.0, 0.5, 2.0])                 # rating residuals
    rows = np.concatenate([0.1 * e[:, None] * h[None], 0.1 * e[:, None]], 1)
    obs.observe(0, np.arange(6), rows, rng.normal(size=(6, 8)))
    assert np.all(np.sign(obs.resid[0]) == np.sign(e))
    # rating = 3 + 2 * feature: fitted on shadow users, exact on the others
    users = np.repeat(np.arange(10), 5)
    f = rng.normal(size=50)
    ratings = 3 + 2 * f
    assert attacks.rating_attack([f], ratings, users, np.arange(5)) == pytest.approx(0.0, abs=1e-9)
    um, im = attacks.baseline_rmse(ratings, users, np.tile(np.arange(5), 10), np.arange(5))
    assert um > 0 and im > 0
