"""PersonalFR autoencoder math, batched over clients. Pure torch: no I/O, no transport.

Architecture (per user u, item count N, H1=256, H2=128 by default):
    x_u (N)  -> encoder  h1 = tanh(W1 x + b1) (H1) -> h2 = tanh(W2 h1 + b2) (H2)
             -> dropout(p) on h2
             -> decoder  h3 = tanh(V1 z + c1) (H1) -> y = V2 h3 + c2  (N scores)
Parameter names (Linear layout: weight is (out, in); W1 and V2 are stored item-major):
    enc_in (N, H1) = W1^T   enc_b1 (H1)   enc_W2 (H2, H1)   enc_b2 (H2)        personal (encoder)
    dec_W1 (H1, H2)         dec_b1 (H1)   dec_out (N, H1) = V2   dec_ob (N)      shared (decoder)

Content-aware decoder (``content_dim`` F > 0, issue: multimodal features): item i's output row is
    dec_out[i] + dec_P @ c_i        c_i (F) the item's fixed content vector (CLIP features, + a constant 1)
with dec_P (H1, F) a shared projection, federated like the dense decoder layer. Its score is
    y_i = h3 . dec_out[i] + (h3 @ dec_P) . c_i + dec_ob[i]
so an item nobody has rated (dec_out, dec_ob still at their zero init) is scored from content alone,
and a client still sends only its own items' rows plus the (H1, F) projection.

Tied encoder input (``input_tie`` alpha > 0): the encoder row of item i is
    enc_in[i] + alpha * r_i        r_i = the item's output row as the client received it this round
                                   (dec_out[i], plus dec_P @ c_i with content)
enc_in stays personal and becomes a residual: weight decay pulls the personal encoder towards the
federation's item vectors, so a user's code is built from what every client learned about its items
(the role a shared encoder plays in the joint model) while nothing new leaves the client. r_i is a
constant of the round: it gets no gradient from the encoder path and its message is unchanged.

Because x_u is zero outside the user's items, only the rows of enc_in for those items matter:
a client holds just those rows. With partial compression a client likewise trains and sends
only the rows of dec_out/dec_ob for its own items.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

ENCODER_KEYS = ("enc_in", "enc_b1", "enc_W2", "enc_b2")
DENSE_DECODER_KEYS = ("dec_W1", "dec_b1")
ROW_DECODER_KEYS = ("dec_out", "dec_ob")
ALL_KEYS = ENCODER_KEYS + DENSE_DECODER_KEYS + ROW_DECODER_KEYS
ITEM_ROW_KEYS = ("enc_in", "dec_out", "dec_ob")   # indexed by item
CONTENT_KEY = "dec_P"                              # (H1, F) content projection, shared; only when F > 0


@dataclass(frozen=True)
class AEShape:
    n_items: int
    h1: int = 256
    h2: int = 128
    dropout: float = 0.5
    mode: str = "explicit"          # explicit | implicit
    input_norm: str = "none"        # none | l2: scale a user's input row to unit L2 norm (Mult-DAE style)
    content_dim: int = 0            # F: width of the item content vectors (0: content-free model)
    content_dropout: float = 0.0    # P(a client's local step scores every item from content alone), see rows_kept
    input_tie: float = 0.0          # alpha: encoder row of item i = personal enc_in[i] + alpha * received row i
    embedder_heads: int = 0         # m > 0: a shared user embedder (recsys.models.embedder) with m attention heads

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        out = {"enc_in": (self.n_items, self.h1), "enc_b1": (self.h1,), "enc_W2": (self.h2, self.h1),
               "enc_b2": (self.h2,), "dec_W1": (self.h1, self.h2), "dec_b1": (self.h1,),
               "dec_out": (self.n_items, self.h1), "dec_ob": (self.n_items,)}
        if self.content_dim:
            out[CONTENT_KEY] = (self.h1, self.content_dim)
        if self.embedder_heads:
            from recsys.models.embedder import embedder_shapes

            out.update(embedder_shapes(self.h1, self.h2, self.embedder_heads))
        return out

    def extra_dense_keys(self) -> tuple[str, ...]:
        """Shared dense parameters beyond the decoder's own layer: the content projection and the
        user embedder's, when the model has them (in message order)."""
        from recsys.models.embedder import EMBEDDER_KEYS

        return (((CONTENT_KEY,) if self.content_dim else ())
                + (EMBEDDER_KEYS if self.embedder_heads else ()))


