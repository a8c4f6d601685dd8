"""The clients' local optimizer: ``clip_grad_norm_`` then ``torch.optim.SGD`` (momentum, dampening 0,
Nesterov, weight decay), with a fresh optimizer (momentum buffer) each round, as a client that
builds its optimizer when a round starts would have. Here: its config and its closed form."""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SGDConfig:
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    clip_norm: float | None = 1.0


def decay_factor(lr: float, steps: int, cfg: SGDConfig) -> float:
    """Factor by which a parameter with zero gradient shrinks over ``steps`` local SGD steps
    (weight decay through momentum); used to average rows a client never touched."""
    return sgd_coefficients(steps, lr, cfg)[0][-1]


def sgd_coefficients(steps: int, lr: float, cfg: SGDConfig) -> tuple[list[float], list[list[float]]]:
    """Closed form of ``steps`` SGD steps (see _coefficients); fresh lists, computed once per arguments
    (the engine asks for them twice per cohort and round)."""
    a, b = _coefficients(steps, lr, cfg)
    return list(a), [list(r) for r in b]


@functools.lru_cache(maxsize=256)
def _coefficients(steps: int, lr: float, cfg: SGDConfig) -> tuple[tuple[float, ...], tuple[tuple[float, ...], ...]]:
    """Closed form of ``steps`` SGD steps on a parameter P with gradients G_0..G_{S-1}.

    SGD (momentum, Nesterov, weight decay) is linear in P_0 and the gradients, so
        P_s = a[s] * P_0 + sum_{j<s} b[s][j] * G_j
    with scalars a (S+1,) and b (S+1, S) that depend only on lr, momentum and weight decay,
    not on the client. Computed by running the recurrence on coefficient vectors
    (index 0: P_0, index 1+j: G_j), in float64.
    """
    S = steps
    P = np.zeros(S + 1)
    P[0] = 1.0
    buf = None
    a, b = [1.0], [[0.0] * S]
    for s in range(S):
        g = np.zeros(S + 1)
        g[1 + s] = 1.0
        d = g + cfg.weight_decay * P
        if cfg.momentum:
            buf = d.copy() if buf is None else cfg.momentum * buf + d
            d = d + cfg.momentum * buf if cfg.nesterov else buf
        P = P - lr * d
        a.append(float(P[0]))
        b.append([float(v) for v in P[1:]])
    return tuple(a), tuple(tuple(r) for r in b)
