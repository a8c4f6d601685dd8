"""In-process federation: sample clients, train them (vectorized or reference), aggregate, account.

Randomness is a pure function of (seed, round[, client, step]): client sampling uses
``default_rng([seed, round])`` and dropout masks are hashed (see ``dropout_keep``), so a run resumed
from a checkpoint after round r replays rounds r+1.. exactly.
"""
from __future__ import annotations

import dataclasses

import logging
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import scipy.sparse as sp
import torch

from federation.strategies.aggregation import accumulate_rows
from federation.engine.generic import personal_phase, received_run, MaterializedResult, train_generic
from federation.engine.reference import reference_client_update
from federation.engine.cohort import FactoredResult, Gate, train_cohort
from federation.strategies.base import RoundInfo
from federation.strategies.comm import clients_bytes, fedavg_bytes
from federation.engine.local_sgd import SGDConfig, decay_factor
from federation.engine import prototypes as proto
from federation.privacy.dp import DPSettings, dp_aggregate, epsilon
from federation.privacy import secagg as sa
from federation.privacy.secagg import SecAggSettings
from federation.engine.state import ClientStore, Cohort, make_cohorts
from federation.strategies.registry import get_strategy, message_strategies
from recsys.errors import FedrecError
from recsys.models.autoencoder import (CONTENT_KEY, ENCODER_KEYS, ITEM_ROW_KEYS, AEShape, decode_hidden, encode,
                                      init_params, input_values, item_rows)
from recsys.models.base import Recommender

log = logging.getLogger(__name__)

PROTOTYPES_TENSOR = "server.prototypes"     # checkpoint key of the fitted prototypes (K, H1)


@dataclass
class FedSettings:
    strategy: str = "personalfr"
    options: dict = field(default_factory=dict)   # the strategy's options (federation.strategies.registry)
    rounds: int = 100
    fraction: float = 0.1
    local_epochs: int = 5
    weighting: str = "uniform"          # uniform | interactions
    row_average: str = "holders"        # holders (PersonalFR) | participants (FedAvg-style, see aggregation)
    server_lr: float = 1.0              # scales the participants-averaged row update
    schedule: str = "cosine"            # cosine | constant
    min_lr: float = 0.0
    sgd: SGDConfig = field(default_factory=SGDConfig)
    seed: int = 0
    max_cohort_clients: int = 1024
    max_cohort_entries: int = 262_144   # padded (client, entry) pairs per cohort: bounds memory
    dp: DPSettings | None = None        # user-level DP of the decoder (federation.privacy.dp)
    secagg: SecAggSettings | None = None  # secure aggregation of the messages (federation.privacy.secagg)


@dataclass
class RoundStats:
    round: int
    lr: float
    participants: int
    loss: float
    bytes_up: int
    bytes_down: int
    fedavg_bytes: int
    seconds: float
    updates_per_s: float
    epsilon: float | None = None        # DP runs: epsilon spent so far (at dp.delta)

    def as_dict(self) -> dict:
        return asdict(self)


def lr_at(cfg: FedSettings, rnd: int) -> float:
    """Learning rate of round ``rnd`` (0-based) under the configured schedule."""
    lr0 = cfg.sgd.lr
    if cfg.schedule == "constant":
        return lr0
    t = rnd / max(1, cfg.rounds)
    return cfg.min_lr + (lr0 - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * t))


def sample_clients(seed: int, rnd: int, candidates: np.ndarray, fraction: float) -> np.ndarray:
    """The clients of round ``rnd``: round(fraction * C) of the sorted candidate ids, drawn without
    replacement by ``default_rng([seed, rnd])``, sorted. The in-process engine and the Flower server
    both call this, so the same seed and candidates give the same clients."""
    cand = np.sort(np.asarray(candidates, dtype=np.int64))
    if len(cand) == 0:
        return cand
    rng = np.random.default_rng([seed, rnd])
    m = max(1, int(round(fraction * len(cand))))
    return np.sort(rng.choice(cand, size=min(m, len(cand)), replace=False))


