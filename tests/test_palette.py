"""MAP palette: the dual on hand-computed cases, feasibility, the federated λ, the baselines, targets."""
import numpy as np
import pytest

from recsys.ranking.palette import (align, dual, federated_lambda, feasible, intra_list_diversity, item_values,
                                    linear_mix, list_lambda, list_scale, log_softmax, mmr, parse_targets, ranked,
                                    temperature_for_perplexity)


def test_one_value_by_hand():
    # p0 = (1/2, 1/2), r = (1, 0), target 0.8: p_λ(0) = e^λ / (e^λ + 1) = 0.8  =>  λ = log 4
    logp0 = np.log([0.5, 0.5])
    R = np.array([[1.0], [0.0]])
    a = align(logp0, R, np.array([0.8]))
    assert a.feasible
    np.testing.assert_allclose(a.lam, [np.log(4)], atol=1e-6)
    np.testing.assert_allclose(np.exp(a.logp), [0.8, 0.2], atol=1e-7)
    # a target the base already meets costs nothing: λ = 0, p = p0
    b = align(logp0, R, np.array([0.3]))
    np.testing.assert_array_equal(b.lam, [0.0])


def test_dual_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    logp0 = log_softmax(rng.standard_normal(30), 1.0)
    R, c, lam = rng.random((30, 3)), np.array([0.6, 0.5, 0.4]), np.array([0.3, 1.2, 0.0])
    g, grad, _ = dual(lam, logp0, R, c)
    num = [(dual(lam + 1e-6 * e, logp0, R, c)[0] - dual(lam - 1e-6 * e, logp0, R, c)[0]) / 2e-6 for e in np.eye(3)]
    np.testing.assert_allclose(grad, num, atol=1e-6)


def test_several_values_meet_feasible_targets_and_report_infeasible_ones():
    rng = np.random.default_rng(1)
    N = 200
    logp0 = log_softmax(3 * rng.standard_normal(N), 1.0)
    R = rng.random((N, 2))
    c = np.array([0.7, 0.65])
    a = align(logp0, R, c)
    assert a.feasible and (a.expected >= c - 1e-5).all()
    # KL-closest: the expectations sit on the targets they bind (λ > 0)
    np.testing.assert_allclose(a.expected[a.lam > 0], c[a.lam > 0], atol=1e-5)
    # two items, each carries one value: both shares ≥ 0.7 is impossible
    R2 = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert not feasible(R2, np.array([0.7, 0.7])) and feasible(R2, np.array([0.5, 0.5]))
    assert not align(np.log([0.5, 0.5]), R2, np.array([0.7, 0.7])).feasible


def test_ranked_list_is_top_of_log_p0_plus_lambda_r():
    logp0 = np.log([0.5, 0.3, 0.2])
    R = np.array([[0.0], [0.0], [1.0]])
    np.testing.assert_array_equal(ranked(logp0, R, np.array([0.0]), 2), [0, 1])
    np.testing.assert_array_equal(ranked(logp0, R, np.array([1.0]), 2), [2, 0])   # log .2 + 1 > log .5


def test_list_scale_by_hand():
    # p0 = (.4, .3, .2, .1), tail items 2 and 3, k = 2, target 0.5: one tail item must enter the top 2,
    # i.e. log .2 + t > log .3: the smallest t is log 1.5
    logp0 = np.log([0.4, 0.3, 0.2, 0.1])
    R = np.array([[0.0], [0.0], [1.0], [1.0]])
    t = list_scale(logp0, R, np.array([0.5]), np.array([1.0]), 2)
    assert t == pytest.approx(np.log(1.5), rel=1e-6)
    np.testing.assert_array_equal(np.sort(ranked(logp0, R, np.array([t]), 2)), [0, 2])
    assert list_scale(logp0, R, np.array([0.0]), np.array([1.0]), 2) == 0.0        # met already
    # MAP's λ is 0 (the distribution meets 0.2) but the top-2 list has no tail item: pushed along tail
    lam = list_lambda(logp0, R, np.array([0.2]), np.array([0.0]), 2)
    assert lam[0] == pytest.approx(np.log(1.5), rel=1e-6)


def test_temperature_gives_the_asked_perplexity():
    s = np.random.default_rng(2).standard_normal(500) * 4
    T = temperature_for_perplexity(s, 10)
    lp = log_softmax(s, T)
    assert np.exp(-(np.exp(lp) * lp).sum()) == pytest.approx(10, rel=1e-4)


def test_federated_lambda_meets_the_mean_target():
    rng = np.random.default_rng(3)
    users = [(log_softmax(2 * rng.standard_normal(50), 1.0), rng.random((50, 1))) for _ in range(20)]
    lam, trace = federated_lambda(users, np.array([0.7]), steps=400, lr=5.0)
    mean = np.mean([np.exp(dual(lam, lp, R, np.array([0.7]))[2]) @ R for lp, R in users], 0)
    assert lam[0] > 0 and mean[0] == pytest.approx(0.7, abs=2e-3)


def test_values_baselines_and_targets():
    pop = np.array([100, 50, 10, 1, 0])
    v = item_values(pop, 100, np.eye(5), np.array([1.0, 0, 0, 0, 0]), np.array([0, 1.0, 0, 0, 0]), head_fraction=0.4)
    np.testing.assert_array_equal(v["tail"], [0, 0, 1, 1, 1])
    assert v["novelty"][4] == pytest.approx(1.0) and v["novelty"][0] == pytest.approx(-np.log2(101 / 101) / np.log2(101))
    np.testing.assert_allclose(v["diversity"], [0, .5, .5, .5, .5])
    np.testing.assert_allclose(v["match"], [.5, 1, .5, .5, .5])
    s = np.array([3.0, 2.9, 0.0])
    C = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_array_equal(mmr(s, C, 0.0, 2), [0, 1])
    np.testing.assert_array_equal(mmr(s, C, 0.6, 2), [0, 2])          # item 1 duplicates item 0
    assert intra_list_diversity(np.array([0, 2]), C) == pytest.approx(0.5)
    np.testing.assert_array_equal(linear_mix(s, np.array([[0.0], [0.0], [1.0]]), np.array([5.0]), 1), [2])
    assert parse_targets(["tail=0.3", "novelty=1"]) == {"tail": 0.3, "novelty": 1.0}
    for bad, msg in (("tail", "NAME=VALUE"), ("fun=0.2", "unknown value"), ("tail=x", "not a number"),
                     ("tail=1.5", r"in \[0, 1\]")):
        with pytest.raises(ValueError, match=msg):
            parse_targets([bad])
