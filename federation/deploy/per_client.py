"""The server side of a strategy that keeps per-client state (FedCAC) in a deployment, transport-free.

In process the strategy's state is laid out over the training matrix (``Federation.server_state``).
A deployed server never sees that matrix: it learns a user's item ids from the user's first update
(FedCAC needs each client's own update anyway, ``Strategy.individual_updates``). ``PerClientServer``
keeps the same state over the matrix of the items users have sent so far (``known``) and grows it as
new users report, so the strategy's own functions (``begin_round``, ``client_start``, ``observe``)
run unchanged: a user that has not sent an update yet has no entries there, exactly as it has no
trained state in process. What goes to a node: each of its users' start model (the dense layer and
the rows of that user's items); see federation.strategies.messages.pack_starts.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from federation.engine.state import make_cohorts
from federation.strategies.messages import KEY_DENSE_B, KEY_DENSE_W, KEY_ITEM_IDS, KEY_ROW_BIAS, KEY_ROWS

KNOWN_INDPTR, KNOWN_INDICES = "known.indptr", "known.indices"


class PerClientServer:
    def __init__(self, strategy, shape, n_users: int, dtype: torch.dtype = torch.float32):
        self.strategy, self.shape, self.n_users, self.dtype = strategy, shape, n_users, dtype
        self.known = sp.csr_matrix((n_users, shape.n_items), dtype=np.float32)
        self.state = strategy.server_state_init(shape, self.known, dtype)
        self.plan = None
        self.round = -1

    # -- layout ------------------------------------------------------------------------------
    def ensure_users(self, n: int) -> None:
        """Room for user ids below ``n`` (a node joining later may host higher ids)."""
        if n > self.n_users:
            self._grow({}, n)

    def _grow(self, ids: dict[int, np.ndarray], n_users: int | None = None) -> None:
        """Add the item ids of users not known yet (and room for ``n_users``); state moves with its entries."""
        U_old = self.n_users
        n_users = max(n_users or 0, U_old, *(int(u) + 1 for u in ids))
        pad = np.concatenate([self.known.indptr, np.full(n_users - U_old, self.known.indptr[-1])])
        new = {u: np.sort(np.asarray(v, np.int64)) for u, v in ids.items() if pad[u + 1] == pad[u]}
        if not new and n_users == U_old:
            return
        old = sp.csr_matrix((self.known.data, self.known.indices, pad), shape=(n_users, self.shape.n_items))
        self.n_users = n_users
        lens = np.diff(old.indptr).copy()
        for u, v in new.items():
            lens[u] = len(v)
        indptr = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        indices = np.empty(indptr[-1], np.int64)
        moved = np.empty(old.nnz, np.int64)                      # old entry -> new position
        for u in range(self.n_users):
            lo, hi = indptr[u], indptr[u + 1]
            if u in new:
                indices[lo:hi] = new[u]
            else:
                indices[lo:hi] = old.indices[old.indptr[u]:old.indptr[u + 1]]
                moved[old.indptr[u]:old.indptr[u + 1]] = np.arange(lo, hi)
        self.known = sp.csr_matrix((np.ones(len(indices), np.float32), indices, indptr),
                                   shape=(self.n_users, self.shape.n_items))
        fresh = self.strategy.server_state_init(self.shape, self.known, self.dtype)
        for k, v in self.state.items():
            if k in self.strategy.server_entry_keys:
                fresh[k][torch.as_tensor(moved)] = v
            else:
                fresh[k][:U_old] = v
        self.state = fresh

    # -- a round -----------------------------------------------------------------------------
    def begin(self, users: np.ndarray, rnd: int) -> None:
        self.ensure_users(int(np.max(users)) + 1 if len(users) else 0)
        self.plan = self.strategy.begin_round(self.state, np.asarray(users), rnd, self.known)
        self.round = rnd

    def starts(self, users: np.ndarray, global_p: dict[str, torch.Tensor]) -> dict[int, dict[str, np.ndarray]]:
        """The start model of each of ``users`` the server has a plan for (the others get the global one)."""
        if self.plan is None:
            return {}
        have = np.asarray([u for u in users if self.known.indptr[u + 1] > self.known.indptr[u]], np.int64)
        out: dict[int, dict[str, np.ndarray]] = {}
        g = {k: v.to(self.dtype) for k, v in global_p.items()}
        for c in make_cohorts(have, self.known, 1 << 30, 1 << 40, torch.device("cpu"), self.dtype):
            st = self.strategy.client_start(self.state, self.plan, c, g, self.known, self.dtype)
            if not st:
                continue
            for b, u in enumerate(c.users.tolist()):
                e = (c.seg == b).nonzero().squeeze(1)
                out[int(u)] = {KEY_DENSE_W: st["dec_W1"][b].numpy(), KEY_DENSE_B: st["dec_b1"][b].numpy(),
                               KEY_ITEM_IDS: c.items[e].numpy(), KEY_ROWS: st["dec_out"][e].numpy(),
                               KEY_ROW_BIAS: st["dec_ob"][e].numpy()}
        return out

    def observe(self, msgs: dict[int, dict[str, np.ndarray]], sent: dict[int, dict[str, np.ndarray]],
                global_p: dict[str, torch.Tensor]) -> None:
        """What the server learns from the round's updates ``msgs`` (user -> message), given the start
        models ``sent`` (users without one started from ``global_p``)."""
        if not msgs:
            return
        self._grow({u: m[KEY_ITEM_IDS] for u, m in msgs.items()})
        users = np.asarray(sorted(msgs), np.int64)
        for c in make_cohorts(users, self.known, 1 << 30, 1 << 40, torch.device("cpu"), self.dtype):
            start: dict[str, list] = {"dec_W1": [], "dec_b1": [], "dec_out": [], "dec_ob": []}
            trained: dict[str, list] = {"dec_W1": [], "dec_b1": [], "dec_out": [], "dec_ob": []}
            for u in c.users.tolist():
                m = msgs[int(u)]
                ids = np.asarray(m[KEY_ITEM_IDS])
                s = sent.get(int(u))
                if s is None:
                    s = {KEY_DENSE_W: global_p["dec_W1"].numpy(), KEY_DENSE_B: global_p["dec_b1"].numpy(),
                         KEY_ROWS: global_p["dec_out"].numpy()[ids], KEY_ROW_BIAS: global_p["dec_ob"].numpy()[ids]}
                for k, key in (("dec_W1", KEY_DENSE_W), ("dec_b1", KEY_DENSE_B), ("dec_out", KEY_ROWS),
                               ("dec_ob", KEY_ROW_BIAS)):
                    start[k].append(torch.as_tensor(np.asarray(s[key]), dtype=self.dtype))
                    trained[k].append(torch.as_tensor(np.asarray(m[key]), dtype=self.dtype))
            st = {k: (torch.stack(v) if k in ("dec_W1", "dec_b1") else torch.cat(v)) for k, v in start.items()}
            tr = {k: (torch.stack(v) if k in ("dec_W1", "dec_b1") else torch.cat(v)) for k, v in trained.items()}
            self.strategy.observe(self.state, c, st, tr)

    # -- checkpoints -------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = {f"server.{k}": v for k, v in self.state.items()}
        out[KNOWN_INDPTR] = torch.as_tensor(self.known.indptr.astype(np.int64))
        out[KNOWN_INDICES] = torch.as_tensor(self.known.indices.astype(np.int64))
        return out

    def load(self, t: dict[str, torch.Tensor]) -> None:
        indptr, indices = t[KNOWN_INDPTR].numpy(), t[KNOWN_INDICES].numpy()
        self.known = sp.csr_matrix((np.ones(len(indices), np.float32), indices, indptr),
                                   shape=(self.n_users, self.shape.n_items))
        self.state = {k: t[f"server.{k}"].clone() for k in self.strategy.server_state_init(self.shape, self.known, self.dtype)}