class Federation:
    """Global (server) parameters plus the simulated clients' personal state."""

    def __init__(self, shape: AEShape, cfg: FedSettings, train: sp.csr_matrix, device: str = "cpu",
                 dtype: torch.dtype = torch.float32, state_dtype: torch.dtype | None = None,
                 content: np.ndarray | torch.Tensor | None = None,
                 content_drop: np.ndarray | torch.Tensor | None = None):
        """content (N, F): fixed item content vectors (public catalogue data, the same on every client)
        for a content-aware decoder; shape.content_dim must be F. content_drop (N, F): what the
        content-only steps of shape.content_dropout score with, if not ``content`` (see
        federation.runs.jobs.weigh_content: weighted content in normal steps, full weight in those)."""
        self.strategy = get_strategy(cfg.strategy, cfg.options)
        shape = dataclasses.replace(shape, **self.strategy.model_fields())    # e.g. Persona's embedder heads
        self.shape, self.cfg = shape, cfg
        self.strategy.check(shape, content is not None)
        self.device, self.dtype = torch.device(device), dtype
        self.content: torch.Tensor | None = None
        self.content_drop: torch.Tensor | None = None
        self.set_content(content, content_drop)
        self.train = train.tocsr()
        self.train.sort_indices()
        # From here on train.data holds encoder inputs (ratings, or implicit ones / normalized ones).
        vals = input_values(shape, self.train.data, np.diff(self.train.indptr))
        self.train = sp.csr_matrix((vals, self.train.indices, self.train.indptr), shape=self.train.shape)
        init = init_params(shape, cfg.seed, dtype)
        self.global_p = {k: v.to(self.device) for k, v in init.items()}
        self.store = self.new_store(init, state_dtype or dtype)
        # What the server keeps per client across rounds (FedCAC: last decoders and masks); usually empty.
        self.server_state = self.strategy.server_state_init(shape, self.train, dtype)
        self._plan: tuple[int, object] | None = None          # (round, the strategy's plan for it)
        # A deployed node's users' start models as the server sent them (user -> arrays; messages.pack_starts)
        self._given: dict[int, dict[str, np.ndarray]] | None = None
        self.n_per_user = np.diff(self.train.indptr)
        self.active_users = np.flatnonzero(self.n_per_user > 0)
        self.round = 0                    # rounds completed
        # Federated prototypes of the user codes (federation.engine.prototypes), fitted after training when
        # configured: (K, H1) broadcast to every client, which blends its own code towards the nearest.
        self.prototypes: torch.Tensor | None = None
        self.prototype_blend = 0.0

    def new_store(self, init: dict[str, torch.Tensor], state_dtype: torch.dtype) -> ClientStore | None:
        """Every client's personal parameters, each starting at its source's value in ``init``."""
        params = self.strategy.params(self.shape)
        keys = self.strategy.personal
        if not keys:
            return None
        init = {**init, **self.strategy.personal_init(self.shape, self.cfg.seed, init["dec_W1"].dtype)}
        return ClientStore(self.train, {k: init[params[k].source] for k in keys}, keys, state_dtype, self.device,
                           row_keys=self.strategy.row_keys(self.shape))

    def set_content(self, content: np.ndarray | torch.Tensor | None,
                    content_drop: np.ndarray | torch.Tensor | None = None) -> None:
        """Replace the item content (N, F) the decoder scores with (and what content-only steps score
        with). A SuperNode calls it when the server's holder counts change its holder-weighted content."""
        if (content is None) != (self.shape.content_dim == 0) or (
                content is not None and tuple(content.shape) != (self.shape.n_items, self.shape.content_dim)):
            raise FedrecError(f"content features of shape {None if content is None else tuple(content.shape)} "
                              f"do not fit the model (items {self.shape.n_items}, content_dim {self.shape.content_dim})")
        if content_drop is not None and (content is None or tuple(content_drop.shape) != tuple(content.shape)):
            raise FedrecError("content_drop needs content of the same shape")

        def put(a):
            return None if a is None else torch.as_tensor(np.asarray(a, np.float32) if not torch.is_tensor(a) else a
                                                          ).to(self.device, self.dtype)
        self.content, self.content_drop = put(content), put(content_drop)

    # -- schedule and sampling ---------------------------------------------------------------
    def lr_at(self, rnd: int) -> float:
        return lr_at(self.cfg, rnd)

    def sample(self, rnd: int) -> np.ndarray:
        """Clients of round ``rnd`` (0-based): a seeded draw without replacement, sorted."""
        return sample_clients(self.cfg.seed, rnd, self.active_users, self.cfg.fraction)

    def cohorts(self, users: np.ndarray) -> list[Cohort]:
        return make_cohorts(users, self.train, self.cfg.max_cohort_clients,
                            self.cfg.max_cohort_entries, self.device, self.dtype)

    def weights(self, users: torch.Tensor) -> torch.Tensor:
        if self.cfg.weighting == "interactions":
            return torch.as_tensor(self.n_per_user[users.cpu().numpy()], dtype=self.dtype, device=self.device)
        return torch.ones(len(users), dtype=self.dtype, device=self.device)

    # -- one round ---------------------------------------------------------------------------
    def run_round(self, engine: str = "vectorized", users: np.ndarray | None = None) -> RoundStats:
        rnd = self.round
        t0 = time.perf_counter()
        users = self.sample(rnd) if users is None else np.asarray(users)
        lr = self.lr_at(rnd)
        agg = _Aggregate()
        losses = []
        self.begin_round(users, rnd)
        if self.cfg.secagg is not None:
            # Secure aggregation: the same ring sums the two aggregators' shares add up to (noise included
            # under DP), computed in the clear without per-client cryptography (privacy.secagg).
            rows, dense, loss_c = self.secure_round_sums(users, lr)
            s = self.cfg.secagg
            if s.noise_std > 0:
                for party in (0, 1):
                    nr, nd = sa.aggregator_noise(party, self.secure_layout(), s, rnd)
                    rows, dense = sa.ring_add(rows, nr), sa.ring_add(dense, nd)
            self.apply_revealed(sa.reveal(rows, dense, len(users), s), lr)
            losses.append(loss_c)
        elif self.cfg.dp is not None:
            # DP needs each client's update on its own (to clip it): the message path, vectorized.
            msgs, lossd = self.client_messages(users, lr)
            expected = self.cfg.fraction * len(self.active_users)
            self.global_p.update(dp_aggregate(self.global_p, [msgs[int(u)] for u in users], self.cfg.dp,
                                              expected, self.cfg.server_lr, rnd))
            losses.append(torch.tensor([lossd[int(u)] for u in users], dtype=self.dtype))
        else:
            cohorts = (self.cohorts(users) if engine != "reference"
                       else [self.cohorts(np.array([u]))[0] for u in users])
            for c in cohorts:
                res = self.train_cohort(c, lr, rnd, engine)
                self._absorb(c, res, agg)
                losses.append(res.loss)
        loss = float(torch.cat(losses).mean())
        if not math.isfinite(loss):
            raise FedrecError(f"round {rnd + 1}: training diverged (non-finite loss); lower optimizer.lr")
        if self.strategy.federated and self.cfg.dp is None and self.cfg.secagg is None:
            self._apply(agg, lr)
        self.round += 1
        up, down = clients_bytes(self.strategy, self.shape, self.n_per_user[users])
        if self.cfg.secagg is not None:
            up = int(sa.upload_bytes(self.n_per_user[users], self.secure_layout(), self.cfg.secagg).sum())
        dt = time.perf_counter() - t0
        eps = (epsilon(self.cfg.dp.noise_multiplier, self.cfg.fraction, self.round, self.cfg.dp.delta)
               if self.cfg.dp is not None else None)
        return RoundStats(rnd + 1, lr, len(users), loss, up, down, fedavg_bytes(self.shape) * len(users), dt,
                          len(users) / dt if dt > 0 else float("inf"), eps)

    def client_message(self, user: int) -> dict[str, np.ndarray]:
        """One personalfr client's turn in the current round, as a deployed client would take it:
        train with the reference update, keep the personal parameters (written back to this client's
        state only) and return the message it sends (see federation.strategies.messages)."""
        from federation.strategies.messages import encode_update

        self._require_messages()
        c = self.cohorts(np.array([user]))[0]
        res = self.train_cohort(c, self.lr_at(self.round), self.round, "reference")
        self._keep_personal(c, res)
        v = res.values
        trained = {"dec_out": v["dec_out"], "dec_ob": v["dec_ob"], "dec_W1": v["dec_W1"][0], "dec_b1": v["dec_b1"][0]}
        for k in self.shape.extra_dense_keys():
            trained[k] = v[k][0]
        w = float(self.weights(c.users)[0])
        return encode_update(c.items.cpu().numpy(), trained, w)

    # -- secure aggregation ------------------------------------------------------------------
    def secure_layout(self) -> sa.Layout:
        from federation.strategies.comm import dense_decoder_params

        return sa.Layout(self.shape.n_items, self.shape.h1, dense_decoder_params(self.shape))

    def message_deltas(self, msg: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A message as secure aggregation sums it (federation.strategies.messages.update_deltas)."""
        from federation.strategies.messages import update_deltas

        return update_deltas(msg, self.global_p, self.shape)

    def secure_payload_parts(self, user: int, msg: dict[str, np.ndarray]
                             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """What a client puts into its payloads this round (ids, [row, bias] deltas, dense delta): its
        message's deltas, restricted to the rows it sends (secagg.rows_sent). Used by nodes and tests."""
        ids, rows, dense = self.message_deltas(msg)
        keep = sa.rows_sent(len(ids), self.cfg.secagg, self.round, int(user))
        return ids[keep], rows[keep], dense

    def secure_ring_sums(self, msgs: dict[int, dict[str, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        """The ring sums (rows (N, H1 + 2), dense (D,) uint32) the two aggregators' shares of the clients'
        messages ``msgs`` (user -> message) add up to."""
        parts = [self.secure_payload_parts(u, m) for u, m in msgs.items()]
        lay = self.secure_layout()
        ids = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
        rows = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, lay.h1 + 1), np.float32)
        dense = np.stack([p[2] for p in parts]) if parts else np.zeros((0, lay.dense), np.float32)
        return sa.plain_ring_sums(self.shape.n_items, ids, rows, dense, self.cfg.secagg)

    def secure_round_sums(self, users: np.ndarray, lr: float) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
        """Train ``users`` (personal state kept) and return the ring sums of their messages (as
        ``secure_ring_sums`` of ``client_messages``, bit for bit) and their losses (B,), batched per
        cohort; the per-client fixed-point sums run in one fused pass (kernels.quantized_rows / _sum)."""
        from federation.engine import kernels
        from federation.privacy.fixedpoint import bound_int, to_ring
        from federation.strategies.messages import dense_keys

        self._require_messages()
        s = self.cfg.secagg
        g = self.global_p
        lay = self.secure_layout()
        bound = bound_int(s.frac_bits, s.max_clients)
        N = self.shape.n_items
        rows = torch.zeros(N, self.shape.h1, dtype=torch.int64)
        bias = torch.zeros(N, 1, dtype=torch.int64)
        counts = torch.zeros(N, dtype=torch.int64)
        dense = {k: torch.zeros(g[k].numel(), dtype=torch.int64) for k in dense_keys(self.shape)}
        losses = []
        for c in self.cohorts(np.asarray(users, dtype=np.int64)):
            res = self.train_cohort(c, lr, self.round)
            self._keep_personal(c, res)
            B = len(c.users)
            V, Vb = res.value("dec_out"), res.value("dec_ob")[:, None]                # (T, H1), (T, 1)
            X = {k: res.value(k).reshape(B, -1) for k in dense}                        # (B, n_k)
            items, seg = c.items, c.seg
            f = None
            if self.cfg.dp is not None:          # each client clips its whole update (privacy.dp.clip_update)
                sq = ((V.float() - g["dec_out"][items].float()) ** 2).sum(1) + (Vb[:, 0].float() - g["dec_ob"][items].float()) ** 2
                sq = sum(((X[k].float() - g[k].float().reshape(1, -1)) ** 2).sum(1) for k in dense).index_add(0, seg, sq)
                f = (self.cfg.dp.clip / sq.sqrt().clamp(min=1e-12)).clamp(max=1.0)    # (B,)
            if s.fixed_rows > 0:                 # each client sends at most fixed_rows of its rows (secagg.rows_sent)
                n = np.bincount(seg.cpu().numpy(), minlength=B)
                start = np.concatenate([[0], np.cumsum(n)[:-1]])
                sel = torch.as_tensor(np.concatenate([start[j] + sa.rows_sent(int(n[j]), s, self.round, int(u))
                                                      for j, u in enumerate(c.users.cpu().numpy())]), device=V.device)
                V, Vb, items, seg = V[sel], Vb[sel], items[sel], seg[sel]
            rows += kernels.quantized_rows(V, g["dec_out"], items, f, seg, s.frac_bits, bound, N).cpu()
            bias += kernels.quantized_rows(Vb, g["dec_ob"][:, None], items, f, seg, s.frac_bits, bound, N).cpu()
            counts += torch.bincount(items.cpu(), minlength=N) * int(s.counts)
            for k in dense:
                dense[k] += kernels.quantized_sum(X[k], g[k].reshape(-1), f, s.frac_bits, bound).cpu()
            losses.append(res.loss)
        ring_rows = to_ring(torch.cat([rows, bias, counts[:, None]], 1).numpy())
        return ring_rows, to_ring(torch.cat(list(dense.values())).numpy()), torch.cat(losses)

    def apply_revealed(self, rev: sa.Revealed, lr: float) -> None:
        """Update the global decoder from a round's revealed sums (messages.apply_revealed)."""
        from federation.strategies.messages import apply_revealed

        if self.cfg.dp is not None:
            from federation.strategies.messages import apply_dp_revealed

            expected = self.cfg.fraction * len(self.active_users)
            self.global_p.update(apply_dp_revealed(self.shape, self.global_p, rev, expected, self.cfg.server_lr))
            return
        info = RoundInfo(lr, decay_factor(lr, self.cfg.local_epochs, self.cfg.sgd), self.cfg.row_average,
                         self.cfg.server_lr)
        self.global_p.update(apply_revealed(self.strategy, self.shape, self.global_p, rev, info))

    def _require_messages(self) -> None:
        if not self.strategy.sends_messages:
            raise FedrecError(f"strategy {self.strategy.name!r} has no per-client messages of own-item rows "
                              f"(deployment and DP need one: {', '.join(message_strategies())})")

    def client_messages(self, users: np.ndarray, lr: float | None = None,
                        starts: dict[int, dict[str, np.ndarray]] | None = None
                        ) -> tuple[dict[int, dict[str, np.ndarray]], dict[int, float]]:
        """Many personalfr clients' turns at once (the vectorized engine; same math as
        ``client_message``, see tests/test_engine_equivalence.py): personal state written back to
        each client. Returns one message per user and each user's mean local loss (which stays on the
        node unless the node reports an aggregate). Used by a SuperNode hosting a group of users."""
        from federation.strategies.messages import encode_update

        self._require_messages()
        lr = self.lr_at(self.round) if lr is None else lr
        self._given = starts                   # a deployed node: the server sent these users' start models
        if starts is None and self.server_state and (self._plan is None or self._plan[0] != self.round):
            self.begin_round(users, self.round)
        out: dict[int, dict[str, np.ndarray]] = {}
        losses: dict[int, float] = {}
        for c in self.cohorts(np.asarray(users, dtype=np.int64)):
            res = self.train_cohort(c, lr, self.round)
            W1, b1 = res.value("dec_W1"), res.value("dec_b1")                          # (B, H1, H2), (B, H1)
            if self.strategy.sends_rows:
                rows, rb = res.value("dec_out"), res.value("dec_ob")                   # (T, H1), (T,)
            else:                       # no shared rows (FedPer's personal item layer): no rows, no ids
                rows, rb = W1.new_zeros(len(c.items), self.shape.h1), W1.new_zeros(len(c.items))
            self._keep_personal(c, res)
            extra = {k: res.value(k) for k in self.shape.extra_dense_keys()}           # (B, ...) each
            w = self.weights(c.users)
            ends = np.cumsum(np.bincount(c.seg.cpu().numpy(), minlength=c.size))  # seg is contiguous per client
            items = c.items.cpu().numpy()
            for j, u in enumerate(c.users.cpu().numpy()):
                a, b = (ends[j - 1] if j else 0), ends[j]
                if not self.strategy.sends_rows:
                    a = b
                trained = {"dec_out": rows[a:b], "dec_ob": rb[a:b], "dec_W1": W1[j], "dec_b1": b1[j]}
                for k, v in extra.items():
                    trained[k] = v[j]
                out[int(u)] = encode_update(items[a:b], trained, float(w[j]))
                losses[int(u)] = float(res.loss[j])
        self._given = None
        return out, losses

    def begin_round(self, users: np.ndarray, rnd: int) -> None:
        """The strategy's server-side plan for round ``rnd`` (FedCAC: collaborators), before any training."""
        if self.server_state:
            self._plan = (rnd, self.strategy.begin_round(self.server_state, np.asarray(users), rnd, self.train))

    def train_cohort(self, c: Cohort, lr: float, rnd: int, path: str = "vectorized"):
        """Train cohort ``c`` in round ``rnd``; the one place the engine picks its path:
        vectorized: the closed-form cohort path (kernels) for closed-form strategies, else generic;
        generic: the batched-autograd path from the strategy's declarations (any strategy);
        reference: the plain one-client reference (``c`` must hold one client)."""
        s = self.strategy
        if path not in ("vectorized", "generic", "reference"):
            raise ValueError(f"unknown engine path {path!r} (vectorized, generic or reference)")
        start = None
        if self._given is not None:
            start = self._given_start(c)
        elif self.server_state:
            if self._plan is None or self._plan[0] != rnd:
                raise RuntimeError("begin_round must run before a round's training (server-side plan)")
            start = s.client_start(self.server_state, self._plan[1], c, self.global_p, self.train, self.dtype)
        if path == "vectorized" and s.closed_form:
            res = train_cohort(self.shape, s, c, self.global_p, self.store, self.cfg.sgd, lr, self.cfg.local_epochs,
                               self.cfg.seed, rnd, self.dtype, self.content, self.content_drop, in_place=True,
                               start=start)
            res.personal = s.start_personal(res.start, c.size)
        elif path == "vectorized" and s.split_update:
            own = personal_phase(s, self.shape, c, self.global_p, self.store, self.cfg.sgd, lr, self.cfg.local_epochs,
                                 self.cfg.seed, rnd, self.dtype, self.content)
            res = train_cohort(self.shape, s, c, self.global_p, self.store, self.cfg.sgd, lr, self.cfg.local_epochs,
                               self.cfg.seed, rnd, self.dtype, self.content, self.content_drop, in_place=True,
                               start=start)
            res.personal = own
        elif path == "vectorized" and getattr(s, "gate_update", False) and not start:
            # pFedGate: the closed form with the gate as a transform of the item layer's input
            run = received_run(s, self.shape, c, self.global_p, self.store, self.cfg.sgd, lr, self.cfg.local_epochs,
                               self.cfg.seed, rnd, self.dtype, self.content)
            apply, values, chosen = s.gate_plan(run)
            res = train_cohort(self.shape, s, c, self.global_p, self.store, self.cfg.sgd, lr, self.cfg.local_epochs,
                               self.cfg.seed, rnd, self.dtype, self.content, self.content_drop, in_place=True,
                               gate=Gate(apply, values))
            trained = {k: res.value(k) for k in ("dec_W1", "dec_b1", "dec_out")}
            got = {k: run.start[k] if k == "dec_out" else run.start[k].unsqueeze(0).expand_as(trained[k])
                   for k in trained}
            res.fixed = s.kept(trained, got, chosen, c.seg)
        elif path == "reference" and s.closed_form:
            res = self._reference_update(c, lr, rnd, start)
        else:
            res = train_generic(s, self.shape, c, self.global_p, self.store, self.cfg.sgd, lr, self.cfg.local_epochs,
                                self.cfg.seed, rnd, self.dtype, self.content,
                                optimizer="torch" if path == "reference" else "batched", start=start)
        if self.server_state:
            s.observe(self.server_state, c, start if start else self._start_of(c), {k: res.value(k) for k in s.shared})
        return res

    def _given_start(self, c: Cohort) -> dict[str, torch.Tensor]:
        """The start models the server sent for the cohort's users (the global model for a user it sent
        none for), as (B, ...) / (T, ...) tensors; {} when it sent none for any of them."""
        from federation.strategies import messages as m

        users = c.users.cpu().tolist()
        if not any(int(u) in self._given for u in users):
            return {}
        g = self.global_p
        W, b, rows, ob = [], [], [], []
        items = c.items.cpu().numpy()
        bounds = np.concatenate([[0], np.cumsum(np.bincount(c.seg.cpu().numpy(), minlength=c.size))])
        for j, u in enumerate(users):
            mine = items[bounds[j]:bounds[j + 1]]
            st = self._given.get(int(u))
            if st is None:
                W.append(g["dec_W1"]), b.append(g["dec_b1"])
                rows.append(g["dec_out"][torch.as_tensor(mine, device=self.device)])
                ob.append(g["dec_ob"][torch.as_tensor(mine, device=self.device)])
                continue
            if not np.array_equal(np.asarray(st[m.KEY_ITEM_IDS]), mine):
                raise FedrecError(f"user {u}: the server's start model is for other items than this node holds")
            put = lambda a: torch.as_tensor(np.asarray(a), dtype=self.dtype, device=self.device)  # noqa: E731
            W.append(put(st[m.KEY_DENSE_W])), b.append(put(st[m.KEY_DENSE_B]))
            rows.append(put(st[m.KEY_ROWS])), ob.append(put(st[m.KEY_ROW_BIAS]))
        return {"dec_W1": torch.stack(W).to(self.dtype), "dec_b1": torch.stack(b).to(self.dtype),
                "dec_out": torch.cat(rows).to(self.dtype), "dec_ob": torch.cat(ob).to(self.dtype)}

    def _start_of(self, c: Cohort) -> dict[str, torch.Tensor]:
        """The received global decoder as each client of ``c`` starts from it: (B, ...) / (T, ...)."""
        g = self.global_p
        out = {}
        for k in self.strategy.shared:
            if k in ITEM_ROW_KEYS:
                out[k] = g[k].index_select(0, c.items)
            else:
                out[k] = g[k].unsqueeze(0).expand(c.size, *g[k].shape)
        return out

    def _keep_personal(self, c: Cohort, res) -> None:
        """Write the trained personal parameters back into the clients' state."""
        if self.store is None:
            return
        if isinstance(res, FactoredResult):
            res.commit(self.store, self.strategy.personal)
        else:
            for k in self.strategy.personal:
                self.store.scatter(k, c, res.value(k))

    def _reference_update(self, c: Cohort, lr: float, rnd: int,
                          start: dict[str, torch.Tensor] | None = None) -> "MaterializedResult":
        u = int(c.users[0])
        model_keys = [k for k in self.strategy.personal if k not in self.strategy.extra_personal]
        personal = {k: self.store.gather(k, c, self.dtype)[0] if k not in self.store.row_keys
                    else self.store.gather(k, c, self.dtype) for k in model_keys}
        received = {k: v.cpu() for k, v in self.global_p.items()}
        for k, v in (start or {}).items():          # the model the server sent this client (FedCAC)
            if k in ITEM_ROW_KEYS:
                received[k] = received[k].clone()
                received[k][c.items.cpu()] = v.cpu()
            else:
                received[k] = v[0].cpu()
        new, loss = reference_client_update(self.shape, self.strategy, c.items.cpu(), c.x.cpu(), received,
                                            {k: v.cpu() for k, v in personal.items()}, self.cfg.sgd, lr,
                                            self.cfg.local_epochs, self.cfg.seed, rnd, u,
                                            self.content.cpu() if self.content is not None else None,
                                            self.content_drop.cpu() if self.content_drop is not None else None)
        values = {}
        for k, v in new.items():
            per_entry = k == "enc_in" or (k in ITEM_ROW_KEYS and self.strategy.rows == "touched")
            values[k] = (v if per_entry else v.unsqueeze(0)).to(self.device)
        held = {k: (v.unsqueeze(0) if k not in ITEM_ROW_KEYS else v).to(self.device, self.dtype)
                for k, v in received.items() if k in self.strategy.shared}
        if start:
            held.update({k: v.to(self.device, self.dtype) for k, v in start.items()})
        values.update(self.strategy.start_personal(held, 1))
        return MaterializedResult(values, torch.tensor([loss], dtype=self.dtype))

    def _absorb(self, c: Cohort, res, agg: "_Aggregate") -> None:
        """Keep personal parameters on the client; add shared ones into the round's aggregate."""
        self._keep_personal(c, res)
        if not self.strategy.federated:
            return
        w = self.weights(c.users)                                                     # (B,)
        agg.total_weight += float(w.sum())
        keys = self.strategy.shared + self.shape.extra_dense_keys()
        touched = [k for k in keys if k == "enc_in" or (k in ITEM_ROW_KEYS and self.strategy.rows == "touched")]
        sums = res.row_sums_all(touched, w, self.shape.n_items) if hasattr(res, "row_sums_all") else {}
        for k in keys:
            if k in touched:
                if k in sums:
                    s_, ws_ = sums[k]
                    if k in agg.rows:              # later cohorts add in place; the first one's sums are kept
                        agg.rows[k][0].add_(s_)
                        agg.rows[k][1].add_(ws_)
                    else:
                        agg.rows[k] = (s_, ws_)
                else:
                    s, ws = agg.rows.get(k, (None, None))
                    agg.rows[k] = accumulate_rows(self.shape.n_items, c.items, res.value(k), w[c.seg], s, ws)
            elif k in ITEM_ROW_KEYS:                      # every client holds every row (full FedAvg)
                s, ws = agg.rows.get(k, (torch.zeros_like(self.global_p[k]),
                                         torch.zeros(self.shape.n_items, dtype=self.dtype, device=self.device)))
                agg.rows[k] = (s + res.weighted_sum(k, w), ws + w.sum())
            else:
                contrib = res.weighted_sum(k, w)
                agg.dense[k] = contrib if k not in agg.dense else agg.dense[k] + contrib

    def _apply(self, agg: "_Aggregate", lr: float) -> None:
        W = agg.total_weight
        for k, s in agg.dense.items():
            self.global_p[k] = self.strategy.aggregate_dense(k, self.global_p[k], s, W)
        info = RoundInfo(lr, decay_factor(lr, self.cfg.local_epochs, self.cfg.sgd), self.cfg.row_average,
                         self.cfg.server_lr)
        for k, (sums, wsum) in agg.rows.items():      # sums: this round's own buffer (may be reused in place)
            self.global_p[k] = self.strategy.aggregate_rows(k, self.global_p[k], sums, wsum, W, info)

    # -- inference ---------------------------------------------------------------------------
    @torch.no_grad()
    def user_codes(self, users: np.ndarray) -> tuple[torch.Tensor, list[tuple[Cohort, torch.Tensor]]]:
        """Each user's own code: the last hidden layer h3 (B, H1) of ``users`` (in the given order), from
        the user's own encoder, plus the cohorts used (for strategies with personal rows)."""
        users = np.asarray(users, dtype=np.int64)
        uniq, inverse = np.unique(users, return_inverse=True)
        out = torch.empty(len(uniq), self.shape.h1, dtype=self.dtype, device=self.device)
        where = {int(u): k for k, u in enumerate(uniq)}
        parts = []
        for c in self.cohorts(uniq):
            p = {}
            for k in ("enc_in", "enc_b1", "enc_W2", "enc_b2", "dec_W1", "dec_b1"):
                src = self.strategy.inference_key(k)
                if src in self.strategy.personal:
                    p[k] = self.store.gather(src, c, self.dtype)
                else:
                    p[k] = self.global_p[k][c.items] if k == "enc_in" else self.global_p[k]
            if self.shape.input_tie:
                p["enc_in"] = p["enc_in"] + self.shape.input_tie * item_rows(self.global_p, self.content, c.items)
            h3 = decode_hidden(p, encode(p, c.seg, c.x, c.size))                          # (B_c, H1)
            idx = torch.as_tensor([where[int(u)] for u in c.users.cpu()], device=self.device)
            out[idx] = h3
            parts.append((c, idx))
        return out[torch.as_tensor(inverse, device=self.device)], parts

    @torch.no_grad()
    def user_hidden(self, users: np.ndarray) -> tuple[torch.Tensor, list[tuple[Cohort, torch.Tensor]]]:
        """The code each user scores with (B, H1): its own code, blended towards its nearest prototype
        once prototypes are fitted (federation.engine.prototypes.blend); plus the cohorts used."""
        h3, parts = self.user_codes(users)
        if self.prototypes is not None:
            h3 = proto.blend(h3, self.prototypes, self.prototype_blend)
        return h3, parts

    @torch.no_grad()
    def prototype_stats(self, centroids: torch.Tensor, users: np.ndarray | None = None,
                        chunk: int = 4096) -> proto.PrototypeStats:
        """The summed prototype messages of ``users`` (default: every active client) for ``centroids``."""
        users = self.active_users if users is None else np.asarray(users)
        C = centroids.to(self.device, self.dtype)
        s = self.cfg.secagg
        if s is not None:                    # each client's stats quantized and summed as the protocol does
            q = None
            for lo in range(0, len(users), chunk):
                h3, _ = self.user_codes(users[lo:lo + chunk])
                part = proto.secure_client_stats(h3, C, s.frac_bits, s.max_clients)
                q = part if q is None else tuple(a + b for a, b in zip(q, part))
            if q is None:
                return proto.client_stats(C[:0], C)
            return proto.reveal_stats(*q, s.frac_bits, s.min_clients, self.dtype)
        total = proto.client_stats(C[:0], C)                   # zeros: what no users send
        for lo in range(0, len(users), chunk):
            h3, _ = self.user_codes(users[lo:lo + chunk])
            total = total + proto.client_stats(h3, C)
        return total

    def client_prototype_message(self, user: int, centroids: torch.Tensor) -> dict[str, np.ndarray]:
        """Exactly what one client sends in a prototype round (keys federation.engine.prototypes.*_KEY)."""
        h3, _ = self.user_codes(np.array([user]))
        return proto.client_stats(h3, centroids.to(self.device, self.dtype)).as_message()

    def fit_prototypes(self, settings: proto.PrototypeSettings, on_round=None) -> torch.Tensor:
        """Run the prototype rounds over every active client (federation.engine.prototypes.fit_prototypes)
        and keep the result for scoring; returns the prototypes (K, H1)."""
        C = proto.fit_prototypes(self.prototype_stats, self.shape.h1, settings, self.cfg.seed,
                                 self.dtype, str(self.device), on_round)
        self.prototypes, self.prototype_blend = C, settings.blend
        return C

    @torch.no_grad()
    def user_scores(self, users: np.ndarray) -> torch.Tensor:
        """Scores of every item for ``users`` (in the given order): (B, N), on self.device."""
        users = np.asarray(users, dtype=np.int64)
        uniq, inverse = np.unique(users, return_inverse=True)
        h3, parts = self.user_hidden(uniq)                                                # (U, H1)
        out = self.strategy.score(self.global_p, h3, self.personal_values(uniq), self.content)   # (U, N)
        if "dec_out" in self.strategy.personal and "dec_out" in self.store.row_keys:
            for c, idx in parts:
                rows = self.store.gather("dec_out", c, self.dtype)                        # (T, H1)
                rb = self.store.gather("dec_ob", c, self.dtype)
                out[idx[c.seg], c.items] = (rows * h3[idx][c.seg]).sum(1) + rb
        return out[torch.as_tensor(inverse, device=self.device)]

    def personal_values(self, users: np.ndarray) -> dict[str, torch.Tensor]:
        """The strategy's own per-client personal values of ``users`` (sorted, unique): key -> (B, ...)
        (what ``Strategy.hidden`` / ``Strategy.score`` read; neither the encoder nor rows of a client's
        own items are included)."""
        if self.store is None:
            return {}
        idx = torch.as_tensor(np.asarray(users, dtype=np.int64), device=self.device)
        return {k: self.store.tensors[k].index_select(0, idx).to(self.dtype)
                for k in self.strategy.personal if k not in self.store.row_keys and k not in ENCODER_KEYS}

    def shared_rows(self) -> bool:
        """True when every user scores items with the same (global) decoder rows."""
        return "dec_out" not in self.strategy.personal and self.strategy.shared_item_vectors

    # -- checkpoints -------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = {f"global.{k}": v for k, v in self.global_p.items()}
        if self.prototypes is not None:
            out[PROTOTYPES_TENSOR] = self.prototypes
        if self.store is not None:
            out.update({f"client.{k}": v for k, v in self.store.tensors.items()})
        out.update({f"server.{k}": v for k, v in self.server_state.items()})
        return out

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], completed_round: int) -> None:
        for k in self.global_p:
            self.global_p[k] = tensors[f"global.{k}"].to(self.device, self.dtype)
        if self.store is not None:
            prefix = "client."
            self.store.load({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        for k in self.server_state:
            self.server_state[k] = tensors[f"server.{k}"].to(self.server_state[k].dtype).clone()
        P = tensors.get(PROTOTYPES_TENSOR)
        self.prototypes = None if P is None else P.to(self.device, self.dtype)
        self.round = completed_round


@dataclass
class _Aggregate:
    total_weight: float = 0.0
    dense: dict = field(default_factory=dict)
    rows: dict = field(default_factory=dict)


class FederatedAutoencoder(Recommender):
    """A trained Federation seen through the Recommender interface (scores use each user's own encoder)."""

    name = "federated-ae"

    def __init__(self, fed: Federation, clip: tuple[float, float] | None = None):
        self.fed, self.clip = fed, clip

    def fit(self, train, valid=None):  # training happens in federation.runs.jobs / Federation.run_round
        raise NotImplementedError("train with `fedrec train` or Federation.run_round")

    def score(self, users: np.ndarray) -> np.ndarray:
        return self.fed.user_scores(users).float().cpu().numpy()

    def user_vectors(self, users: np.ndarray) -> np.ndarray:
        """(B, H1+1) float32: [h3_u, 1]. user_vectors(u) @ item_vectors().T == score(u)."""
        users = np.asarray(users, dtype=np.int64)
        uniq, inverse = np.unique(users, return_inverse=True)
        h3, _ = self.fed.user_hidden(uniq)
        h3 = self.fed.strategy.hidden(h3, self.fed.personal_values(uniq))[torch.as_tensor(inverse, device=h3.device)]
        return torch.cat([h3, torch.ones_like(h3[:, :1])], 1).float().cpu().numpy()

    def item_vectors(self) -> np.ndarray:
        """(N, H1+1) float32: [dec_out_i, dec_ob_i] (the bias folded in so a dot product is the score)."""
        if not self.fed.shared_rows():
            raise FedrecError(f"strategy {self.fed.strategy.name!r} scores items with per-user rows or norms: "
                              "there is no single item vector to index")
        g = self.fed.global_p
        rows = item_rows(g, self.fed.content)                                             # (N, H1)
        return torch.cat([rows, g["dec_ob"][:, None]], 1).float().cpu().numpy()

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        p = super().predict(users, items)
        return np.clip(p, *self.clip) if self.clip else p
