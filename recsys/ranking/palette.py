"""MAP, the multi-value alignment palette (Wang et al., ICLR 2025), for recommendation lists. Pure numpy.

A user's base distribution over candidate items is p0 = softmax(s / T) of the ranker's scores s. Each
item i has values r_i ∈ [0, 1]^m (long-tail, novelty, distance from the user's profile, match to a
query). With targets c ∈ [0, 1]^m, MAP's aligned distribution is the closest one to p0 (in KL) whose
expected values reach the targets:

    p_λ(i) ∝ p0(i) · exp(λᵀ r_i),   λ = argmax_{λ ≥ 0}  λᵀc − log Σ_i p0(i) exp(λᵀ r_i)

(the dual, concave; its gradient is c − E_{p_λ}[r]). The sum runs over every candidate exactly, no
sampling. The list is the top-k of log p0 + λᵀr. Targets are feasible iff some distribution over the
candidates reaches them (a linear program); infeasible ones are reported with what is reachable.
T is set so that p0 has perplexity k (``temperature_for_perplexity``): then the distribution's
expectations describe a k-item list rather than the whole catalogue.

Baselines for the same knobs: a linear mix s + wᵀ r with one hand-set w for all users, and MMR
(Carbonell & Goldstein 1998) for diversity.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

VALUES = ("tail", "novelty", "diversity", "match")
SHARE_VALUES = VALUES      # every value is scaled to [0, 1], so every target must lie in [0, 1]


def item_values(pop: np.ndarray, n_users: int, content: np.ndarray | None, profile: np.ndarray | None,
                query: np.ndarray | None, head_fraction: float = 0.2) -> dict[str, np.ndarray]:
    """Per-item values in [0, 1]: (N,) each.
    tail: 1 outside the most popular ``head_fraction`` of items (by training holders);
    novelty: −log2((pop + 1) / (U + 1)) / log2(U + 1) (1 = nobody has it);
    diversity: (1 − cos(item, user's history profile)) / 2 (needs content and a profile);
    match: (1 + cos(item, query)) / 2 (needs content and a query vector)."""
    pop = np.asarray(pop, np.float64)
    N = len(pop)
    order = np.argsort(-pop, kind="stable")
    tail = np.ones(N)
    tail[order[:int(np.ceil(head_fraction * N))]] = 0.0
    out = {"tail": tail, "novelty": -np.log2((pop + 1) / (n_users + 1)) / np.log2(n_users + 1)}
    if content is not None and profile is not None:
        p = profile / max(np.linalg.norm(profile), 1e-12)
        out["diversity"] = (1.0 - content @ p) / 2.0
    if content is not None and query is not None:
        q = query / max(np.linalg.norm(query), 1e-12)
        out["match"] = (1.0 + content @ q) / 2.0
    return {k: np.clip(v, 0.0, 1.0) for k, v in out.items()}


def log_softmax(s: np.ndarray, T: float) -> np.ndarray:
    z = s / T
    z = z - z.max()
    return z - np.log(np.exp(z).sum())


def temperature_for_perplexity(s: np.ndarray, k: int, iters: int = 60) -> float:
    """T > 0 with exp(H(softmax(s / T))) = k (bisection in log T; perplexity grows with T)."""
    k = min(max(k, 1), len(s))
    if np.ptp(s) == 0 or k >= len(s):
        return 1.0
    lo, hi = np.log(np.ptp(s)) - 12, np.log(np.ptp(s)) + 12
    for _ in range(iters):
        mid = (lo + hi) / 2
        lp = log_softmax(s, np.exp(mid))
        ppl = np.exp(-(np.exp(lp) * lp).sum())
        lo, hi = (mid, hi) if ppl < k else (lo, mid)
    return float(np.exp((lo + hi) / 2))


def feasible(R: np.ndarray, c: np.ndarray, tol: float = 1e-9) -> bool:
    """Whether some distribution q over the items reaches E_q[r] ≥ c: R (N, m), c (m,)."""
    if len(c) == 0:
        return True
    if len(c) == 1:
        return bool(R[:, 0].max() >= c[0] - tol)
    from scipy.optimize import linprog

    N, m = R.shape
    res = linprog(np.zeros(N), A_ub=-R.T, b_ub=-c + tol, A_eq=np.ones((1, N)), b_eq=[1.0], bounds=(0, None),
                  method="highs")
    return bool(res.status == 0)


@dataclass
class Aligned:
    lam: np.ndarray           # (m,) ≥ 0
    expected: np.ndarray      # (m,) E_{p_λ}[r]
    feasible: bool
    logp: np.ndarray          # (N,) log p_λ


def dual(lam: np.ndarray, logp0: np.ndarray, R: np.ndarray, c: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """The dual objective g(λ) = λᵀc − log E_p0[exp(λᵀr)], its gradient c − E_{p_λ}[r], and log p_λ."""
    a = logp0 + R @ lam
    mx = a.max()
    lse = mx + np.log(np.exp(a - mx).sum())
    logp = a - lse
    return float(lam @ c - lse), c - np.exp(logp) @ R, logp


def align(logp0: np.ndarray, R: np.ndarray, c: np.ndarray, lam_max: float = 1e4, iters: int = 100,
          tol: float = 1e-6) -> Aligned:
    """Solve MAP's dual for one user by projected Newton with backtracking: logp0 (N,), R (N, m), c (m,).
    Infeasible targets: λ is pushed to lam_max on the unreachable values and ``feasible`` is False."""
    m = len(c)
    lam = np.zeros(m)
    g, grad, logp = dual(lam, logp0, R, c)
    for _ in range(iters):
        p = np.exp(logp)
        mean = p @ R
        H = (R * p[:, None]).T @ R - np.outer(mean, mean) + 1e-9 * np.eye(m)       # Cov_p(r) = −∇²g
        free = (lam > 0) | (grad > 0)                                                 # not pinned at 0
        if not free.any() or np.abs(grad[free]).max() < tol:
            break
        step = np.zeros(m)
        step[free] = np.linalg.solve(H[np.ix_(free, free)], grad[free])
        t = 1.0
        while True:
            new = np.clip(lam + t * step, 0.0, lam_max)
            g2, grad2, logp2 = dual(new, logp0, R, c)
            if g2 >= g - 1e-12 or t < 1e-8:
                break
            t /= 2
        if np.abs(new - lam).max() < 1e-10:
            break
        lam, g, grad, logp = new, g2, grad2, logp2
    expected = np.exp(logp) @ R
    ok = bool((expected >= c - 1e-4).all()) or feasible(R, c)      # the LP only when the dual falls short
    return Aligned(lam, expected, ok, logp)


def ranked(logp0: np.ndarray, R: np.ndarray, lam: np.ndarray, k: int) -> np.ndarray:
    """Indices of the top-k of log p0 + λᵀr: (k,)."""
    return np.argsort(-(logp0 + R @ lam), kind="stable")[:k]


def list_scale(logp0: np.ndarray, R: np.ndarray, c: np.ndarray, lam: np.ndarray, k: int,
               t_max: float = 1e4, iters: int = 24) -> float:
    """The smallest t ≥ 0 whose list top-k(log p0 + t·λᵀr) reaches the targets in its own mean
    (mean_{i∈list} r_i ≥ c); t_max if none up to it does.

    MAP aligns a distribution; a k-item list is a cut of it, so its values can fall short of (or
    overshoot) what the distribution reaches. Moving along MAP's λ direction keeps the dual's trade-off
    between the values and only sets how far the list goes. (A list's λᵀr-sum does not decrease with t.)"""
    a, b = logp0, R @ lam                                                               # (N,), (N,)
    kk = min(k, len(a))

    def meets(t: float) -> bool:
        top = np.argpartition(-(a + t * b), kk - 1)[:kk] if kk < len(a) else np.arange(len(a))
        return bool((R[top].mean(0) >= c - 1e-12).all())

    if meets(0.0) or not lam.any():
        return 0.0                   # λ = 0: the distribution is already there; see list_lambda
    hi = 1.0
    while not meets(hi):
        if hi >= t_max:
            return t_max
        hi = min(hi * 4, t_max)
    lo = 0.0
    for _ in range(iters):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if meets(mid) else (mid, hi)
    return hi


def list_lambda(logp0: np.ndarray, R: np.ndarray, c: np.ndarray, lam: np.ndarray, k: int) -> np.ndarray:
    """The λ a k-item list is ranked with: MAP's λ scaled by ``list_scale``; where MAP's λ is 0 but
    the list falls short, the direction of the values it misses."""
    d = lam if lam.any() else (R[ranked(logp0, R, lam, k)].mean(0) < c).astype(float)
    return list_scale(logp0, R, c, d, k) * d


def federated_lambda(users: list[tuple[np.ndarray, np.ndarray]], c: np.ndarray, steps: int = 200,
                     lr: float = 20.0, lam_max: float = 1e4) -> tuple[np.ndarray, list[np.ndarray]]:
    """One λ for all users by dual ascent on summed statistics: each round every user reports only
    E_{p_u,λ}[r] (m numbers; summable under secure aggregation), the server steps
    λ ← clip(λ + lr · (c − mean_u E_{p_u,λ}[r]), 0, lam_max). users: (logp0 (N_u,), R (N_u, m)) each.
    Returns λ and the mean expectations per step."""
    lam = np.zeros(len(c))
    trace = []
    for _ in range(steps):
        mean = np.mean([dual(lam, lp, R, c)[1] for lp, R in users], 0)              # c − E[r], averaged
        trace.append(c - mean)
        lam = np.clip(lam + lr * mean, 0.0, lam_max)
    return lam, trace


def linear_mix(s: np.ndarray, R: np.ndarray, w: np.ndarray, k: int) -> np.ndarray:
    """Top-k of s + Rw (a hand-weighted mix of the ranker's score and the values)."""
    return np.argsort(-(s + R @ w), kind="stable")[:k]


def mmr(s: np.ndarray, content: np.ndarray, beta: float, k: int) -> np.ndarray:
    """Maximal marginal relevance: greedily take argmax (1 − β)·ŝ_i − β·max_{j∈list} cos(i, j), with ŝ the
    scores scaled to [0, 1]. content (N, D) unit rows. (k,)"""
    sn = (s - s.min()) / max(np.ptp(s), 1e-12)
    chosen: list[int] = []
    maxsim = np.full(len(s), -np.inf)
    avail = np.ones(len(s), bool)
    for _ in range(min(k, len(s))):
        obj = (1 - beta) * sn - beta * np.where(np.isfinite(maxsim), maxsim, 0.0)
        obj[~avail] = -np.inf
        j = int(np.argmax(obj))
        chosen.append(j)
        avail[j] = False
        maxsim = np.maximum(maxsim, content @ content[j])
    return np.array(chosen, np.int64)


def intra_list_diversity(items: np.ndarray, content: np.ndarray) -> float:
    """Mean pairwise (1 − cos)/2 over a list's items (0 for lists shorter than 2)."""
    if len(items) < 2:
        return 0.0
    C = content[items]
    S = C @ C.T
    n = len(items)
    return float(((1 - S) / 2)[~np.eye(n, dtype=bool)].mean())


def parse_targets(specs: list[str]) -> dict[str, float]:
    """['tail=0.3', 'novelty=0.5'] -> {'tail': 0.3, 'novelty': 0.5}; ValueError with one line otherwise."""
    out = {}
    for sp in specs:
        name, eq, val = sp.partition("=")
        name = name.strip()
        if not eq:
            raise ValueError(f"--target {sp!r}: expected NAME=VALUE, e.g. tail=0.3")
        if name not in VALUES:
            raise ValueError(f"--target {sp!r}: unknown value {name!r} (one of: {', '.join(VALUES)})")
        try:
            v = float(val)
        except ValueError:
            raise ValueError(f"--target {sp!r}: {val!r} is not a number") from None
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"--target {sp!r}: {name} is a share in [0, 1], got {v}")
        out[name] = v
    return out
