"""What an honest-but-curious server can infer from what it saw: pure scoring and metrics, no I/O.

Observers accumulate, round by round, what one party sees; ``membership_*`` and ``rating_attack`` turn
their scores into figures. Used by ``fedrec bench privacy`` (fedrec/bench/privacy.py).

Views:
  * ``PlainObserver``: the server of a plain run (every message: item ids, rows, biases).
  * ``RevealObserver``: the server of a secure-aggregation run (per round: who took part, and the
    revealed per-item sums and counts); its attack intersects rounds: an item's count is higher, on
    average, in the rounds a holder of it took part in.
An aggregator of a secure run sees each client's padded key count and pseudorandom DPF keys; its
scores come from expanding the keys (see fedrec/bench/privacy.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata


# -- metrics -------------------------------------------------------------------------------------------
def _auc_along(scores: np.ndarray, truth: np.ndarray, axis: int) -> np.ndarray:
    """AUC of ``scores`` separating truth True from False along ``axis`` (ties count half); NaN where
    one class is empty."""
    r = rankdata(scores, axis=axis)
    pos = truth.sum(axis)
    neg = truth.shape[axis] - pos
    s = np.where(truth, r, 0.0).sum(axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (s - pos * (pos + 1) / 2.0) / (pos * neg)


def membership_auc_items(scores: np.ndarray, truth: np.ndarray) -> float:
    """Prior-free membership AUC: for each item, how well the scores separate the users who hold it
    from those who do not (a popularity prior scores every user alike: 0.5); mean over items with both.
    scores, truth: (U, N)."""
    a = _auc_along(scores, truth, 0)
    return float(np.nanmean(a))


def membership_auc_users(scores: np.ndarray, truth: np.ndarray) -> float:
    """Per-user membership AUC over items (ranks a user's items above the others), mean over users.
    A popularity prior already scores above 0.5 here; compare against it."""
    return float(np.nanmean(_auc_along(scores, truth, 1)))


def precision_at_size(scores: np.ndarray, truth: np.ndarray, seed: int = 0) -> float:
    """Mean over users of the share of the top-|S_u| scored items that are in S_u (ties broken at random)."""
    rng = np.random.default_rng(seed)
    jitter = rng.random(scores.shape) * 1e-9 * (np.abs(scores).max() + 1.0)
    order = np.argsort(-(scores + jitter), axis=1)
    sizes = truth.sum(1)
    hits = np.take_along_axis(truth, order, 1)
    return float(np.mean([hits[u, :k].mean() for u, k in enumerate(sizes) if k > 0]))


def linkage_accuracy(then: np.ndarray, now: np.ndarray) -> float:
    """Item-id sets of the same clients seen in two rounds with the client ids stripped, as (U, N) 0/1
    rows in the same order: the share of clients whose later set is most similar (Jaccard) to their own
    earlier set among all earlier ones."""
    a, b = np.asarray(then, np.float64), np.asarray(now, np.float64)
    inter = b @ a.T                                                       # (U, U)
    union = b.sum(1)[:, None] + a.sum(1)[None, :] - inter
    jac = inter / np.maximum(union, 1)
    return float(np.mean(np.argmax(jac, 1) == np.arange(len(b))))


def size_linkage_accuracy(sizes_then: np.ndarray, sizes_now: np.ndarray) -> float:
    """The same when only a size is seen (padded key counts): a guess among the earlier clients of the
    same size, right with probability 1 / (their number); the mean of that."""
    sizes_then = np.asarray(sizes_then)
    return float(np.mean([1.0 / max(1, int((sizes_then == s).sum())) if (sizes_then == s).any() else 0.0
                          for s in sizes_now]))


# -- observers -----------------------------------------------------------------------------------------
@dataclass
class PlainObserver:
    """Everything a plain server sees, kept as scores: ``seen`` (U, N) 1 where user u sent item i's row;
    for the rating attack, from u's last message: ``bias`` the bias delta of item i, ``resid`` the row
    delta's coordinate along the message's main direction (local SGD moves every row of a user along its
    code h_u, by the rating residual) and ``pred`` the global row's coordinate along it (the prediction's
    direction)."""
    n_users: int
    n_items: int

    def __post_init__(self):
        shape = (self.n_users, self.n_items)
        self.seen = np.zeros(shape, np.float32)
        self.bias = np.zeros(shape, np.float32)
        self.resid = np.zeros(shape, np.float32)
        self.pred = np.zeros(shape, np.float32)

    def observe(self, user: int, ids: np.ndarray, row_delta: np.ndarray, global_rows: np.ndarray) -> None:
        """row_delta (R, H1 + 1): [row, bias] deltas of the message; global_rows (R, H1): the rows sent."""
        self.seen[user, ids] = 1.0
        d, b = row_delta[:, :-1], row_delta[:, -1]
        self.bias[user, ids] = b
        if len(ids) > 1:
            v = np.linalg.svd(d, full_matrices=False)[2][0]                # (H1,) main direction ~ h_u
            c = d @ v
            if np.dot(c, b) < 0:                                           # the bias delta fixes the sign
                v, c = -v, -c
            self.resid[user, ids] = c
            self.pred[user, ids] = global_rows @ v

@dataclass
class RevealObserver:
    """A secure run's server: per round, the participants and the revealed counts (N,) and bias sums (N,).
    ``scores`` is the intersection attack: mean count of item i over the rounds u took part in, minus
    its mean over all rounds."""
    n_users: int
    n_items: int

    def __post_init__(self):
        self.count_sum = np.zeros((self.n_users, self.n_items))
        self.bias_sum = np.zeros((self.n_users, self.n_items))
        self.rounds_in = np.zeros(self.n_users)
        self.all_counts = np.zeros(self.n_items)
        self.rounds = 0

    def observe(self, users: np.ndarray, counts: np.ndarray, bias_sums: np.ndarray) -> None:
        users = np.asarray(users)
        mean_bias = np.where(counts > 0, bias_sums / np.maximum(counts, 1), 0.0)
        self.count_sum[users] += counts
        self.bias_sum[users] += mean_bias
        self.rounds_in[users] += 1
        self.all_counts += counts
        self.rounds += 1

    def scores(self) -> np.ndarray:
        per = self.count_sum / np.maximum(self.rounds_in, 1)[:, None]
        return per - self.all_counts / max(1, self.rounds)

    def mean_bias(self) -> np.ndarray:
        return self.bias_sum / np.maximum(self.rounds_in, 1)[:, None]


# -- rating inference ------------------------------------------------------------------------------------
def rating_attack(features: list[np.ndarray], ratings: np.ndarray, users: np.ndarray, shadow: np.ndarray
                  ) -> float:
    """RMSE of a least-squares rating model on ``features`` (each (M,), one per (user, item) pair),
    fitted on the pairs of ``shadow`` users (whose ratings the attacker knows) and scored on the others."""
    X = np.column_stack([np.ones(len(ratings))] + [np.asarray(f, np.float64) for f in features])
    X = np.column_stack([X, X[:, 1:] ** 2])
    fit = np.isin(users, shadow)
    w, *_ = np.linalg.lstsq(X[fit], ratings[fit], rcond=None)
    pred = np.clip(X[~fit] @ w, ratings.min(), ratings.max())
    return float(np.sqrt(np.mean((pred - ratings[~fit]) ** 2)))


def baseline_rmse(ratings: np.ndarray, users: np.ndarray, items: np.ndarray, shadow: np.ndarray
                  ) -> tuple[float, float]:
    """(user-mean oracle RMSE, item-mean-from-shadow-users RMSE) on the non-shadow pairs."""
    fit = np.isin(users, shadow)
    um = np.bincount(users, ratings) / np.maximum(np.bincount(users), 1)
    n = items.max() + 1
    im_s = np.bincount(items[fit], ratings[fit], minlength=n)
    im_c = np.bincount(items[fit], minlength=n)
    im = np.where(im_c > 0, im_s / np.maximum(im_c, 1), ratings[fit].mean())
    t = ~fit
    return (float(np.sqrt(np.mean((um[users[t]] - ratings[t]) ** 2))),
            float(np.sqrt(np.mean((im[items[t]] - ratings[t]) ** 2))))
