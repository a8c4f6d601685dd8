"""What a personalfr client sends, as plain arrays, and how the server checks and aggregates it.

Transport-free on purpose: a Flower ClientApp puts ``encode_update``'s dict into an ArrayRecord, the
in-process tests call the same functions. A client update holds exactly:
    item_ids (R,) int64    ids of the decoder rows it sends: items it interacted with, nothing else
    dec_out  (R, H1)       its trained rows of the output layer for those items
    dec_ob   (R,)          their biases
    dec_W1   (H1, H2)      its trained dense decoder layer
    dec_b1   (H1,)
    weight   ()            its aggregation weight (1, or its interaction count)
    dec_P    (H1, F)       content-aware models only: its trained content projection (item content is
                           public catalogue data, so the projection reveals nothing item-specific)
No encoder parameter, rating, timestamp or optimizer state is ever part of it. Anything else in a
message is rejected, as are wrong shapes, unknown or repeated ids, non-finite values and updates
whose size is far outside the round's (``filter_outliers``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from federation.strategies.aggregation import accumulate_rows, personalfr_rows, weighted_average
from recsys.models.autoencoder import AEShape

KEY_ITEM_IDS, KEY_ROWS, KEY_ROW_BIAS = "item_ids", "dec_out", "dec_ob"
KEY_DENSE_W, KEY_DENSE_B, KEY_WEIGHT = "dec_W1", "dec_b1", "weight"
KEY_PROJ = "dec_P"
UPDATE_KEYS = (KEY_ITEM_IDS, KEY_ROWS, KEY_ROW_BIAS, KEY_DENSE_W, KEY_DENSE_B, KEY_WEIGHT)


def update_keys(shape: AEShape) -> tuple[str, ...]:
    """The exact key set of an update for this model."""
    return UPDATE_KEYS + shape.extra_dense_keys()


def dense_keys(shape: AEShape) -> tuple[str, ...]:
    """Shared parameters every client sends whole (averaged over clients): the dense decoder layer,
    plus the content projection and the user embedder's parameters when the model has them."""
    return (KEY_DENSE_W, KEY_DENSE_B) + shape.extra_dense_keys()