def init_params(shape: AEShape, seed: int, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """PyTorch's default Linear init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), from one seed.

    With content, the free item rows and biases start at zero: an item's score starts as its content
    score, and an item no client ever holds keeps a pure content row (cold start)."""
    g = torch.Generator().manual_seed(seed)
    fan_in = {"enc_in": shape.n_items, "enc_b1": shape.n_items, "enc_W2": shape.h1, "enc_b2": shape.h1,
              "dec_W1": shape.h2, "dec_b1": shape.h2, "dec_out": shape.h1, "dec_ob": shape.h1,
              CONTENT_KEY: max(1, shape.content_dim)}
    out = {}
    from recsys.models.embedder import EMBEDDER_KEYS, init_embedder

    for k, s in shape.param_shapes().items():
        if k == CONTENT_KEY or k in EMBEDDER_KEYS:   # drawn from their own streams: the others stay identical
            continue
        bound = 1.0 / math.sqrt(fan_in[k])
        out[k] = (torch.rand(s, generator=g, dtype=torch.float64) * 2 - 1).mul_(bound).to(dtype)
    if shape.content_dim:
        gp = torch.Generator().manual_seed(seed + 7_777)
        bound = 1.0 / math.sqrt(shape.content_dim)
        out[CONTENT_KEY] = (torch.rand(shape.h1, shape.content_dim, generator=gp, dtype=torch.float64) * 2 - 1
                            ).mul_(bound).to(dtype)
        out["dec_out"].zero_()
        out["dec_ob"].zero_()
    if shape.embedder_heads:
        out.update(init_embedder(shape.h1, shape.h2, shape.embedder_heads, seed + 9_901, dtype))
    return out


def holder_weights(holders: np.ndarray, n0: float) -> np.ndarray:
    """(N,) weight of each item's content vector: 1 / (1 + n_i / n0), holders (N,) = n_i, the number of
    users holding item i. Items many clients hold are scored mostly by their free rows, rare and cold
    items (weight 1) by content, so the projection is not pulled towards what the free rows already
    explain (measured in docs/content.md)."""
    return (1.0 / (1.0 + np.asarray(holders, np.float64) / n0)).astype(np.float32)


def input_values(shape: AEShape, data: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Encoder input of each stored entry. data (T,) ratings in CSR order; counts (U,) entries per user.

    explicit: the rating itself. implicit: 1 per interaction, or 1/sqrt(n_u) with input_norm="l2" so
    heavy users do not saturate the tanh of the first layer (why Mult-DAE normalizes its input).
    """
    if shape.mode == "explicit":
        return data.astype(np.float64)
    if shape.input_norm == "l2":
        return np.repeat(1.0 / np.sqrt(np.maximum(counts, 1)), counts)
    return np.ones(len(data))


# -- deterministic dropout -------------------------------------------------------------------
_M = 2_147_483_647          # 2^31 - 1: products of two values below it fit in int64


def _mix(x: torch.Tensor) -> torch.Tensor:
    for a in (48_271, 69_621, 16_807):
        x = (x * a + 12_345) % _M
        x = x ^ (x >> 13)
    return x


def dropout_keep(seed: int, rnd: int, users: torch.Tensor, step: int, dim: int, p: float) -> torch.Tensor:
    """Keep-mask scaled by 1/(1-p): (B, dim) float. A pure function of (seed, round, user, step, unit),
    so a client's mask does not depend on which other clients share its cohort, and the reference
    and vectorized engines (and a resumed run) draw identical masks."""
    return dropout_keep_steps(seed, rnd, users, [step], dim, p)[0]


def dropout_keep_steps(seed: int, rnd: int, users: torch.Tensor, steps, dim: int, p: float) -> torch.Tensor:
    """dropout_keep for several local steps at once: (len(steps), B, dim), row s equal to
    dropout_keep(..., steps[s], ...). One hash over all steps (the vectorized engine's ~15 integer ops
    per mask are otherwise paid on every step)."""
    if p <= 0:
        return torch.ones(len(steps), len(users), dim, device=users.device)
    base = _mix(torch.tensor([(seed * 1_000_003 + rnd * 7_919 + st * 104_729) % _M for st in steps],
                             dtype=torch.int64)).to(users.device).view(-1, 1, 1)          # (S, 1, 1)
    u = users.to(torch.int64).view(1, -1, 1) % _M                                         # (1, B, 1)
    j = torch.arange(dim, dtype=torch.int64, device=users.device).view(1, 1, -1)          # (1, 1, dim)
    h = _mix((_mix(u * 2_654_435 % _M + base) + j * 40_503) % _M)                         # (S, B, dim)
    uniform = h.to(torch.float64) / _M
    return (uniform >= p).to(torch.float32) / (1.0 - p)


def rows_kept(seed: int, rnd: int, users: torch.Tensor, step: int, p: float) -> torch.Tensor:
    """(B,) 1.0 where a client's local step uses the free item rows, 0.0 where it scores every item
    from content alone (probability p). DropoutNet-style (Volkovs et al., 2017): the free rows and
    biases (dec_out, dec_ob) are switched off for the whole step, so the content projection has to
    rank the client's items by itself, which is all a cold item will ever get. Not rescaled: at
    inference the rows are always on. Its own hash stream (step offset), same guarantees as
    dropout_keep."""
    return rows_kept_steps(seed, rnd, users, [step], p)[0]


def rows_kept_steps(seed: int, rnd: int, users: torch.Tensor, steps, p: float) -> torch.Tensor:
    """rows_kept for several local steps at once: (len(steps), B)."""
    if p <= 0:
        return torch.ones(len(steps), len(users), device=users.device)
    keep = dropout_keep_steps(seed, rnd, users, [1_000_000 + st for st in steps], 1, p)[..., 0]
    return (keep > 0).to(torch.float32)


# -- jagged batched forward -----------------------------------------------------------------
# A batch of B users is given as its T interactions concatenated: seg (T,) user position,
# items (T,) item ids, x (T,) input values. No padding anywhere.

def segment_sum(v: torch.Tensor, seg: torch.Tensor, n: int) -> torch.Tensor:
    """Sum rows of v (T, ...) into n segments -> (n, ...); differentiable."""
    return v.new_zeros((n, *v.shape[1:])).index_add(0, seg, v)


def _bmv(W: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """W (B, out, in) per user or (out, in) shared, times v (B, in) -> (B, out)."""
    if W.dim() == 2:
        return v @ W.T
    return torch.bmm(v.unsqueeze(1), W.transpose(1, 2)).squeeze(1)


def encode(p: dict[str, torch.Tensor], seg: torch.Tensor, x: torch.Tensor, n: int) -> torch.Tensor:
    """p['enc_in']: (T, H1) encoder rows of each interaction's item -> h2 (B, H2)."""
    h1 = torch.tanh(segment_sum(x[:, None] * p["enc_in"], seg, n) + p["enc_b1"])   # (B, H1)
    return torch.tanh(_bmv(p["enc_W2"], h1) + p["enc_b2"])                        # (B, H2)


def decode_hidden(p: dict[str, torch.Tensor], z: torch.Tensor) -> torch.Tensor:
    """z (B, H2) -> h3 (B, H1); dec_W1 may be per-user (B, H1, H2) or shared (H1, H2)."""
    return torch.tanh(_bmv(p["dec_W1"], z) + p["dec_b1"])


def full_scores(p: dict[str, torch.Tensor], h3: torch.Tensor, content: torch.Tensor | None = None) -> torch.Tensor:
    """Scores for all items with shared rows: h3 (B, H1) -> (B, N). content (N, F) when the model has
    a projection (p['dec_P'] (H1, F))."""
    out = h3 @ p["dec_out"].T + p["dec_ob"]
    if content is not None and CONTENT_KEY in p:
        out = out + (h3 @ p[CONTENT_KEY]) @ content.T                                 # (B, F) @ (F, N)
    return out


def item_rows(p: dict[str, torch.Tensor], content: torch.Tensor | None = None,
              items: torch.Tensor | None = None) -> torch.Tensor:
    """Effective output rows dec_out + content @ dec_P^T (so h3 . row + dec_ob is the score): (N, H1),
    or (T, H1) for ``items`` (T,) only. The latter under the received global parameters is what
    ``AEShape.input_tie`` adds to a client's personal encoder rows."""
    rows = p["dec_out"] if items is None else p["dec_out"].index_select(0, items)
    if content is not None and CONTENT_KEY in p:
        c = content if items is None else content.index_select(0, items)
        rows = rows + c.to(rows.dtype) @ p[CONTENT_KEY].T
    return rows


def client_loss(shape: AEShape, y: torch.Tensor, seg: torch.Tensor, items: torch.Tensor, x: torch.Tensor,
                n: int, frozen_scores: torch.Tensor | None = None) -> torch.Tensor:
    """Per-user loss (B,).

    y: scores of the rows the users hold — (T,) one per interaction (partial rows), or (B, N) all rows.
    explicit: mean squared error over the user's observed ratings x.
    implicit: multinomial log-likelihood -sum_observed log softmax over all N items. With partial rows
        the other items' scores come from the frozen global rows: frozen_scores (B, N) = h3 @ dec_out^T + dec_ob.
    """
    counts = segment_sum(torch.ones_like(x), seg, n)
    N = shape.n_items
    flat = seg * N + items                                                          # (T,) into (B*N)
    if shape.mode == "explicit":
        pred = y if y.dim() == 1 else y.reshape(-1).index_select(0, flat)            # (T,)
        return segment_sum((pred - x) ** 2, seg, n) / counts.clamp(min=1)
    if y.dim() == 1:
        full = frozen_scores.reshape(-1).index_put((flat,), y).view(n, N)          # (B, N)
    else:
        full = y
    logp = torch.log_softmax(full, 1).reshape(-1).index_select(0, flat)             # (T,)
    return -segment_sum(logp, seg, n)
