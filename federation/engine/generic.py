"""The generic vectorized path: any strategy's local update for a whole cohort, by batched autograd.

Every parameter a client holds gets a leading client axis: (B, ...) for per-client values, (T, ...)
for the rows of the cohort's T (client, item) entries, (B, N, ...) for every item's row (strategies
with ``rows = "all"``). The model's forward pass is batched over clients (jagged entries, no
padding), ``loss.sum()`` is differentiated once per step (clients are independent, so each client's
gradient is its own), and SGD with momentum, Nesterov, weight decay and per-client gradient clipping
is applied as elementwise tensor arithmetic, exactly as ``torch.optim.SGD`` after
``clip_grad_norm_`` would for each client alone. A strategy only declares its parameters and its
objective (``Strategy.local_loss`` / ``local_update``): no hand-written gradient.

``optimizer="torch"`` runs the same objective through ``torch.optim.SGD`` and ``clip_grad_norm_``
(one client per call): the readable reference the batched optimizer is held to.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from federation.engine.local_sgd import SGDConfig
from federation.engine.state import ClientStore, Cohort
from recsys.errors import ConfigError
from federation.engine import kernels
from recsys.models.autoencoder import CONTENT_KEY, AEShape, client_loss, item_rows, segment_sum

LossFn = Callable[["LocalRun", dict[str, torch.Tensor], int], torch.Tensor]


def _bmv(W: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """W (B, out, in) per client, or (out, in) shared (one GEMM), times v (B, in) -> (B, out)."""
    if W.dim() == 2:
        return v @ W.T
    return torch.bmm(W, v.unsqueeze(2)).squeeze(2)


@dataclass
class LocalRun:
    """One cohort's local training as a strategy sees it: the held ``values`` (trained in place by
    ``sgd``), the round's ``start`` values and the received global parameters."""
    shape: AEShape
    cohort: Cohort
    global_p: dict[str, torch.Tensor]       # received global parameters, compute dtype
    values: dict[str, torch.Tensor]         # held parameters: (B, ...), (T, ...) or (B, N, ...)
    per_entry: set[str]                     # keys whose leading axis is the cohort's entries (T)
    sgd_cfg: SGDConfig
    lr: float
    steps: int
    keep: torch.Tensor                      # (S, B, H2) dropout masks, the model's hash
    content: torch.Tensor | None = None     # (N, F) item content of a content-aware model
    tie: torch.Tensor | None = None         # (T, H1) input_tie x the received rows of the entries' items
    rows_all: bool = False                  # decoder rows held for every item (B, N, ...)
    optimizer: str = "batched"              # batched | torch (the reference, one client)
    seed: int = 0
    rnd: int = 0
    start: dict[str, torch.Tensor] = field(default_factory=dict)
    fixed: tuple[str, ...] = ()             # keys no phase trains: their start value is not copied

    def __post_init__(self):
        self.start = {k: (v if k in self.fixed else v.clone()) for k, v in self.values.items()}
        self._h2_start: torch.Tensor | None = None

    def start_hidden(self, step: int, keep: float | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``hidden(self.start, step, keep)`` without gradients; the encoder part (no dropout before it)
        is computed once per round."""
        with torch.no_grad():
            if self._h2_start is None:
                self._h2_start = self._encode(self.start)
            return self._decode(self.start, self._h2_start, self.mask(step) if keep is None else keep)

    @property
    def size(self) -> int:
        return self.cohort.size

    # -- the model ---------------------------------------------------------------------------
    def model_loss(self, p: dict[str, torch.Tensor], step: int) -> torch.Tensor:
        """The autoencoder's per-client loss (B,) at local step ``step`` with held values ``p``
        (model keys; a strategy passes its personal copies under the model's names)."""
        h3, m = self.hidden(p, step)
        return self.loss_from_hidden(p, h3, m)

    def hidden(self, p: dict[str, torch.Tensor], step: int, keep: float | None = None
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The decoder's hidden layer h3 (B, H1) at local step ``step`` (that step's dropout mask; keep=1.0:
        no dropout, the code a user scores with), and the content-projected code m = h3 dec_P (B, F)
        of a content-aware model (else None)."""
        return self._decode(p, self._encode(p), self.mask(step) if keep is None else keep)

    def _encode(self, p: dict[str, torch.Tensor]) -> torch.Tensor:
        """The encoder: h2 (B, H2)."""
        c = self.cohort
        B, seg, x = c.size, c.seg, c.x.to(p["enc_b1"].dtype)
        enc = p["enc_in"] if self.tie is None else p["enc_in"] + self.tie              # (T, H1)
        h1 = torch.tanh(segment_sum(x[:, None] * enc, seg, B) + p["enc_b1"])           # (B, H1)
        return torch.tanh(_bmv(p["enc_W2"], h1) + p["enc_b2"])                         # (B, H2)

    def _decode(self, p: dict[str, torch.Tensor], h2: torch.Tensor, keep) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Dropout, the dense decoder layer and the content code: (h3 (B, H1), m (B, F) or None)."""
        h3 = torch.tanh(_bmv(p["dec_W1"], h2 * keep) + p["dec_b1"])                     # (B, H1)
        m = None
        if CONTENT_KEY in p:                                                            # (B, F)
            P = p[CONTENT_KEY]
            m = h3 @ P if P.dim() == 2 else torch.bmm(h3.unsqueeze(1), P).squeeze(1)
        return h3, m

    def loss_from_hidden(self, p: dict[str, torch.Tensor], h3: torch.Tensor, m: torch.Tensor | None = None,
                         scale: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """The per-client loss (B,) of scoring with code h3 (B, H1) (and content code m (B, F)) against
        the held rows. scale: per-score multipliers of the row part h3·row_i, (T,) for the held entries
        and (B, N) for every item (FedLoGe's personal norms); None: 1."""
        c, s = self.cohort, self.shape
        B, seg, items, x = c.size, c.seg, c.items, c.x.to(h3.dtype)
        if self.rows_all:
            y = _bmv(p["dec_out"], h3)                                                  # (B, N)
            if scale is not None:
                y = y * scale[1]
            y = y + p["dec_ob"]
            if m is not None:
                y = y + m @ self.content.T
            return client_loss(s, y, seg, items, x, B)
        y = (p["dec_out"] * h3.index_select(0, seg)).sum(1)                            # (T,)
        if scale is not None:
            y = y * scale[0]
        y = y + p["dec_ob"]
        if m is not None:
            y = y + (m.index_select(0, seg) * self.content.index_select(0, items)).sum(1)
        frozen = None
        if s.mode == "implicit":      # the other items keep the received rows (partial compression)
            frozen = h3 @ self.global_p["dec_out"].T                                    # (B, N)
            if scale is not None:
                frozen = frozen * scale[1]
            frozen = frozen + self.global_p["dec_ob"]
            if m is not None:
                frozen = frozen + m @ self.content.T
        return client_loss(s, y, seg, items, x, B, frozen)

    def mask(self, step: int) -> torch.Tensor:
        """(B, H2) dropout keep-mask of local step ``step`` (any step: a phase may run more steps)."""
        if step < len(self.keep):
            return self.keep[step]
        return kernels.dropout_keep_steps(self.seed, self.rnd, self.cohort.users, [step], self.shape.h2,
                                  self.shape.dropout)[0].to(self.keep.dtype)

    # -- the optimizer -----------------------------------------------------------------------
    def sgd(self, keys: tuple[str, ...], loss_fn: LossFn, steps: int, lr: float | None = None) -> torch.Tensor:
        """``steps`` SGD steps on ``loss_fn(run, p, step)`` (B,) over ``values[keys]`` (the other held
        values are constants), at the round's learning rate or ``lr``. Returns the mean loss per client (B,)."""
        lr = self.lr if lr is None else lr
        if self.optimizer == "torch":
            return self._torch_sgd(keys, loss_fn, steps, lr)
        cfg, B = self.sgd_cfg, self.size
        bufs: dict[str, torch.Tensor] = {}
        total = None
        for s in range(steps):
            leaves = {k: self.values[k].detach().requires_grad_(True) for k in keys}
            loss = loss_fn(self, {**self.values, **leaves}, s)                            # (B,)
            grads = dict(zip(keys, torch.autograd.grad(loss.sum(), [leaves[k] for k in keys], allow_unused=True)))
            grads = {k: g for k, g in grads.items() if g is not None}     # as torch.optim: no grad, no step
            seen: set[int] = set()
            for k, g in grads.items():          # updated in place below: each its own dense memory
                if g._base is not None or not g.is_contiguous() or g.data_ptr() in seen:
                    grads[k] = g = g.clone(memory_format=torch.contiguous_format)
                seen.add(g.data_ptr())
            if cfg.clip_norm:
                sq = torch.zeros(B, dtype=loss.dtype, device=loss.device)
                for k, g in grads.items():
                    sq = sq + self._per_client(k, torch.linalg.vector_norm(g.reshape(g.shape[0], -1), dim=1) ** 2)
                coef = (cfg.clip_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)                 # (B,)
            for k, g in grads.items():          # in place: g is this step's own tensor, values[k] no graph's
                v = self.values[k]
                if cfg.clip_norm:
                    g.mul_(self._expand(k, coef, g))
                if cfg.weight_decay:
                    g.add_(v, alpha=cfg.weight_decay)
                if cfg.momentum:
                    if k not in bufs:
                        bufs[k] = g.clone()
                    else:
                        bufs[k].mul_(cfg.momentum).add_(g)
                    if cfg.nesterov:
                        g.add_(bufs[k], alpha=cfg.momentum)
                    else:
                        g = bufs[k]
                v.add_(g, alpha=-lr)
            total = loss.detach() if total is None else total + loss.detach()
        return total / max(1, steps)

    def _per_client(self, key: str, v: torch.Tensor) -> torch.Tensor:
        """(T,) or (B,) per-row numbers of ``key`` summed per client -> (B,)."""
        return segment_sum(v, self.cohort.seg, self.size) if key in self.per_entry else v

    def _expand(self, key: str, per_client: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        v = per_client.index_select(0, self.cohort.seg) if key in self.per_entry else per_client
        return v.view(-1, *([1] * (like.dim() - 1)))

    def _torch_sgd(self, keys: tuple[str, ...], loss_fn: LossFn, steps: int, lr: float) -> torch.Tensor:
        if self.size != 1:
            raise ValueError("the torch-optimizer reference trains one client at a time")
        cfg = self.sgd_cfg
        params = {k: nn.Parameter(self.values[k].detach().clone()) for k in keys}
        opt = torch.optim.SGD(list(params.values()), lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                              weight_decay=cfg.weight_decay)
        total = None
        for s in range(steps):
            loss = loss_fn(self, {**self.values, **params}, s)                            # (1,)
            opt.zero_grad()
            loss.sum().backward()
            if cfg.clip_norm:
                nn.utils.clip_grad_norm_([p for p in params.values() if p.grad is not None], cfg.clip_norm)
            opt.step()
            total = loss.detach() if total is None else total + loss.detach()
        for k, p in params.items():
            self.values[k] = p.detach()
        return total / max(1, steps)


@dataclass
class MaterializedResult:
    """Trained values of a cohort given explicitly: (B, ...) per client, (T, ...) per entry row."""
    values: dict[str, torch.Tensor]
    loss: torch.Tensor                      # (B,)

    def value(self, key: str) -> torch.Tensor:
        return self.values[key]

    def weighted_sum(self, key: str, w: torch.Tensor) -> torch.Tensor:
        return torch.tensordot(w, self.values[key], dims=([0], [0]))


def _local_run(strategy, shape: AEShape, cohort: Cohort, global_p: dict[str, torch.Tensor], store: ClientStore | None,
               sgd: SGDConfig, lr: float, steps: int, seed: int, rnd: int, dtype: torch.dtype,
               content: torch.Tensor | None, optimizer: str = "batched", start: dict[str, torch.Tensor] | None = None,
               batched: bool = True) -> LocalRun:
    """The cohort's held values and the round's constants as a LocalRun. batched=False: shared dense
    parameters stay unbatched (the received model, not trained: ``personal_phase``)."""
    if shape.content_dropout > 0:
        raise ConfigError(f"content.row_dropout is supported by the closed-form strategies only, not {strategy.name!r}")
    B, items = cohort.size, cohort.items
    rows_all = batched and strategy.rows == "all"
    phase = strategy.phase_keys(shape)
    g = {k: v.to(dtype) for k, v in global_p.items()}
    values, per_entry = {}, set()
    for k, prm in strategy.params(shape).items():
        if prm.role == "personal":
            values[k] = store.gather(k, cohort, dtype)
            if prm.item_rows:
                per_entry.add(k)
        elif prm.item_rows and (k == "enc_in" or not rows_all):
            values[k] = g[prm.source].index_select(0, items)                            # (T, ...)
            per_entry.add(k)
        elif batched or k in phase:
            v = g[prm.source]
            values[k] = v.unsqueeze(0).expand(B, *v.shape).clone()                      # (B, ...)
        else:
            values[k] = g[prm.source]                                                   # shared: unbatched
    for k, v in (start or {}).items():
        values[k] = v.to(dtype).clone()
    C = None if content is None else content.to(dtype)
    tie = (shape.input_tie * item_rows(g, C, items)) if shape.input_tie else None      # a constant of the round
    keep = kernels.dropout_keep_steps(seed, rnd, cohort.users, range(steps), shape.h2, shape.dropout).to(dtype)
    fixed = () if batched else tuple(k for k in values if k not in phase)
    return LocalRun(shape, cohort, g, values, per_entry, sgd, lr, steps, keep, C, tie, rows_all, optimizer, seed, rnd,
                    fixed=fixed)


def received_run(strategy, shape: AEShape, cohort: Cohort, global_p: dict[str, torch.Tensor], store: ClientStore,
                 sgd: SGDConfig, lr: float, steps: int, seed: int, rnd: int, dtype: torch.dtype = torch.float32,
                 content: torch.Tensor | None = None) -> LocalRun:
    """The cohort's values as received (shared layers unbatched, nothing trained): what a strategy's
    own phase or plan reads (``personal_phase``, pFedGate's ``gate_plan``)."""
    return _local_run(strategy, shape, cohort, global_p, store, sgd, lr, steps, seed, rnd, dtype, content, batched=False)


def personal_phase(strategy, shape: AEShape, cohort: Cohort, global_p: dict[str, torch.Tensor],
                   store: ClientStore, sgd: SGDConfig, lr: float, steps: int, seed: int, rnd: int,
                   dtype: torch.dtype = torch.float32, content: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """``strategy.personal_update`` alone, for a strategy whose shared update is PersonalFR's
    (``Strategy.split_update``): its ``phase_keys`` (its own personal parameters, or Persona's shared
    embedder, one copy per client) train against the received model, which is held as it arrived
    (other shared layers unbatched: one GEMM per step, not a copy per client). Returns their trained
    values; the engine runs the PersonalFR update on the closed-form path (``Federation.train_cohort``)."""
    run = received_run(strategy, shape, cohort, global_p, store, sgd, lr, steps, seed, rnd, dtype, content)
    strategy.personal_update(run)
    return {k: run.values[k].detach() for k in strategy.phase_keys(shape)}


def train_generic(strategy, shape: AEShape, cohort: Cohort, global_p: dict[str, torch.Tensor],
                  store: ClientStore | None, sgd: SGDConfig, lr: float, steps: int, seed: int, rnd: int,
                  dtype: torch.dtype = torch.float32, content: torch.Tensor | None = None,
                  optimizer: str = "batched", start: dict[str, torch.Tensor] | None = None) -> MaterializedResult:
    """Run ``strategy.local_update`` for every client of ``cohort`` (see the module docstring).
    Personal values come from ``store``; shared ones start at the received ``global_p``, or at the
    per-client values ``start`` ((B, ...) / (T, ...)) the server sent (``Strategy.client_start``)."""
    run = _local_run(strategy, shape, cohort, global_p, store, sgd, lr, steps, seed, rnd, dtype, content, optimizer,
                     start)
    loss = strategy.local_update(run)
    return MaterializedResult({k: v.detach() for k, v in run.values.items()}, loss.detach())