def dense_pairs(msg: dict[str, np.ndarray], global_p: dict[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    """(key, global value) of every dense key the message carries (what a change is measured against)."""
    return [(k, global_p[k]) for k in msg if k in global_p and k not in (KEY_ROWS, KEY_ROW_BIAS)]


class RejectedUpdate(ValueError):
    """A client message that must not be aggregated; the text says why (it is logged)."""


KEY_BLOCKS = "blocks"     # block-sparse messages (pFedGate): which blocks of the hidden units are sent


def compress_blocks(msg: dict[str, np.ndarray], kept: np.ndarray) -> dict[str, np.ndarray]:
    """A block-sparse message: kept (K,) bool over equal blocks of the H1 hidden units; only their rows of
    dec_W1 / dec_b1 and their columns of dec_out are sent, plus ``blocks`` (K,) uint8. The other units
    are the received values (the server fills them in: ``expand_update``)."""
    H1 = np.asarray(msg[KEY_DENSE_W]).shape[0]
    units = np.repeat(np.asarray(kept, bool), H1 // len(kept))
    out = dict(msg)
    out[KEY_DENSE_W] = np.ascontiguousarray(msg[KEY_DENSE_W][units])
    out[KEY_DENSE_B] = np.ascontiguousarray(msg[KEY_DENSE_B][units])
    out[KEY_ROWS] = np.ascontiguousarray(msg[KEY_ROWS][:, units])
    out[KEY_BLOCKS] = np.asarray(kept, np.uint8)
    return out


def expand_update(msg: dict[str, np.ndarray], global_p: dict[str, torch.Tensor], shape: AEShape) -> dict[str, np.ndarray]:
    """A full update from a block-sparse one (the units not sent are the global values the client
    received); other messages are returned as they are. RejectedUpdate for a malformed block mask."""
    if KEY_BLOCKS not in msg:
        return msg
    kept = np.asarray(msg[KEY_BLOCKS])
    K = kept.shape[0] if kept.ndim == 1 else 0
    if K == 0 or shape.h1 % K or not np.isin(kept, (0, 1)).all():
        raise RejectedUpdate(f"{KEY_BLOCKS}: expected 0/1 flags for blocks dividing {shape.h1} units")
    units = np.repeat(kept.astype(bool), shape.h1 // K)
    k = int(units.sum())
    ids = np.asarray(msg.get(KEY_ITEM_IDS, np.zeros(0, np.int64)))
    want = {KEY_DENSE_W: (k, shape.h2), KEY_DENSE_B: (k,), KEY_ROWS: (len(ids), k)}
    for key, s in want.items():
        if np.asarray(msg.get(key)).shape != s:
            raise RejectedUpdate(f"{key}: shape {np.asarray(msg.get(key)).shape}, expected {s} for the sent blocks")
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer) or (len(ids) and (ids.min() < 0 or ids.max() >= shape.n_items)):
        raise RejectedUpdate("item_ids: not valid item ids")
    g = {key: global_p[key].detach().float().cpu().numpy() for key in (KEY_DENSE_W, KEY_DENSE_B, KEY_ROWS)}
    out = {key: v for key, v in msg.items() if key != KEY_BLOCKS}
    W, b, R = g[KEY_DENSE_W].copy(), g[KEY_DENSE_B].copy(), g[KEY_ROWS][ids].copy()
    W[units], b[units], R[:, units] = msg[KEY_DENSE_W], msg[KEY_DENSE_B], msg[KEY_ROWS]
    out[KEY_DENSE_W], out[KEY_DENSE_B], out[KEY_ROWS] = W, b, R
    return out


def encode_update(items: np.ndarray, trained: dict[str, torch.Tensor], weight: float) -> dict[str, np.ndarray]:
    """A client's message from its trained shared parameters (rows already restricted to ``items``)."""
    out = {KEY_ITEM_IDS: np.asarray(items, np.int64),
           KEY_ROWS: trained["dec_out"].detach().cpu().numpy().astype(np.float32),
           KEY_ROW_BIAS: trained["dec_ob"].detach().cpu().numpy().astype(np.float32),
           KEY_DENSE_W: trained["dec_W1"].detach().cpu().numpy().astype(np.float32),
           KEY_DENSE_B: trained["dec_b1"].detach().cpu().numpy().astype(np.float32),
           KEY_WEIGHT: np.asarray(weight, np.float32)}
    for k, v in trained.items():               # the content projection, the user embedder
        if k not in out:
            out[k] = v.detach().cpu().numpy().astype(np.float32)
    return out


def validate_update(msg: dict[str, np.ndarray], shape: AEShape) -> None:
    """Raise RejectedUpdate naming the first problem; return None for a well-formed update."""
    keys = update_keys(shape)
    missing = [k for k in keys if k not in msg]
    if missing:
        raise RejectedUpdate(f"missing key(s): {', '.join(missing)}")
    extra = sorted(set(msg) - set(keys))
    if extra:
        raise RejectedUpdate(f"unexpected key(s): {', '.join(extra)}")
    ids = np.asarray(msg[KEY_ITEM_IDS])
    R = len(ids) if ids.ndim == 1 else -1
    want = {KEY_ITEM_IDS: (R,), KEY_ROWS: (R, shape.h1), KEY_ROW_BIAS: (R,), KEY_DENSE_W: (shape.h1, shape.h2),
            KEY_DENSE_B: (shape.h1,), KEY_WEIGHT: ()}
    shapes = shape.param_shapes()
    want.update({k: shapes[k] for k in shape.extra_dense_keys()})
    for k, s in want.items():
        if np.asarray(msg[k]).shape != s or R < 0:
            raise RejectedUpdate(f"{k}: shape {np.asarray(msg[k]).shape}, expected {s}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise RejectedUpdate("item_ids must be integers")
    if R and (ids.min() < 0 or ids.max() >= shape.n_items):
        raise RejectedUpdate(f"unknown item id(s) outside 0..{shape.n_items - 1}")
    if len(np.unique(ids)) != R:
        raise RejectedUpdate("repeated item ids")
    for k in (KEY_ROWS, KEY_ROW_BIAS, KEY_WEIGHT) + dense_keys(shape):
        if not np.isfinite(np.asarray(msg[k], np.float64)).all():
            raise RejectedUpdate(f"{k}: NaN or infinite values")
    if float(msg[KEY_WEIGHT]) <= 0:
        raise RejectedUpdate("weight must be positive")


def validate_updates(msgs: list[dict[str, np.ndarray]], shape: AEShape) -> tuple[list[int], list[tuple[int, str]]]:
    """(indices of well-formed messages, [(index, reason)] of the others)."""
    ok, rejected = [], []
    for i, m in enumerate(msgs):
        try:
            validate_update(m, shape)
            ok.append(i)
        except RejectedUpdate as e:
            rejected.append((i, str(e)))
    return ok, rejected


def update_norm(msg: dict[str, np.ndarray], global_p: dict[str, torch.Tensor]) -> float:
    """L2 norm of the update's change against the global model it started from."""
    ids = torch.as_tensor(msg[KEY_ITEM_IDS])
    sq = 0.0
    pairs = [(KEY_ROWS, global_p["dec_out"][ids]), (KEY_ROW_BIAS, global_p["dec_ob"][ids])]
    for k, ref in pairs + dense_pairs(msg, global_p):
        d = torch.as_tensor(msg[k], dtype=torch.float64) - ref.double().cpu()
        sq += float((d * d).sum())
    return sq ** 0.5


def filter_outliers(norms: np.ndarray, factor: float = 10.0) -> np.ndarray:
    """Keep-mask (C,): reject updates whose norm exceeds ``factor`` x the round's median norm."""
    norms = np.asarray(norms, np.float64)
    if len(norms) < 3:
        return np.ones(len(norms), bool)
    return norms <= factor * max(np.median(norms), 1e-12)


@dataclass
class RoundResult:
    accepted: int
    rejected: list[tuple[int, str]]           # (message index, reason)


def aggregate_updates(global_p: dict[str, torch.Tensor], msgs: list[dict[str, np.ndarray]], shape: AEShape,
                      row_average: str = "holders", server_lr: float = 1.0, outlier_factor: float | None = 10.0,
                      strategy=None, info=None) -> tuple[dict[str, torch.Tensor], RoundResult]:
    """New shared decoder from the round's messages (the personalfr rule, see aggregation.py; or, given
    ``strategy`` and its RoundInfo ``info``, the strategy's own ``aggregate_rows``, as in process).
    Invalid or outlying messages are skipped and reported; the round goes on with the others."""
    ok, rejected = validate_updates(msgs, shape)
    if outlier_factor and ok:
        keep = filter_outliers(np.array([update_norm(msgs[i], global_p) for i in ok]), outlier_factor)
        rejected += [(i, "update norm far above the round's median") for i, k in zip(ok, keep) if not k]
        ok = [i for i, k in zip(ok, keep) if k]
    new = dict(global_p)
    if not ok:
        return new, RoundResult(0, rejected)
    dt = global_p["dec_W1"].dtype
    w = torch.tensor([float(msgs[i][KEY_WEIGHT]) for i in ok], dtype=dt)
    W = float(w.sum())
    for k in dense_keys(shape):
        new[k] = weighted_average(torch.stack([torch.as_tensor(msgs[i][k], dtype=dt) for i in ok]), w)
    ids = torch.cat([torch.as_tensor(msgs[i][KEY_ITEM_IDS]) for i in ok])
    wrow = torch.cat([w[j].repeat(len(msgs[i][KEY_ITEM_IDS])) for j, i in enumerate(ok)])
    for k in (KEY_ROWS, KEY_ROW_BIAS):
        rows = torch.cat([torch.as_tensor(msgs[i][k], dtype=dt) for i in ok])
        sums, wsum = accumulate_rows(shape.n_items, ids, rows, wrow)
        if strategy is not None:
            new[k] = strategy.aggregate_rows(k, global_p[k].to(dt), sums, wsum, W, info)
        else:
            new[k] = personalfr_rows(global_p[k], sums, wsum, W, row_average, server_lr)
    return new, RoundResult(len(ok), rejected)


# -- secure aggregation (federation.privacy.secagg): what a message contributes, and the revealed sums --
def update_deltas(msg: dict[str, np.ndarray], global_p: dict[str, torch.Tensor], shape: AEShape
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A message as secure aggregation sums it: item ids (R,), [row, bias] deltas (R, H1 + 1) and the
    flattened dense delta (D,) (dense_keys order), all float32 differences against the decoder
    ``global_p`` it started from (float32 arithmetic, so the engine reproduces them bit for bit)."""
    def g32(k: str) -> np.ndarray:
        return global_p[k].detach().float().cpu().numpy()

    ids = np.asarray(msg[KEY_ITEM_IDS], np.int64)
    rows = np.concatenate([np.asarray(msg[KEY_ROWS], np.float32) - g32(KEY_ROWS)[ids],
                           (np.asarray(msg[KEY_ROW_BIAS], np.float32) - g32(KEY_ROW_BIAS)[ids])[:, None]], 1)
    dense = np.concatenate([(np.asarray(msg[k], np.float32) - g32(k)).ravel() for k in dense_keys(shape)])
    return ids, rows, dense


def apply_revealed(strategy, shape: AEShape, global_p: dict[str, torch.Tensor], rev, info) -> dict[str, torch.Tensor]:
    """New shared decoder from a secure round's revealed sums (federation.privacy.secagg.Revealed),
    through the strategy's own hooks: with uniform weights a row's weight sum is its count and the total
    weight the number of clients, and a sum of values is the sum of deltas plus count x the old value."""
    new = dict(global_p)
    W = float(rev.clients)
    off = 0
    for k in dense_keys(shape):
        g = global_p[k]
        n = g.numel()
        delta = torch.as_tensor(rev.dense_sum[off:off + n].reshape(tuple(g.shape)), dtype=g.dtype, device=g.device)
        new[k] = strategy.aggregate_dense(k, g, delta + W * g, W)
        off += n
    g = global_p[KEY_ROWS]
    cnt = torch.as_tensor(rev.counts, dtype=g.dtype, device=g.device)                   # (N,)
    sums = torch.as_tensor(rev.row_sums, dtype=g.dtype, device=g.device)                 # (N, H1 + 1)
    for k, part in ((KEY_ROWS, sums[:, :-1]), (KEY_ROW_BIAS, sums[:, -1])):
        g = global_p[k]
        held = part + (cnt.view(-1, 1) if g.dim() == 2 else cnt) * g
        new[k] = strategy.aggregate_rows(k, g, held, cnt.clone(), W, info)
    return new


def apply_dp_revealed(shape: AEShape, global_p: dict[str, torch.Tensor], rev, expected_clients: float,
                      server_lr: float = 1.0) -> dict[str, torch.Tensor]:
    """The DP rule (federation.privacy.dp.dp_aggregate) on a secure round's revealed, clipped and noised
    sums: new = old + server_lr * sum / expected_clients for every shared coordinate."""
    new = dict(global_p)
    f = server_lr / max(expected_clients, 1e-12)
    off = 0
    for k in dense_keys(shape):
        g = global_p[k]
        n = g.numel()
        d = torch.as_tensor(rev.dense_sum[off:off + n].reshape(tuple(g.shape)), dtype=torch.float64)
        new[k] = (g.double().cpu() + f * d).to(g.dtype).to(g.device)
        off += n
    sums = torch.as_tensor(rev.row_sums, dtype=torch.float64)
    for k, part in ((KEY_ROWS, sums[:, :-1]), (KEY_ROW_BIAS, sums[:, -1])):
        g = global_p[k]
        new[k] = (g.double().cpu() + f * part).to(g.dtype).to(g.device)
    return new


# -- per-client downloads (strategies whose server sends each client its own model: FedCAC) --------------
def pack_starts(starts: dict[int, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-user start models as flat arrays: users (b,), dec_W1 (b, H1, H2), dec_b1 (b, H1), offsets
    (b + 1,) into the rows, item_ids (R,), dec_out (R, H1), dec_ob (R,)."""
    users = sorted(starts)
    if not users:
        return {}
    rows = [starts[u] for u in users]
    lens = [len(r[KEY_ITEM_IDS]) for r in rows]
    return {"users": np.asarray(users, np.int64),
            KEY_DENSE_W: np.stack([r[KEY_DENSE_W] for r in rows]).astype(np.float32),
            KEY_DENSE_B: np.stack([r[KEY_DENSE_B] for r in rows]).astype(np.float32),
            "offsets": np.concatenate([[0], np.cumsum(lens)]).astype(np.int64),
            KEY_ITEM_IDS: np.concatenate([r[KEY_ITEM_IDS] for r in rows]).astype(np.int64),
            KEY_ROWS: np.concatenate([r[KEY_ROWS] for r in rows]).astype(np.float32),
            KEY_ROW_BIAS: np.concatenate([r[KEY_ROW_BIAS] for r in rows]).astype(np.float32)}


def unpack_starts(a: dict[str, np.ndarray]) -> dict[int, dict[str, np.ndarray]]:
    """Inverse of ``pack_starts``."""
    if not a:
        return {}
    out = {}
    for j, u in enumerate(np.asarray(a["users"]).tolist()):
        lo, hi = int(a["offsets"][j]), int(a["offsets"][j + 1])
        out[int(u)] = {KEY_DENSE_W: a[KEY_DENSE_W][j], KEY_DENSE_B: a[KEY_DENSE_B][j], KEY_ITEM_IDS: a[KEY_ITEM_IDS][lo:hi],
                       KEY_ROWS: a[KEY_ROWS][lo:hi], KEY_ROW_BIAS: a[KEY_ROW_BIAS][lo:hi]}
    return out
