"""The strategy interface: what a federated method declares and which hooks it may override.

A strategy declares
  * its parameters and their roles (``params``): ``personal`` (lives on the client, never sent),
    ``dense`` (shared, a client sends its whole trained value) or ``rows`` (shared item rows; with
    partial compression, ``rows = "touched"``, a client trains and sends only the rows of its own items);
  * its local update (``local_update``): by default SGD on ``local_loss`` over every parameter the client
    holds, run by the engine's generic vectorized path (``federation.engine.generic``). A variant
    overrides ``local_loss`` (an extra term) or ``local_update`` (an extra phase) and calls ``super()``;
  * the message it sends, derived from the roles (``message_keys``; ``federation.strategies.messages``);
  * its aggregation (``aggregate_dense``, ``aggregate_rows``): pure functions over the round's sums
    (``federation.strategies.aggregation``).
A strategy with ``closed_form = True`` trains with the plain model loss and plain SGD, so the engine
may use the closed-form cohort path (``federation.engine.cohort.train_cohort``: the written-out
backward and the fused kernels); the engine picks the path in one place (``Federation.train``).

Options (hyperparameters) are a pydantic model per strategy, filled from ``federation.options`` of a
job config; unknown or bad options are one clear error.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from recsys.errors import ConfigError
from recsys.models.autoencoder import ALL_KEYS, ENCODER_KEYS, ITEM_ROW_KEYS, AEShape

if TYPE_CHECKING:       # the engine imports strategies, not the other way round (type hints only)
    from federation.engine.generic import LocalRun

Role = Literal["personal", "dense", "rows"]


@dataclass(frozen=True)
class Param:
    """One parameter a client holds. ``source``: the model key whose shape and initial value it takes
    (itself, or the key it is a personal copy of); ``item_rows``: indexed by item id."""
    role: Role
    source: str
    item_rows: bool


@dataclass(frozen=True)
class RoundInfo:
    """What an aggregation rule may need to know about the round besides the sums."""
    lr: float
    decay: float                 # factor weight decay alone applies to a parameter over the local steps
    row_average: str = "holders"
    server_lr: float = 1.0


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Strategy:
    """Base class: PersonalFR's roles (personal encoder, shared decoder, partial compression) and the
    generic local update. Subclasses set ``name``, ``summary`` and override what differs."""

    name: ClassVar[str] = "base"
    summary: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    Options: ClassVar[type[BaseModel]] = NoOptions
    personal_model_keys: ClassVar[tuple[str, ...]] = ENCODER_KEYS   # model keys that stay on the client
    rows: ClassVar[str] = "touched"        # touched: a client holds its own items' rows; all: every row
    federated: ClassVar[bool] = True
    closed_form: ClassVar[bool] = False     # plain loss and SGD: the closed-form cohort path applies
    extra_personal: ClassVar[dict[str, Param]] = {}   # personal parameters beyond the model's own

    def __init__(self, options: dict | None = None):
        try:
            self.options = self.Options.model_validate(options or {})
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            msg = "unknown option" if err["type"] == "extra_forbidden" else err["msg"]
            raise ConfigError(f"federation.options.{where}: {msg} (strategy {self.name!r})") from None

    # -- roles -------------------------------------------------------------------------------
    @property
    def personal(self) -> tuple[str, ...]:
        """Keys of every personal parameter (model keys first, then the strategy's own)."""
        return tuple(self.personal_model_keys) + tuple(self.extra_personal)

    @property
    def shared(self) -> tuple[str, ...]:
        """Model keys the server aggregates (the content projection, when present, is shared too)."""
        return tuple(k for k in ALL_KEYS if k not in self.personal_model_keys) if self.federated else ()

    @property
    def sends_rows(self) -> bool:
        """Whether a client sends item rows (its own items' under partial compression)."""
        return any(p.role == "rows" for p in self.params(AEShape(2, h1=2, h2=2)).values())

    @property
    def sends_messages(self) -> bool:
        """Whether a client's update is a message of its own items' rows plus dense parameters
        (``federation.strategies.messages``; no rows and no ids when the strategy shares none, as
        FedPer's personal item layer): what DP clipping and the Flower deployment work on."""
        return self.federated and (self.rows == "touched" or not self.sends_rows)

    def params(self, shape: AEShape) -> dict[str, Param]:
        """Every parameter a client holds, with its role."""
        out = {}
        keys = ALL_KEYS + shape.extra_dense_keys()
        for k in keys:
            rows = k in ITEM_ROW_KEYS
            if k in self.personal_model_keys or not self.federated:
                out[k] = Param("personal", k, rows)
            else:
                out[k] = Param("rows" if rows else "dense", k, rows)
        out.update(self.extra_personal)
        return out

    def personal_init(self, shape: AEShape, seed: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """Initial values of the strategy's own personal parameters that copy no model key (their
        ``Param.source`` is their own name), one value every client starts from. Default: none."""
        return {}

    def row_keys(self, shape: AEShape) -> tuple[str, ...]:
        """Keys indexed by item (a client's store holds its own items' rows of the personal ones)."""
        return tuple(k for k, p in self.params(shape).items() if p.item_rows)

    def message_keys(self, shape: AEShape) -> tuple[str, ...]:
        """The shared parameters a client sends, in message order (rows first)."""
        ps = self.params(shape)
        return (tuple(k for k, p in ps.items() if p.role == "rows")
                + tuple(k for k, p in ps.items() if p.role == "dense"))

    extra_message_keys: ClassVar[tuple[str, ...]] = ()   # keys a compressed message adds (``compress``)

    def compress(self, msg: dict[str, np.ndarray], received: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        """The message a deployed client sends for its full update ``msg`` (plain aggregation only; the
        server restores it with ``federation.strategies.messages.expand_update``). Default: as is."""
        return msg

    def message_bytes(self, shape: AEShape, n_rows):
        """Bytes of one client's compressed message with ``n_rows`` own rows (int or int array), or None
        when ``compress`` keeps the message as is (``comm.client_bytes`` counts it from the roles)."""
        return None

    def inference_key(self, key: str) -> str:
        """Which held parameter a user scores with in place of model parameter ``key``."""
        return key

    def model_fields(self) -> dict:
        """AEShape fields the strategy sets (Persona's embedder heads). Default: none."""
        return {}

    # -- inference -----------------------------------------------------------------------------
    shared_item_vectors: ClassVar[bool] = True   # scores are hidden(h3)·row_i + b_i with the global rows

    def hidden(self, h3: torch.Tensor, personal: dict[str, torch.Tensor]) -> torch.Tensor:
        """The code (B, H1) a user scores the global item rows with, from its code h3 (B, H1) and its
        personal per-client values ``personal`` (key -> (B, ...)). Default: h3 itself."""
        return h3

    def score(self, g: dict[str, torch.Tensor], h3: torch.Tensor, personal: dict[str, torch.Tensor],
              content: torch.Tensor | None = None) -> torch.Tensor:
        """Scores (B, N) of every item for users with codes h3 (B, H1) under global parameters ``g``."""
        from recsys.models.autoencoder import full_scores

        return full_scores(g, self.hidden(h3, personal), content)

    no_content: ClassVar[str] = ""      # why a content-aware decoder is not supported ("": it is)

    def check(self, shape: AEShape, content: bool) -> None:
        """Refuse an unsupported combination with one clear line (ConfigError)."""
        if content and not self.federated:
            raise ConfigError(f"content features need a federated strategy, not {self.name!r}")
        if content and self.no_content:
            raise ConfigError(f"{self.name} {self.no_content}; content-aware decoders are not supported")

    # -- server state (strategies whose server keeps per-client state, e.g. FedCAC) ------------------
    individual_updates: ClassVar[bool] = False   # the server needs each client's own update: no secure aggregation, no DP
    server_entry_keys: ClassVar[tuple[str, ...]] = ()   # server-state keys laid out per training entry (rows)

    def server_state_init(self, shape: AEShape, train, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """Tensors the server keeps across rounds (checkpointed as ``server.KEY``). Default: none."""
        return {}

    def begin_round(self, state: dict[str, torch.Tensor], users, rnd: int, train):
        """The server's plan for round ``rnd`` with clients ``users`` (passed to ``client_start``)."""
        return None

    def client_start(self, state: dict[str, torch.Tensor], plan, cohort, global_p: dict[str, torch.Tensor],
                     train, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """Per-client start values of shared parameters ((B, ...) / (T, ...)) in place of the global
        ones: what the server sends each client. Default: {} (every client receives the global model)."""
        return {}

    def start_personal(self, start: dict[str, torch.Tensor], n_clients: int) -> dict[str, torch.Tensor]:
        """Personal values a closed-form client keeps from the model it received (``start``: its start
        values, per client or shared): FedCAC keeps its personalized dense layer. Default: none."""
        return {}

    def observe(self, state: dict[str, torch.Tensor], cohort, start: dict[str, torch.Tensor],
                trained: dict[str, torch.Tensor]) -> None:
        """The server sees a cohort's updates (``trained``; it sent ``start``) and updates its state."""

    # -- local update (the generic path) ------------------------------------------------------
    def local_loss(self, run: "LocalRun", p: dict[str, torch.Tensor], step: int) -> torch.Tensor:
        """Per-client objective (B,) of local step ``step`` with held values ``p``: the model's loss."""
        return run.model_loss(p, step)

    # A strategy whose local update is ``personal_update`` (its own personal parameters, against the
    # received model) followed by PersonalFR's plain update sets ``split_update``: the engine then runs
    # the personal phase alone (``engine.generic.personal_phase``) and the shared update on the
    # closed-form path, at PersonalFR's speed. Both paths are held equal by the conformance suite.
    split_update: ClassVar[bool] = False

    def phase_keys(self, shape: AEShape) -> tuple[str, ...]:
        """What ``personal_update`` trains: the strategy's own personal parameters (default), or shared
        ones a phase of its own trains against the received model (Persona's embedder)."""
        return tuple(self.extra_personal)

    def personal_update(self, run: "LocalRun") -> None:
        """Train the strategy's ``phase_keys`` from ``run.start``."""

    def local_update(self, run: "LocalRun") -> torch.Tensor:
        """Train the cohort's clients; returns their mean local loss (B,). ``run.values`` holds the
        trained values afterwards."""
        own = self.phase_keys(run.shape)
        keys = tuple(k for k in run.values if k not in own)
        return run.sgd(keys, self.local_loss, run.steps)

    # -- aggregation (pure) -------------------------------------------------------------------
    def aggregate_dense(self, key: str, old: torch.Tensor, weighted_sum: torch.Tensor,
                        total_weight: float) -> torch.Tensor:
        """New global value of a dense shared parameter from the clients' weighted sum."""
        return weighted_sum / total_weight

    def aggregate_rows(self, key: str, old: torch.Tensor, sums: torch.Tensor, wsum: torch.Tensor,
                       total_weight: float, info: RoundInfo) -> torch.Tensor:
        """New global item rows from the per-row weighted sums over holders and their weights."""
        from federation.strategies.aggregation import personalfr_rows

        return personalfr_rows(old, sums, wsum, total_weight, info.row_average, info.server_lr, in_place=True)


def personal_copies(keys: tuple[str, ...], prefix: str) -> dict[str, Param]:
    """Personal copies of model parameters ``keys`` under ``prefix.key`` (e.g. Ditto's decoder)."""
    return {f"{prefix}.{k}": Param("personal", k, k in ITEM_ROW_KEYS) for k in keys}

