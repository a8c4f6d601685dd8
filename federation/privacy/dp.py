"""Differential privacy for the federated decoder: per-client clipping, Gaussian noise, RDP accounting.

Pure functions over a round's client messages (see federation.strategies.messages); no transport. The guarantee
is user-level DP of the *shared decoder* (each client is one user): a client's whole contribution to a
round — its item rows, their biases and the dense decoder layer, as a change against the global model it
received — is clipped to L2 norm ``clip``; the server adds N(0, (noise_multiplier * clip)^2) to *every*
coordinate of the decoder, including the rows of items nobody in the round touched (otherwise the set of
updated rows would reveal which items the round's users interacted with), and divides by the expected
number of clients (a public constant; the actual count is not used, it could leak).

With DP the personalfr row rule is necessarily the participants average (fixed denominator); the
holders average divides by how many clients hold a row, whose sensitivity is unbounded.

Accounting: the sampled Gaussian mechanism's Renyi DP (Mironov et al. 2019) via Opacus' analysis
functions, composed over rounds, converted to (epsilon, delta). Client sampling here is a fixed-size draw
without replacement; the accountant assumes Poisson sampling at rate q = fraction — the approximation
used by Flower's and TF Federated's DP-FedAvg, documented as such.

Encoders never leave clients and need no noise. Scores a user sees come from their own encoder and the
noised decoder, so recommendations inherit the decoder's guarantee towards *other* users.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass

import numpy as np
import torch

from federation.strategies.messages import KEY_ITEM_IDS, KEY_ROW_BIAS, KEY_ROWS, dense_pairs, update_norm

_RDP_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [128, 256, 512]


@dataclass(frozen=True)
class DPSettings:
    noise_multiplier: float       # sigma: noise std / clip
    clip: float                   # L2 bound on one client's update per round
    delta: float                  # target delta of the reported epsilon
    noise_seed: int | None = None  # None: fresh OS randomness (production); an int only for tests


def clip_update(msg: dict[str, np.ndarray], global_p: dict[str, torch.Tensor], clip: float
                ) -> tuple[dict[str, np.ndarray], float]:
    """Scale the message's change against ``global_p`` to L2 norm <= clip. Returns (message, its
    norm before clipping). Run on the client before sending, and again on the server (idempotent for
    honest clients, bounds a dishonest one)."""
    norm = update_norm(msg, global_p)
    f = min(1.0, clip / max(norm, 1e-12))
    if f >= 1.0:
        return dict(msg), norm
    ids = torch.as_tensor(msg[KEY_ITEM_IDS])
    out = dict(msg)
    pairs = [(KEY_ROWS, global_p["dec_out"][ids]), (KEY_ROW_BIAS, global_p["dec_ob"][ids])]
    for k, ref in pairs + dense_pairs(msg, global_p):
        r = ref.double().cpu().numpy()
        out[k] = (r + f * (np.asarray(msg[k], np.float64) - r)).astype(np.float32)
    return out, norm


def dp_aggregate(global_p: dict[str, torch.Tensor], msgs: list[dict[str, np.ndarray]], dp: DPSettings,
                 expected_clients: float, server_lr: float = 1.0, rnd: int = 0
                 ) -> dict[str, torch.Tensor]:
    """new = old + server_lr * (sum_c clip(delta_c) + N(0, (sigma*clip)^2 I)) / expected_clients,
    over the whole decoder (dec_out (N, H1), dec_ob (N,), dec_W1 (H1, H2), dec_b1 (H1,), and the
    content projection dec_P (H1, F) of a content-aware model: it is part of the clipped update and
    gets noise like every other shared coordinate).
    Vectorized over the round's messages; ``clip_update`` is the one-message version."""
    f64 = torch.float64
    g = {k: v.detach().cpu().to(f64) for k, v in global_p.items()}
    sums = {k: torch.zeros_like(v) for k, v in g.items()}
    if msgs:
        lens = torch.tensor([len(m[KEY_ITEM_IDS]) for m in msgs])
        seg = torch.repeat_interleave(torch.arange(len(msgs)), lens)                      # (T,)
        ids = torch.as_tensor(np.concatenate([m[KEY_ITEM_IDS] for m in msgs]), dtype=torch.long)
        d_rows = torch.as_tensor(np.concatenate([m[KEY_ROWS] for m in msgs]), dtype=f64) - g["dec_out"][ids]   # (T, H1)
        d_ob = torch.as_tensor(np.concatenate([m[KEY_ROW_BIAS] for m in msgs]), dtype=f64) - g["dec_ob"][ids]  # (T,)
        dense = [k for k, _ in dense_pairs(msgs[0], g)]            # dec_W1, dec_b1, dec_P, the embedder
        d = {k: torch.as_tensor(np.stack([m[k] for m in msgs]), dtype=f64) - g[k] for k in dense}   # (C, ...)
        sq = sum((v.reshape(len(msgs), -1) ** 2).sum(1) for v in d.values())               # (C,)
        sq = sq.index_add(0, seg, (d_rows ** 2).sum(1) + d_ob ** 2)
        f = (dp.clip / sq.sqrt().clamp(min=1e-12)).clamp(max=1.0)                         # (C,) clip factors
        for k, v in d.items():
            sums[k] = torch.tensordot(f, v, dims=([0], [0]))
        sums["dec_out"].index_add_(0, ids, d_rows * f[seg, None])
        sums["dec_ob"].index_add_(0, ids, d_ob * f[seg])
    gen = torch.Generator().manual_seed(dp.noise_seed * 1_000_003 + rnd if dp.noise_seed is not None
                                        else secrets.randbits(63))
    std = dp.noise_multiplier * dp.clip
    out = dict(global_p)
    for k, s in sums.items():
        noise = torch.randn(s.shape, generator=gen, dtype=f64) * std
        step = server_lr * (s + noise) / max(expected_clients, 1e-12)
        out[k] = (g[k] + step).to(global_p[k].dtype).to(global_p[k].device)
    return out


def epsilon(noise_multiplier: float, sample_rate: float, rounds: int, delta: float) -> float:
    """(epsilon at ``delta``) after ``rounds`` rounds of the sampled Gaussian mechanism."""
    if rounds <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return float("inf")
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    rdp = compute_rdp(q=min(1.0, sample_rate), noise_multiplier=noise_multiplier, steps=rounds, orders=_RDP_ORDERS)
    eps, _ = get_privacy_spent(orders=_RDP_ORDERS, rdp=rdp, delta=delta)
    return float(eps)


def noise_for_epsilon(target_eps: float, sample_rate: float, rounds: int, delta: float,
                      lo: float = 0.3, hi: float = 50.0) -> float:
    """Smallest noise multiplier whose epsilon after ``rounds`` is <= target (bisection)."""
    if epsilon(hi, sample_rate, rounds, delta) > target_eps:
        raise ValueError(f"epsilon {target_eps} is not reachable with noise <= {hi}")
    for _ in range(40):
        mid = (lo + hi) / 2
        if epsilon(mid, sample_rate, rounds, delta) > target_eps:
            lo = mid
        else:
            hi = mid
    return hi
