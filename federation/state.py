"""Client state held by the simulator: each client's personal parameters, packed for fast gathers.

In a real deployment each client keeps its own slice on its own device. The simulator packs the
slices of all clients into a few tensors so a cohort can be gathered with one index operation:
  item-row parameters (enc_in, dec_out, dec_ob): (nnz, ...) aligned with the training CSR's
      stored entries (client u owns entries indptr[u]:indptr[u+1])
  per-client parameters: (n_users, ...)
Nothing here is ever aggregated or sent.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from recsys.models.autoencoder import ITEM_ROW_KEYS


@dataclass
class Cohort:
    """A batch of B clients in jagged layout: their T interactions concatenated, no padding.

    users (B,) long; seg (T,) position 0..B-1 of each entry's client; items (T,) item ids;
    pos (T,) entry positions in the packed store; x (T,) encoder input values (see autoencoder.input_values)
    """
    users: torch.Tensor
    seg: torch.Tensor
    items: torch.Tensor
    pos: torch.Tensor
    x: torch.Tensor

    @property
    def size(self) -> int:
        return int(self.users.shape[0])


class ClientStore:
    def __init__(self, train: sp.csr_matrix, init: dict[str, torch.Tensor], keys: tuple[str, ...],
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
        self.indptr = np.asarray(train.indptr, dtype=np.int64)
        self.indices = np.asarray(train.indices, dtype=np.int64)
        self.nnz = int(train.nnz)
        self.n_users = train.shape[0]
        self.dtype, self.device = dtype, torch.device(device)
        self.tensors: dict[str, torch.Tensor] = {}
        items = torch.as_tensor(self.indices)
        for k in keys:
            v = init[k]
            if k in ITEM_ROW_KEYS:
                packed = v[items]                                               # (nnz, ...)
            else:
                packed = v.unsqueeze(0).expand(self.n_users, *v.shape)          # (U, ...)
            self.tensors[k] = packed.to(dtype).to(self.device).contiguous()

    def gather(self, key: str, cohort: Cohort, dtype: torch.dtype) -> torch.Tensor:
        """Item-row keys -> (T, ...) rows of the cohort's entries; others -> (B, ...)."""
        idx = cohort.pos if key in ITEM_ROW_KEYS else cohort.users
        return self.tensors[key].index_select(0, idx).to(dtype)

    def scatter(self, key: str, cohort: Cohort, value: torch.Tensor) -> None:
        idx = cohort.pos if key in ITEM_ROW_KEYS else cohort.users
        self.tensors[key].index_copy_(0, idx, value.to(self.tensors[key].dtype))

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


def make_cohorts(users: np.ndarray, train: sp.csr_matrix, max_clients: int, max_entries: int,
                 device: torch.device, dtype: torch.dtype) -> list[Cohort]:
    """Split clients (sorted by history length, so cohorts hold similar clients) into cohorts of at
    most ``max_clients`` clients and ``max_entries`` interactions each."""
    indptr = train.indptr
    lengths = np.diff(indptr)[users]
    order = np.argsort(lengths, kind="stable")
    users, lengths = np.asarray(users)[order], lengths[order]
    out, start = [], 0
    csum = np.concatenate([[0], np.cumsum(lengths)])
    while start < len(users):
        end = int(np.searchsorted(csum, csum[start] + max_entries, side="right")) - 1
        end = min(max(end, start + 1), start + max_clients, len(users))
        u = users[start:end]
        n = np.diff(indptr)[u]
        seg = np.repeat(np.arange(len(u)), n)
        pos = np.concatenate([np.arange(indptr[a], indptr[a + 1]) for a in u]) if len(u) else np.zeros(0, int)
        vals = train.data[pos]          # encoder inputs, prepared by the caller (see input_values)
        out.append(Cohort(
            users=torch.as_tensor(u, dtype=torch.long, device=device),
            seg=torch.as_tensor(seg, dtype=torch.long, device=device),
            items=torch.as_tensor(train.indices[pos], dtype=torch.long, device=device),
            pos=torch.as_tensor(pos, dtype=torch.long, device=device),
            x=torch.as_tensor(vals, dtype=dtype, device=device)))
        start = end
    return out
