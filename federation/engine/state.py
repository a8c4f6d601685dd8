"""Client state held by the simulator: each client's personal parameters, packed for fast gathers.

In a real deployment each client keeps its own slice on its own device. The simulator packs the
slices of all clients into a few tensors so a cohort can be gathered with one index operation:
  item-row parameters (enc_in, dec_out, dec_ob): (nnz, ...) aligned with the training CSR's
      stored entries (client u owns entries indptr[u]:indptr[u+1])
  per-client parameters: (n_users, ...)
  the personal encoder rows additionally carry a per-client affine part (ClientStore docstring), so a
      round updates them with (B, H1) numbers per cohort
Nothing here is ever aggregated or sent.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from federation.engine import kernels
from recsys.models.autoencoder import ITEM_ROW_KEYS

# Keys of the affine part of the personal encoder rows in ClientStore.tensors (and so in checkpoints
# as client.enc_in.scale / client.enc_in.shift).
ENC_SCALE = "enc_in.scale"
ENC_SHIFT = "enc_in.shift"


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
    """Every simulated client's personal parameters, packed (see the module docstring).

    The personal encoder rows are kept in an affine form, because a round changes all of a client's
    rows the same way: a vectorized local update ends with row_i <- a * row_i + x_i * g_u (the
    rank-one gradients of the first layer are x_i times one per-client vector, see
    federation.engine.cohort), so
        enc_in row i of client u  =  scale_u * base_i + x_i * shift_u
    with base (nnz, H1) the rows as last written in full, scale (U,) and shift (U, H1). A round then
    touches only (B, H1) numbers per cohort instead of the cohort's (T, H1) rows, and the encoder's
    first layer needs only sum_i x_i row_i = scale_u * s_u + |x_u|^2 * shift_u with s_u = sum_i x_i base_i
    (kept, recomputed whenever base changes). ``gather`` and ``full`` return the rows themselves.
    """

    def __init__(self, train: sp.csr_matrix, init: dict[str, torch.Tensor], keys: tuple[str, ...],
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                 row_keys: tuple[str, ...] = ITEM_ROW_KEYS):
        """train: the clients' CSR matrix whose data are the encoder inputs x (autoencoder.input_values).
        row_keys: the keys indexed by item (a client holds its own items' rows of them)."""
        self.row_keys = tuple(row_keys)
        self.indptr = np.asarray(train.indptr, dtype=np.int64)
        self.indices = np.asarray(train.indices, dtype=np.int64)
        self.nnz = int(train.nnz)
        self.n_users = train.shape[0]
        self.keys = tuple(keys)
        self.dtype, self.device = dtype, torch.device(device)
        self.tensors: dict[str, torch.Tensor] = {}       # the packed state, as saved (keys + ENC_SCALE/SHIFT)
        self._work: dict[str, torch.Tensor] = {}          # reusable gather buffers (gather(..., work=True))
        self._entry_user = torch.as_tensor(np.repeat(np.arange(self.n_users), np.diff(self.indptr)),
                                           device=self.device)                 # (nnz,) owner of each entry
        # The affine part and the inputs stay in float32 at least when the rows are stored in 16 bits.
        self.aux_dtype = torch.promote_types(dtype, torch.float32)
        self._x = torch.as_tensor(np.asarray(train.data), dtype=self.aux_dtype, device=self.device)   # (nnz,)
        self._xx = self._per_user(self._x * self._x)                           # (U,) |x_u|^2
        items = torch.as_tensor(self.indices)
        for k in keys:
            v = init[k]
            if k in self.row_keys:
                packed = v[items]                                               # (nnz, ...)
            else:
                packed = v.unsqueeze(0).expand(self.n_users, *v.shape)          # (U, ...)
            self.tensors[k] = packed.to(dtype).to(self.device).contiguous()
        if "enc_in" in keys:
            h1 = self.tensors["enc_in"].shape[1]
            self.tensors[ENC_SCALE] = torch.ones(self.n_users, dtype=self.aux_dtype, device=self.device)
            self.tensors[ENC_SHIFT] = torch.zeros(self.n_users, h1, dtype=self.aux_dtype, device=self.device)
            self._enc_sum = self._base_sums()                                   # (U, H1)

    def _base_sums(self, chunk: int = 1 << 18) -> torch.Tensor:
        """s_u = sum_i x_i base_i per user: (U, H1). In chunks of entries: the (nnz, H1) product in
        float32 would be several GB at 100k users (twice the 16-bit rows)."""
        base = self.tensors["enc_in"]
        out = torch.zeros(self.n_users, base.shape[1], dtype=self.aux_dtype, device=self.device)
        for lo in range(0, self.nnz, chunk):
            hi = min(lo + chunk, self.nnz)
            out.index_add_(0, self._entry_user[lo:hi], self._x[lo:hi, None] * base[lo:hi].to(self.aux_dtype))
        return out

    def _per_user(self, v: torch.Tensor) -> torch.Tensor:
        """Sum entries (nnz, ...) into their users -> (U, ...)."""
        return v.new_zeros((self.n_users, *v.shape[1:])).index_add_(0, self._entry_user, v)

    # -- reads -------------------------------------------------------------------------------
    def gather(self, key: str, cohort: Cohort, dtype: torch.dtype, work: bool = False) -> torch.Tensor:
        """Item-row keys -> (T, ...) rows of the cohort's entries; others -> (B, ...).

        work=True (per-client keys, store dtype only): into this store's reusable buffer for ``key``,
        which the next ``work`` gather of the key overwrites. Why: a cohort's copies of its per-client
        matrices are tens of MB; a fresh allocation of that size is fresh pages from the OS each round,
        and faulting them in costs more than the arithmetic (docs/benchmarks.md, 2026-12-03)."""
        if key == "enc_in":
            scale = self.tensors[ENC_SCALE].index_select(0, cohort.users).index_select(0, cohort.seg)   # (T,)
            shift = self.tensors[ENC_SHIFT].index_select(0, cohort.users).index_select(0, cohort.seg)   # (T, H1)
            base = self.tensors["enc_in"].index_select(0, cohort.pos).to(self.aux_dtype)                # (T, H1)
            return torch.addcmul(scale[:, None] * base, self._x.index_select(0, cohort.pos)[:, None], shift).to(dtype)
        if key in self.row_keys:
            return self.tensors[key].index_select(0, cohort.pos).to(dtype)
        src = self.tensors[key]
        if not work or dtype != src.dtype:
            return src.index_select(0, cohort.users).to(dtype)
        buf = self._work.get(key)
        if buf is None or buf.shape[0] < cohort.size:
            buf = self._work[key] = torch.empty((max(cohort.size, 1), *src.shape[1:]), dtype=src.dtype,
                                                device=src.device)
        return torch.index_select(src, 0, cohort.users, out=buf[:cohort.size])

    def encoder_input(self, cohort: Cohort, dtype: torch.dtype) -> torch.Tensor:
        """sum_i x_i enc_in[i] over each client's entries: (B, H1), from (B, H1) numbers only."""
        scale = self.tensors[ENC_SCALE].index_select(0, cohort.users)                 # (B,)
        out = torch.addcmul(scale[:, None] * self._enc_sum.index_select(0, cohort.users),
                            self._xx.index_select(0, cohort.users)[:, None],
                            self.tensors[ENC_SHIFT].index_select(0, cohort.users))    # (B, H1)
        return out.to(dtype)

    def full(self, key: str) -> torch.Tensor:
        """The whole parameter: (nnz, ...) for item-row keys, (U, ...) otherwise."""
        if key == "enc_in":
            scale = self.tensors[ENC_SCALE].index_select(0, self._entry_user)
            shift = self.tensors[ENC_SHIFT].index_select(0, self._entry_user)
            return torch.addcmul(scale[:, None] * self.tensors["enc_in"].to(self.aux_dtype), self._x[:, None], shift
                                 ).to(self.dtype)
        return self.tensors[key]

    # -- writes ------------------------------------------------------------------------------
    def scatter(self, key: str, cohort: Cohort, value: torch.Tensor) -> None:
        """Write the cohort's new values ((T, ...) rows or (B, ...))."""
        idx = cohort.pos if key in self.row_keys else cohort.users
        t = self.tensors[key]
        value = value.to(t.dtype)
        t.index_copy_(0, idx, value)
        if key == "enc_in":     # written in full: the affine part restarts
            self.tensors[ENC_SCALE].index_fill_(0, cohort.users, 1.0)
            self.tensors[ENC_SHIFT].index_fill_(0, cohort.users, 0.0)
            v = value.to(self.aux_dtype)
            sums = v.new_zeros((cohort.size, v.shape[1])).index_add_(
                0, cohort.seg, self._x.index_select(0, cohort.pos)[:, None] * v)
            self._enc_sum.index_copy_(0, cohort.users, sums)

    def rows(self, key: str, cohort: Cohort) -> kernels.Rows:
        """The cohort's rows of per-client ``key``, in place (no copy), for the kernels."""
        return kernels.Rows(self.tensors[key], cohort.users)

    def write_trained(self, key: str, cohort: Cohort, P: torch.Tensor | kernels.Rows, a: float,
                      U: torch.Tensor, V: torch.Tensor) -> None:
        """Write the cohort's trained per-client matrices a * P + U @ V, U (B, O, S), V (B, S, I). P is
        ``rows(key, cohort)`` (updated in place) or this store's work buffer from ``gather(work=True)``
        (overwritten, then copied back)."""
        if isinstance(P, kernels.Rows):
            kernels.update_rows(P, a, U, V)
        else:
            self.scatter(key, cohort, P.baddbmm_(U, V, beta=a))

    def update_encoder_rows(self, cohort: Cohort, a: float, g: torch.Tensor) -> None:
        """row_i <- a * row_i + x_i * g_u for every entry i of every client u of the cohort; g (B, H1)."""
        u = cohort.users
        self.tensors[ENC_SCALE].index_copy_(0, u, self.tensors[ENC_SCALE].index_select(0, u) * a)
        self.tensors[ENC_SHIFT].index_copy_(0, u, torch.add(g.to(self.aux_dtype),
                                                            self.tensors[ENC_SHIFT].index_select(0, u), alpha=a))

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        """Replace the state with saved ``tensors`` (as ``self.tensors``). Without the affine part
        (state saved before it existed) the rows are taken as written in full. ValueError on a missing
        key or a wrong shape; nothing is changed then."""
        new = {}
        for k, cur in self.tensors.items():
            v = tensors.get(k)
            if v is None and k in (ENC_SCALE, ENC_SHIFT):
                v = torch.ones_like(cur) if k == ENC_SCALE else torch.zeros_like(cur)
            if v is None:
                raise ValueError(f"{k} is missing")
            if tuple(v.shape) != tuple(cur.shape):
                raise ValueError(f"{k} has shape {tuple(v.shape)}, expected {tuple(cur.shape)}")
            new[k] = v.to(self.device, cur.dtype).contiguous()
        self.tensors = new
        if "enc_in" in self.tensors:
            self._enc_sum = self._base_sums()

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
        # entry t of client j is at indptr[u_j] + (t - first entry of j): one arange, not one per client
        pos = np.arange(int(n.sum())) + np.repeat(indptr[u] - (np.cumsum(n) - n), n)
        vals = train.data[pos]          # encoder inputs, prepared by the caller (see input_values)
        out.append(Cohort(
            users=torch.as_tensor(u, dtype=torch.long, device=device),
            seg=torch.as_tensor(seg, dtype=torch.long, device=device),
            items=torch.as_tensor(train.indices[pos], dtype=torch.long, device=device),
            pos=torch.as_tensor(pos, dtype=torch.long, device=device),
            x=torch.as_tensor(vals, dtype=dtype, device=device)))
        start = end
    return out
