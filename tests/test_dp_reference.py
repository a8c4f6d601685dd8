"""DP checked against independent references, not against the code that produced it:
epsilon against the exact analytic Gaussian mechanism (full participation) and against RDP of the
sampled Gaussian computed here from its closed form (integer orders, Mironov et al. 2019); the noise's
measured standard deviation against sigma * clip / expected clients; clipping against the norm."""
import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from federation.privacy.dp import DPSettings, clip_update, dp_aggregate, epsilon
from federation.strategies.messages import update_norm


def exact_gaussian_delta(eps: float, mu: float) -> float:
    """δ(ε) of a Gaussian mechanism with sensitivity / σ = μ (Balle & Wang 2018, Theorem 8)."""
    return norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2)


def exact_gaussian_epsilon(mu: float, delta: float) -> float:
    lo, hi = 0.0, 100.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if exact_gaussian_delta(mid, mu) > delta else (lo, mid)
    return hi


def rdp_sampled_gaussian(q: float, sigma: float, alpha: int) -> float:
    """RDP of the sampled Gaussian mechanism at an integer order (Mironov, Talwar, Zhang 2019, eq. 3)."""
    terms = [math.lgamma(alpha + 1) - math.lgamma(k + 1) - math.lgamma(alpha - k + 1)
             + (alpha - k) * math.log1p(-q) + k * math.log(q) + (k * k - k) / (2 * sigma ** 2)
             for k in range(alpha + 1)] if q < 1 else [alpha * (alpha - 1) / (2 * sigma ** 2)]
    m = max(terms)
    return (m + math.log(sum(math.exp(t - m) for t in terms))) / (alpha - 1)


def rdp_epsilon(q: float, sigma: float, steps: int, delta: float) -> float:
    """min over integer orders of the RDP -> (ε, δ) conversion of Balle et al. 2020 (Opacus' choice)."""
    best = math.inf
    for a in range(2, 256):
        r = steps * rdp_sampled_gaussian(q, sigma, a)
        best = min(best, r + math.log((a - 1) / a) - (math.log(delta) + math.log(a)) / (a - 1))
    return best


@pytest.mark.parametrize("sigma,steps,delta", [(1.0, 1, 1e-5), (2.0, 10, 1e-5), (5.0, 100, 1e-4)])
def test_epsilon_is_an_upper_bound_close_to_the_exact_gaussian(sigma, steps, delta):
    # q = 1: T compositions of a Gaussian mechanism are one Gaussian mechanism with mu = sqrt(T) / sigma
    exact = exact_gaussian_epsilon(math.sqrt(steps) / sigma, delta)
    ours = epsilon(sigma, 1.0, steps, delta)
    assert exact <= ours <= 1.35 * exact + 0.05


@pytest.mark.parametrize("q,sigma,steps,delta", [(0.1, 1.0, 100, 1e-5), (0.3, 1.2, 300, 1e-4), (0.01, 0.8, 1000, 1e-5)])
def test_epsilon_matches_rdp_computed_independently(q, sigma, steps, delta):
    ours = epsilon(sigma, q, steps, delta)
    ref = rdp_epsilon(q, sigma, steps, delta)
    # Opacus also searches fractional orders, so it may be a little lower, never higher
    assert 0.9 * ref <= ours <= ref * (1 + 1e-6)


@pytest.mark.parametrize("q,sigma,steps,delta", [(0.1, 1.0, 100, 1e-5), (0.01, 0.8, 1000, 1e-5), (1.0, 2.0, 10, 1e-5),
                                                  (0.05, 1.5, 500, 1e-5), (0.2, 2.5, 200, 1e-5)])
def test_epsilon_within_one_percent_of_google_dp_accounting(q, sigma, steps, delta):
    """Google's dp-accounting RDP accountant on the same orders. (At ε in the 30s the two differ by a few %:
    dp-accounting drops the orders below 1.5 it cannot evaluate; such ε mean no protection anyway.)"""
    dpa = pytest.importorskip("dp_accounting")
    from federation.privacy.dp import _RDP_ORDERS

    acc = dpa.rdp.RdpAccountant(orders=_RDP_ORDERS)
    ev = dpa.GaussianDpEvent(sigma) if q >= 1 else dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(sigma))
    acc.compose(dpa.SelfComposedDpEvent(ev, steps))
    assert epsilon(sigma, q, steps, delta) == pytest.approx(acc.get_epsilon(delta), rel=0.01)


def test_two_runs_without_a_noise_seed_draw_different_noise():
    g = {"dec_out": torch.zeros(50, 4), "dec_ob": torch.zeros(50), "dec_W1": torch.zeros(4, 2), "dec_b1": torch.zeros(4)}
    s = DPSettings(noise_multiplier=1.0, clip=1.0, delta=1e-5)                  # noise_seed None: OS randomness
    a, b = dp_aggregate(g, [], s, 1.0), dp_aggregate(g, [], s, 1.0)
    assert not torch.equal(a["dec_out"], b["dec_out"])


def test_noise_has_the_stated_standard_deviation_and_clipping_bounds_the_norm():
    N, H1, H2 = 400, 16, 8
    g = {"dec_out": torch.zeros(N, H1), "dec_ob": torch.zeros(N), "dec_W1": torch.zeros(H1, H2), "dec_b1": torch.zeros(H1)}
    s = DPSettings(noise_multiplier=1.3, clip=0.7, delta=1e-5, noise_seed=11)
    out = dp_aggregate(g, [], s, expected_clients=5.0, server_lr=2.0)
    z = torch.cat([v.reshape(-1) for v in out.values()]).double()
    want = 2.0 * 1.3 * 0.7 / 5.0                                         # server_lr * sigma * clip / expected
    assert abs(z.std().item() / want - 1) < 0.02 and abs(z.mean().item()) < 4 * want / math.sqrt(z.numel())
    rng = np.random.default_rng(0)
    for scale in (0.01, 1.0, 50.0):
        m = {"item_ids": np.array([1, 5, 9]), "dec_out": (scale * rng.standard_normal((3, H1))).astype(np.float32),
             "dec_ob": (scale * rng.standard_normal(3)).astype(np.float32),
             "dec_W1": (scale * rng.standard_normal((H1, H2))).astype(np.float32),
             "dec_b1": (scale * rng.standard_normal(H1)).astype(np.float32), "weight": np.asarray(1.0, np.float32)}
        c, before = clip_update(m, g, s.clip)
        after = update_norm(c, g)
        assert after <= s.clip * (1 + 1e-5)
        assert after == pytest.approx(min(before, s.clip), rel=1e-5)       # untouched below the bound
