"""Configs of the ranking stage's jobs (pydantic, strict: unknown keys are errors)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from federation.runs.config import DataCfg, EvalCfg, SplitCfg, _Strict, validate


class EaseCfg(_Strict):
    lam: float = Field(300.0, gt=0)                                   # L2 weight λ of the closed form
    share: Literal["auto", "dense", "neighbours"] = "auto"            # how B reaches clients
    dense_max: int = Field(5000, ge=1)                                # auto: dense up to this many items
    neighbours: int = Field(200, ge=1)                                # top-k entries per row otherwise


class EasePrivacyCfg(_Strict):
    secure_aggregation: bool = False       # clients send additive shares of their Gram contribution
    frac_bits: int = Field(8, ge=0, le=24)
    dp: bool = False                       # Gaussian noise on the Gram matrix, one release
    clip: float = Field(100.0, gt=0)       # bound on one user's ‖w·x xᵀ‖_F (w = min(1, clip / n_u))
    noise_multiplier: float | None = Field(None, gt=0)
    target_epsilon: float | None = Field(None, gt=0)
    delta: float = Field(1e-4, gt=0, lt=1)
    noise_seed: int | None = None          # tests and benchmarks only; None draws fresh OS randomness

    @model_validator(mode="after")
    def _noise(self):
        if self.dp and (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ValueError("privacy.dp needs exactly one of noise_multiplier and target_epsilon")
        return self


class EaseJobConfig(_Strict):
    kind: Literal["ease"] = "ease"
    name: str = "ease"
    data: DataCfg = Field(default_factory=DataCfg)
    split: SplitCfg = Field(default_factory=SplitCfg)
    ease: EaseCfg = Field(default_factory=EaseCfg)
    privacy: EasePrivacyCfg = Field(default_factory=EasePrivacyCfg)
    eval: EvalCfg = Field(default_factory=EvalCfg)


def parse_ease_config(obj: dict, source: str = "<config>") -> EaseJobConfig:
    return validate(EaseJobConfig, obj, source)


class SourcesCfg(_Strict):
    personalfr: str | None = None     # a federation run directory (any strategy): its personal scores
    ease: str | None = None           # a federated EASE run directory
    content: bool = True              # similarity of items to the user's history in content space
    popularity: bool = True


class ContentFeaturesCfg(_Strict):
    backend: Literal["open_clip", "sentence"] = "sentence"
    model: str = "minilm"
    pretrained: str | None = None
    fusion: Literal["mean", "text", "image"] = "text"


class CandidatesCfg(_Strict):
    per_source: int = Field(50, ge=1)         # top-n of each source enter the union


class RankerTrainCfg(_Strict):
    scheme: Literal["cyclic", "bagging"] = "cyclic"
    nodes: int = Field(4, ge=1)               # data holders (user blocks) in simulation
    valid_users: float = Field(0.2, gt=0, lt=1)   # share of each holder's users kept for early stopping
    rounds: int = Field(60, ge=1)
    trees_per_round: int = Field(5, ge=1)
    learning_rate: float = Field(0.02, gt=0)
    num_leaves: int = Field(3, ge=2)
    min_data_in_leaf: int = Field(300, ge=1)
    feature_fraction: float = Field(0.5, gt=0, le=1)
    patience: int = Field(10, ge=1)
    seed: int = 0


class RankerJobConfig(_Strict):
    kind: Literal["ranker"] = "ranker"
    name: str = "ranker"
    sources: SourcesCfg = Field(default_factory=SourcesCfg)
    content: ContentFeaturesCfg = Field(default_factory=ContentFeaturesCfg)
    candidates: CandidatesCfg = Field(default_factory=CandidatesCfg)
    training: RankerTrainCfg = Field(default_factory=RankerTrainCfg)
    eval: EvalCfg = Field(default_factory=EvalCfg)

    @model_validator(mode="after")
    def _a_run(self):
        if not (self.sources.personalfr or self.sources.ease):
            raise ValueError("sources: name at least one run (personalfr or ease); data and split come from it")
        return self


def parse_ranker_config(obj: dict, source: str = "<config>") -> RankerJobConfig:
    return validate(RankerJobConfig, obj, source)
