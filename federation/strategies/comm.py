"""Communication accounting: bytes a client sends and receives per round (pure arithmetic)."""
from __future__ import annotations

import math

import numpy as np

from recsys.models.autoencoder import AEShape

FLOAT_BYTES = 4
ID_BYTES = 8


def dense_decoder_params(s: AEShape) -> int:
    """Dense decoder layer (+ the content projection and the user embedder, when the model has them)."""
    shapes = s.param_shapes()
    return s.h1 * s.h2 + s.h1 + sum(math.prod(shapes[k]) for k in s.extra_dense_keys())


def full_decoder_params(s: AEShape) -> int:
    return dense_decoder_params(s) + s.n_items * (s.h1 + 1)


def full_model_params(s: AEShape) -> int:
    enc = s.n_items * s.h1 + s.h1 + s.h2 * s.h1 + s.h2
    return enc + full_decoder_params(s)


def client_bytes(strategy, s: AEShape, n_rows: int) -> tuple[int, int]:
    """(upload, download) bytes of one client in one round, from the strategy's roles
    (``Strategy.params``): it sends its shared parameters (item rows: only its n_rows own items' rows
    plus their int64 ids under partial compression, every row otherwise) and receives every shared
    parameter whole. A message of own-item rows carries its aggregation weight too (exactly
    federation.strategies.messages.update_keys). Personal parameters never count.

    personalfr, fedprox, ditto: up = own rows + ids + dense decoder + weight; down = full decoder
    fedavg: up = down = the full model; local: nothing
    """
    if isinstance(strategy, str):
        from federation.strategies.registry import get_strategy

        strategy = get_strategy(strategy)
    shapes = s.param_shapes()
    up = down = 0
    touched = strategy.rows == "touched"
    for k, prm in strategy.params(s).items():
        if prm.role == "personal":
            continue
        full = math.prod(shapes[prm.source])
        down += full
        if prm.role == "rows" and touched:
            up += n_rows * (full // s.n_items)
        else:
            up += full
    if strategy.sends_messages:
        sparse = strategy.message_bytes(s, n_rows)
        if sparse is not None:                 # the strategy's compressed message (e.g. pFedGate's kept blocks)
            return sparse, down * FLOAT_BYTES
        return (up + 1) * FLOAT_BYTES + (n_rows * ID_BYTES if strategy.sends_rows else 0), down * FLOAT_BYTES
    return up * FLOAT_BYTES, down * FLOAT_BYTES


def fedavg_bytes(s: AEShape) -> int:
    """What one client would send (and receive) per round under full-model FedAvg."""
    return full_model_params(s) * FLOAT_BYTES


def clients_bytes(strategy: str, s: AEShape, n_rows: np.ndarray) -> tuple[int, int]:
    """(upload, download) bytes of clients holding n_rows (C,) item rows each, summed: client_bytes on
    the whole array (its arithmetic is elementwise), in int64."""
    n = np.asarray(n_rows, dtype=np.int64)
    up, down = client_bytes(strategy, s, n)
    return int(np.broadcast_to(up, n.shape).sum()), int(np.broadcast_to(down, n.shape).sum())
