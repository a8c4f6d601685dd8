"""A shared user embedder in the spirit of Persona-Plug (Liu et al., ACL 2025): any history, however
short, mapped to a user vector by shared parameters alone. Pure torch: no I/O, no transport.

For a user with history entries h = 1..n (item i_h, input value v_h: the rating, or 1 for implicit
feedback) and the item rows R (N, H1) every client receives (dec_out, plus dec_P c_i with content):

    e_h   = R[i_h] + v_h w_r                                entry vector (H1); w_r = emb_r (H1)   (1)
    c     = mean_h e_h                                      the request's context (H1)            (2)
    q_j   = Q_j + c                                         query of head j = 1..m; Q = emb_Q (m, H1)
    a_jh  = softmax_h(q_j . e_h / sqrt(H1))                 input-aware attention over the history (3)
    p_j   = sum_h a_jh e_h                                  pooled vector of head j (H1)
    z     = tanh(W [p_1; ...; p_m] + b)                     user vector (H2); W = emb_W (H2, m H1)  (4)

z takes the place of the encoder's output: it feeds the shared decoder (h3 = tanh(V1 z + c1)). The
parameters (Q, w_r, W, b) are the same for every user; R is a constant of the round (the received
rows), so the item-indexed part of the embedder is the decoder's own rows: nothing item-specific
is added to a message.

Few-shot training (``history_keep``): in each local step a client's history is subsampled (subset
sizes about log-uniform between one entry and all of them) while the loss still reconstructs the
whole history, so the embedder learns to map a handful of items to the code of the full list.
"""
from __future__ import annotations

import math

import torch

from recsys.models.autoencoder import _M, _mix, segment_sum

EMBEDDER_KEYS = ("emb_Q", "emb_r", "emb_W", "emb_b")


def embedder_shapes(h1: int, h2: int, heads: int) -> dict[str, tuple[int, ...]]:
    return {"emb_Q": (heads, h1), "emb_r": (h1,), "emb_W": (h2, heads * h1), "emb_b": (h2,)}


def init_embedder(h1: int, h2: int, heads: int, seed: int, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """Q ~ U(+-1/sqrt(H1)), W ~ U(+-1/sqrt(m H1)) (PyTorch's Linear init), w_r and b zero."""
    g = torch.Generator().manual_seed(seed)

    def u(shape, fan_in):
        return ((torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1) / math.sqrt(fan_in)).to(dtype)

    return {"emb_Q": u((heads, h1), h1), "emb_r": torch.zeros(h1, dtype=dtype),
            "emb_W": u((h2, heads * h1), heads * h1), "emb_b": torch.zeros(h2, dtype=dtype)}


def _per_entry(v: torch.Tensor, seg: torch.Tensor, batched: bool) -> torch.Tensor:
    return v.index_select(0, seg) if batched else v.unsqueeze(0)


def user_vector(p: dict[str, torch.Tensor], rows: torch.Tensor, v: torch.Tensor, seg: torch.Tensor, n: int,
                keep: torch.Tensor | None = None) -> torch.Tensor:
    """(1)-(4): z (n, H2) for n users. rows (T, H1) the received rows of each entry's item; v (T,) input
    values; seg (T,) user position; keep (T,) 0/1 (None: every entry). The embedder's parameters in
    ``p`` are shared (emb_Q (m, H1), ...) or per user (emb_Q (n, m, H1), ...: the generic training path)."""
    Q, wr, W, b = p["emb_Q"], p["emb_r"], p["emb_W"], p["emb_b"]
    batched = Q.dim() == 3
    H1 = rows.shape[1]
    kf = torch.ones_like(v) if keep is None else keep.to(rows.dtype)                     # (T,)
    e = rows + v[:, None] * _per_entry(wr, seg, batched).expand_as(rows)                 # (T, H1)   (1)
    cnt = segment_sum(kf, seg, n).clamp(min=1.0)                                         # (n,)
    c = segment_sum(kf[:, None] * e, seg, n) / cnt[:, None]                              # (n, H1)   (2)
    q = (Q if batched else Q.unsqueeze(0)) + c[:, None, :]                               # (n, m, H1)
    s = torch.einsum("tmh,th->tm", q.index_select(0, seg), e) / math.sqrt(H1)            # (T, m)    (3)
    s = s.masked_fill(kf[:, None] == 0, float("-inf"))
    top = torch.full((n, s.shape[1]), float("-inf"), dtype=s.dtype, device=s.device)
    top = top.scatter_reduce(0, seg[:, None].expand_as(s), s.detach(), "amax")          # (n, m)
    ex = torch.exp(s - top.index_select(0, seg)) * kf[:, None]                           # (T, m)
    a = ex / segment_sum(ex, seg, n).clamp(min=1e-30).index_select(0, seg)               # (T, m)
    pooled = segment_sum(a[:, :, None] * e[:, None, :], seg, n).reshape(n, -1)           # (n, m H1)
    if batched:
        out = torch.bmm(W, pooled.unsqueeze(2)).squeeze(2) + b                            # (n, H2)
    else:
        out = pooled @ W.T + b
    return torch.tanh(out)                                                               # (4)


def history_keep(seed: int, rnd: int, users: torch.Tensor, items: torch.Tensor, seg: torch.Tensor, step: int,
                 n: int) -> torch.Tensor:
    """(T,) 0/1: which history entries the embedder sees at local step ``step``. Each client draws
    t ~ U(0, 1) per step and keeps each of its n_u entries with probability n_u^-t, so the subset size
    is roughly log-uniform between 1 and n_u (a new user's handful of items is as common in training as
    a full history); the entry with the smallest uniform is always kept. A pure function of (seed,
    round, user, item, step), like the model's dropout masks: independent of which clients share a
    cohort. (Keep rates ~ U(0, 1), sizes uniform up to n_u, trained worse for k = 1-10: ml-100k valid
    NDCG@10 at k = 5 0.2178 against 0.2264, docs/benchmarks.md.)"""
    base = int(_mix(torch.tensor([(seed * 1_000_003 + rnd * 7_919 + (2_000_000 + step) * 104_729) % _M],
                                 dtype=torch.int64))[0])
    u = users.to(torch.int64) % _M                                                       # (n,)
    t = _mix((_mix(u * 2_654_435 % _M + base) + 17) % _M).to(torch.float64) / _M         # (n,) ~ U(0, 1)
    cnt = torch.zeros(n, dtype=torch.float64, device=seg.device).index_add_(0, seg, torch.ones_like(seg, dtype=torch.float64))
    kappa = cnt.clamp(min=1) ** -t                                                       # keep rate n_u^-t
    ue = users.to(torch.int64).index_select(0, seg) % _M
    ent = _mix((_mix(ue * 2_654_435 % _M + base) + items.to(torch.int64) % _M * 40_503 + 29) % _M
               ).to(torch.float64) / _M                                                  # (T,)
    low = torch.full((n,), 2.0, dtype=torch.float64, device=ent.device).scatter_reduce(0, seg, ent, "amin")
    return ((ent < kappa.index_select(0, seg)) | (ent == low.index_select(0, seg))).to(torch.float32)
