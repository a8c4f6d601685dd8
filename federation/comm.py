"""Communication accounting: bytes a client sends and receives per round (pure arithmetic)."""
from __future__ import annotations

import numpy as np

from recsys.models.autoencoder import AEShape

FLOAT_BYTES = 4
ID_BYTES = 8


def dense_decoder_params(s: AEShape) -> int:
    """Dense decoder layer (+ the content projection of a content-aware model)."""
    return s.h1 * s.h2 + s.h1 + s.h1 * s.content_dim


def full_decoder_params(s: AEShape) -> int:
    return dense_decoder_params(s) + s.n_items * (s.h1 + 1)


def full_model_params(s: AEShape) -> int:
    enc = s.n_items * s.h1 + s.h1 + s.h2 * s.h1 + s.h2
    return enc + full_decoder_params(s)


def client_bytes(strategy: str, s: AEShape, n_rows: int) -> tuple[int, int]:
    """(upload, download) bytes of one client in one round.

    personalfr: up = its n_rows item rows (+ bias, + int64 id), the dense decoder and its weight
                (exactly federation.messages.UPDATE_KEYS); down = full decoder
    fedavg:     up = down = the full model
    local:      nothing
    """
    if strategy == "personalfr":
        up = (n_rows * (s.h1 + 1) + dense_decoder_params(s) + 1) * FLOAT_BYTES + n_rows * ID_BYTES
        return up, full_decoder_params(s) * FLOAT_BYTES
    if strategy == "fedavg":
        b = full_model_params(s) * FLOAT_BYTES
        return b, b
    return 0, 0


def fedavg_bytes(s: AEShape) -> int:
    """What one client would send (and receive) per round under full-model FedAvg."""
    return full_model_params(s) * FLOAT_BYTES


def clients_bytes(strategy: str, s: AEShape, n_rows: np.ndarray) -> tuple[int, int]:
    """(upload, download) bytes of clients holding n_rows (C,) item rows each, summed: client_bytes on
    the whole array (its arithmetic is elementwise), in int64."""
    n = np.asarray(n_rows, dtype=np.int64)
    up, down = client_bytes(strategy, s, n)
    return int(np.broadcast_to(up, n.shape).sum()), int(np.broadcast_to(down, n.shape).sum())
