"""Validated job configuration (pydantic). Unknown keys and bad values are errors."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from recsys.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataCfg(_Strict):
    path: str = "data/ml-100k"
    format: Literal["auto", "atomic", "ml-100k", "ml-1m", "ml-latest", "csv", "parquet"] = "auto"
    columns: dict[str, str] = Field(default_factory=dict)
    duplicates: Literal["latest", "refuse"] = "latest"     # a re-rated (user, item): keep the latest row, or stop


class SplitCfg(_Strict):
    kind: Literal["ratio", "leave_last_out", "cold_items", "predefined"] = "ratio"
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    cold_fraction: float = Field(0.1, gt=0, lt=1)
    seed: int = 0

    @field_validator("ratios")
    @classmethod
    def _sum_to_one(cls, v):
        if any(x < 0 for x in v) or abs(sum(v) - 1) > 1e-6:
            raise ValueError("must be three non-negative numbers summing to 1")
        return v


class ModelCfg(_Strict):
    mode: Literal["explicit", "implicit"] = "explicit"
    hidden: tuple[int, int] = (256, 128)
    dropout: float = Field(0.5, ge=0, lt=1)
    input_norm: Literal["none", "l2"] = "none"     # implicit only: l2 = unit-norm input rows
    # alpha > 0: the encoder reads personal rows + alpha * the received output rows of the user's items
    # (recsys.models.autoencoder, "Tied encoder input"); nothing new is sent. 0: PersonalFR as published.
    input_tie: float = Field(0.0, ge=0)


class ContentCfg(_Strict):
    """Item content features for a content-aware decoder (recsys/features.py, recsys/content_graph.py).
    Off by default. The features are cached under <data.path>/features/ with a manifest."""
    enabled: bool = False
    backend: Literal["open_clip", "sentence"] = "open_clip"
    model: str = "fedrec-clip-tiny"        # open_clip name, a `fedrec clip train` dir, or (sentence) a model dir
    pretrained: str | None = None          # open_clip tag (needs network) or a local checkpoint file
    fusion: Literal["mean", "text", "image"] = "mean"
    graph: Literal["none", "co_interaction", "kg"] = "none"
    graph_layers: int = Field(2, ge=1, le=8)
    graph_neighbors: int = Field(20, ge=1)
    # eps > 0: soft PCA whitening of the features over the catalogue before the projection, eigenvalue
    # floor eps * the largest (recsys.features.whiten); 0: off
    whiten: float = Field(0.0, ge=0)
    scale: float = Field(6.0, gt=0)      # content vector norm: the projection's effective step is ~scale^2
    row_dropout: float = Field(0.0, ge=0, lt=1)   # P(a client's local step ranks by content alone), DropoutNet-style
    # n0 > 0: item i's content enters at weight 1/(1 + n_i/n0), n_i its training holders (0: off). In
    # process counted on the training matrix; on Flower summed by the server from the nodes' hellos.
    holder_weight: float = Field(0.0, ge=0)
    device: Literal["cpu", "cuda"] | None = None   # extraction device (default: engine.device)


class FederationCfg(_Strict):
    strategy: str = "personalfr"          # a name in federation.strategies.registry
    options: dict = Field(default_factory=dict)   # the strategy's own options (e.g. fedprox: {mu: 0.01})
    rounds: int = Field(100, ge=1)
    fraction: float = Field(0.1, gt=0, le=1)
    local_epochs: int = Field(5, ge=1)
    weighting: Literal["uniform", "interactions"] = "uniform"
    row_average: Literal["holders", "participants"] = "holders"
    server_lr: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _known_strategy(self):
        from federation.strategies.registry import get_strategy

        try:
            get_strategy(self.strategy, self.options)
        except ConfigError as e:
            raise ValueError(str(e)) from None
        return self


class PrivacyCfg(_Strict):
    """User-level differential privacy of the shared decoder (see federation/privacy/dp.py). Off by default.
    Give either noise_multiplier or target_epsilon (the noise is then solved for the configured rounds)."""
    dp: bool = False
    clip: float = Field(1.0, gt=0)                     # L2 bound on one client's decoder update per round
    noise_multiplier: float | None = Field(None, gt=0)
    target_epsilon: float | None = Field(None, gt=0)
    delta: float = Field(1e-4, gt=0, lt=1)             # use < 1/number of users
    outlier_factor: float | None = Field(10.0, gt=1)   # reject updates > factor x the round's median norm
    # Secure aggregation with two non-colluding aggregators (federation/privacy/secagg.py): the server
    # learns per-round sums over >= min_clients clients, never one client's item ids or values.
    secure_aggregation: bool = False
    min_clients: int = Field(5, ge=1)                  # a row / a round is revealed only over this many clients
    frac_bits: int = Field(16, ge=8, le=24)            # fixed-point resolution 2^-frac_bits
    pad_min: int = Field(16, ge=1)                     # rows are padded to a power of two >= this
    fixed_rows: int = Field(0, ge=0)                   # > 0: every client sends exactly this many keys


class PrototypeCfg(_Strict):
    """Federated prototypes of the user codes (federation/engine/prototypes.py), fitted after the last round:
    k-means grown by splitting, where each client sends only its code summed into its nearest
    prototype's row; each client then scores with (1 - blend) x its code + blend x that prototype.
    Off by default (docs/content.md, "Federated prototypes")."""
    enabled: bool = False
    k: int = Field(16, ge=2, le=4096)
    blend: float = Field(0.75, ge=0, le=1)
    iters: int = Field(3, ge=1)              # Lloyd rounds after each split
    split_radius: float = Field(0.1, gt=0)


class OptimizerCfg(_Strict):
    name: Literal["sgd"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["cosine", "constant"] = "cosine"
    min_lr: float = Field(0.0, ge=0)
    clip_norm: float | None = Field(1.0, gt=0)


class EvalCfg(_Strict):
    every: int = Field(10, ge=0)        # 0: only at the end
    split: Literal["valid", "test"] = "valid"
    k: list[int] = Field(default_factory=lambda: [10, 20])


class EngineCfg(_Strict):
    device: Literal["cpu", "cuda"] = "cpu"
    dtype: Literal["float32", "float64"] = "float32"
    state_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    max_cohort_clients: int = Field(1024, ge=1)
    max_cohort_entries: int = Field(262_144, ge=1)


class OutputCfg(_Strict):
    checkpoint_every: int = Field(10, ge=1)


class JobConfig(_Strict):
    name: str = "run"
    seed: int = 0
    data: DataCfg = Field(default_factory=DataCfg)
    split: SplitCfg = Field(default_factory=SplitCfg)
    model: ModelCfg = Field(default_factory=ModelCfg)
    federation: FederationCfg = Field(default_factory=FederationCfg)
    optimizer: OptimizerCfg = Field(default_factory=OptimizerCfg)
    eval: EvalCfg = Field(default_factory=EvalCfg)
    engine: EngineCfg = Field(default_factory=EngineCfg)
    privacy: PrivacyCfg = Field(default_factory=PrivacyCfg)
    content: ContentCfg = Field(default_factory=ContentCfg)
    prototypes: PrototypeCfg = Field(default_factory=PrototypeCfg)
    output: OutputCfg = Field(default_factory=OutputCfg)

    @model_validator(mode="after")
    def _prototypes_not_under_dp(self):
        # The DP accountant covers the decoder updates only; the prototype rounds send codes.
        if self.prototypes.enabled and self.privacy.dp:
            raise ValueError("prototypes: not covered by privacy.dp (the prototype rounds would leave "
                             "the privacy accounting); disable one of them")
        return self


def validate(model: type[BaseModel], obj: dict, source: str = "<config>"):
    """``model.model_validate(obj)`` with a pydantic error turned into one ConfigError line."""
    try:
        return model.model_validate(obj or {})
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        more = f" (and {len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
        raise ConfigError(f"{source}: {where}: {msg}{more}") from None


def parse_config(obj: dict, source: str = "<config>") -> JobConfig:
    return validate(JobConfig, obj, source)


def read_yaml(path: str | Path) -> dict:
    """A config file's mapping; ConfigError for a missing file, bad YAML or a non-mapping top level."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: no such config file")
    try:
        obj = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if obj is not None and not isinstance(obj, dict):
        raise ConfigError(f"{p}: top level must be a mapping of sections")
    return obj or {}


def load_config(path: str | Path) -> JobConfig:
    return parse_config(read_yaml(path), str(path))
