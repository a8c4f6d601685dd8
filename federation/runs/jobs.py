"""Batch training jobs: run directories, checkpoints, resume, evaluation.

A run directory holds:
  config.yaml        the resolved config            manifest.json   versions, data/split checksums, status
  split.safetensors  the split used (+ split.json)  metrics.jsonl   one JSON line per completed round
  checkpoint.safetensors  the state after the last checkpointed round, committed by one rename: its
                     metadata holds the round, the tensors' SHA-256 and the metrics lines since the
                     checkpoint before (recovered into metrics.jsonl on --resume after a kill)
  checkpoint.json    a convenience copy of round + tensor checksum (never trusted over the checkpoint)
  summary.json       final metrics (written when the run completes)
"""
from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
import yaml

from federation.strategies.registry import get_strategy, message_strategies
from federation.runs.config import JobConfig, load_config, parse_config
from federation.engine.local_sgd import SGDConfig
from federation.engine.prototypes import PrototypeSettings, rounds_needed
from federation.simulation import PROTOTYPES_TENSOR, FederatedAutoencoder, Federation, FedSettings
from federation.engine.state import ENC_SCALE, ENC_SHIFT
from recsys.data import InteractionData
from federation.privacy.dp import DPSettings, epsilon, noise_for_epsilon
from federation.privacy.secagg import SecAggSettings
from recsys.errors import ConfigError, FedrecError, ManifestError
from recsys.evaluation import evaluate_model
from federation.runs.loop import CHECKPOINT, read_checkpoint, run_rounds, save_checkpoint
from recsys.io import library_versions, load_arrays, save_arrays, write_json, write_text
from recsys.loaders import load_dataset
from recsys.models.autoencoder import AEShape, holder_weights
from recsys.splits import Split, load_split, make_split, save_split

log = logging.getLogger(__name__)
RUN_FORMAT = 1
_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Run:
    dir: Path
    cfg: JobConfig
    data: InteractionData
    split: Split
    fed: Federation

    @property
    def train(self) -> sp.csr_matrix:
        return self.split.matrix(self.data, "train")

    def model(self) -> FederatedAutoencoder:
        r = self.data.ratings.data
        clip = (float(r.min()), float(r.max())) if self.cfg.model.mode == "explicit" else None
        return FederatedAutoencoder(self.fed, clip)


def resolve_device(name: str) -> str:
    if name == "cuda" and not torch.cuda.is_available():
        raise FedrecError("--device cuda: no CUDA device is available (torch.cuda.is_available() is False)")
    return name


def _require_messages(cfg: JobConfig, what: str) -> None:
    strategy = get_strategy(cfg.federation.strategy, cfg.federation.options)
    if not strategy.sends_messages:
        raise ConfigError(f"{what}; strategy {strategy.name!r} sends none (use one of: "
                          f"{', '.join(message_strategies())})")
    if strategy.individual_updates:
        raise ConfigError(f"{what}; strategy {strategy.name!r} needs each client's own update on the server")
    if not strategy.sends_rows:
        raise ConfigError(f"{what}; strategy {strategy.name!r} shares no item rows (its item layer is personal): "
                          "not supported")


def dp_settings(cfg: JobConfig) -> DPSettings | None:
    """The run's DP settings, with the noise solved from target_epsilon when that is what was given."""
    p = cfg.privacy
    if not p.dp:
        return None
    _require_messages(cfg, "privacy.dp: differential privacy clips per-client messages of own-item rows")
    if (p.noise_multiplier is None) == (p.target_epsilon is None):
        raise ConfigError("privacy: give exactly one of noise_multiplier and target_epsilon")
    if cfg.content.enabled and cfg.content.holder_weight > 0:
        # The weights need exact per-item holder counts, a release the decoder's DP guarantee does not cover.
        raise ConfigError("privacy.dp with content.holder_weight: holder counts are exact per-item counts "
                          "that differential privacy does not cover; set content.holder_weight: 0")
    sigma = p.noise_multiplier or noise_for_epsilon(p.target_epsilon, cfg.federation.fraction,
                                                    cfg.federation.rounds, p.delta)
    return DPSettings(sigma, p.clip, p.delta)


def fed_settings(cfg: JobConfig) -> FedSettings:
    """The engine settings of a job config (also the Flower server's: same schedule, same sampling)."""
    o = cfg.optimizer
    return FedSettings(
        strategy=cfg.federation.strategy, options=dict(cfg.federation.options), rounds=cfg.federation.rounds, fraction=cfg.federation.fraction,
        local_epochs=cfg.federation.local_epochs, weighting=cfg.federation.weighting,
        row_average=cfg.federation.row_average, server_lr=cfg.federation.server_lr, schedule=o.schedule,
        min_lr=o.min_lr, sgd=SGDConfig(o.lr, o.momentum, o.nesterov, o.weight_decay, o.clip_norm), seed=cfg.seed,
        max_cohort_clients=cfg.engine.max_cohort_clients, max_cohort_entries=cfg.engine.max_cohort_entries,
        dp=dp_settings(cfg), secagg=secagg_settings(cfg))


def secagg_settings(cfg: JobConfig) -> SecAggSettings | None:
    """The run's secure-aggregation settings (None when off); one clear error where it cannot apply."""
    p = cfg.privacy
    if not p.secure_aggregation:
        return None
    _require_messages(cfg, "privacy.secure_aggregation: secure aggregation sums per-client messages of own-item rows")
    if cfg.federation.weighting != "uniform":
        raise ConfigError("privacy.secure_aggregation needs federation.weighting: uniform (a client's weight "
                          "would reveal its activity)")
    if cfg.content.enabled and cfg.content.holder_weight > 0:
        raise ConfigError("privacy.secure_aggregation with content.holder_weight: holder counts are exact "
                          "per-item counts of every user; set content.holder_weight: 0")
    dp = dp_settings(cfg)
    return SecAggSettings(frac_bits=p.frac_bits, min_clients=p.min_clients, pad_min=p.pad_min,
                          fixed_rows=p.fixed_rows, seed=cfg.seed,
                          noise_std=dp.noise_multiplier * dp.clip if dp else 0.0)


def content_spec(cfg: JobConfig):
    """The feature extractor spec of a job's ``content`` section."""
    from recsys.features import ClipSpec

    c = cfg.content
    return ClipSpec(c.backend, c.model, c.pretrained, c.fusion)


def item_content(cfg: JobConfig, data: InteractionData, split: Split, progress: bool = False) -> np.ndarray | None:
    """(N, F+1) float32 content vectors of a content-aware job, or None: cached item features
    (recsys.features), optionally propagated over an item graph (recsys.content_graph), then
    ``content_vectors``."""
    c = cfg.content
    if not c.enabled:
        return None
    from recsys.content_graph import build_graph, propagate
    from recsys.features import build_features

    feats, _ = build_features(data, Path(cfg.data.path), content_spec(cfg),
                              resolve_device(c.device or cfg.engine.device), progress=progress)
    if c.graph != "none":
        ei, ew = build_graph(c.graph, split.matrix(data, "train"), data, Path(cfg.data.path), c.graph_neighbors)
        feats = propagate(feats, ei, ew, c.graph_layers)
        log.info("content propagated over the %s graph (%d edges, %d layers)", c.graph, ei.shape[1], c.graph_layers)
    return content_vectors(cfg, feats)


def content_vectors(cfg: JobConfig, feats: np.ndarray) -> np.ndarray:
    """(N, D) item features -> (N, D+1) float32: whitened over the catalogue (unit rows) if
    content.whiten > 0, plus a constant 1 column (lets the projection learn a shared offset for items with no
    free row), times content.scale."""
    from recsys.features import whiten

    f = whiten(feats, cfg.content.whiten)                                                   # (N, D)
    # Scaling matters: the free item rows absorb warm items' signal quickly, and the projection (the only
    # thing cold items are scored by) trains with an effective step ~scale^2 (docs/benchmarks.md).
    return (cfg.content.scale * np.hstack([f, np.ones((len(f), 1), np.float32)])).astype(np.float32)


def holder_counts(train: sp.csr_matrix) -> np.ndarray:
    """(N,) int64: how many users (rows of ``train``) hold each item."""
    return np.bincount(train.indices[train.data != 0], minlength=train.shape[1]).astype(np.int64)


def weigh_content(cfg: JobConfig, content: np.ndarray, holders: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(content the decoder scores with, content its content-only steps score with or None) of a
    content-aware job: with content.holder_weight > 0 item i's row is weighted by 1/(1 + n_i/n0),
    holders (N,) = n_i; content-only steps (content.row_dropout) see every item at full weight."""
    if cfg.content.holder_weight <= 0:
        return content, None
    g = holder_weights(holders, cfg.content.holder_weight)                                  # (N,)
    weighted = (content * g[:, None]).astype(np.float32)                                    # (N, F)
    return weighted, (content if cfg.content.row_dropout > 0 else None)


def build_federation(cfg: JobConfig, data: InteractionData, split: Split,
                     train: sp.csr_matrix | None = None, content: np.ndarray | None = None,
                     holders: np.ndarray | None = None) -> Federation:
    """The in-process federation of a job. ``train``: a different training matrix (a SuperNode passes
    its own users' rows only). ``content``: the job's item content (computed when the config enables
    it and none is given). ``holders`` (N,): users holding each item, for holder-weighted content
    (default: counted on the whole training matrix; a SuperNode gets the federation's counts from the
    server, see federation/deploy/node.py)."""
    if content is None and cfg.content.enabled:
        content = item_content(cfg, data, split)
    content_drop = None
    if content is not None and cfg.content.holder_weight > 0:
        if holders is None:
            holders = holder_counts(split.matrix(data, "train"))
        content, content_drop = weigh_content(cfg, content, holders)
    shape = AEShape(data.n_items, cfg.model.hidden[0], cfg.model.hidden[1], cfg.model.dropout, cfg.model.mode,
                    cfg.model.input_norm, 0 if content is None else content.shape[1],
                    cfg.content.row_dropout if content is not None else 0.0, cfg.model.input_tie,
                    **get_strategy(cfg.federation.strategy, cfg.federation.options).model_fields())
    fed = Federation(shape, fed_settings(cfg), split.matrix(data, "train") if train is None else train,
                     resolve_device(cfg.engine.device), _DTYPES[cfg.engine.dtype], _DTYPES[cfg.engine.state_dtype],
                     content, content_drop)
    fed.prototype_blend = cfg.prototypes.blend
    return fed


def prototype_settings(cfg: JobConfig) -> PrototypeSettings:
    p = cfg.prototypes
    return PrototypeSettings(k=p.k, blend=p.blend, iters=p.iters, split_radius=p.split_radius)


CONTENT_FILE = "content.safetensors"      # the exact item content a content-aware run was trained with


def _load_content(run_dir: Path, data: InteractionData) -> np.ndarray:
    c = load_arrays(run_dir / CONTENT_FILE)["content"]
    if c.ndim != 2 or c.shape[0] != data.n_items:
        raise ManifestError(f"{run_dir / CONTENT_FILE}: content of shape {c.shape} for {data.n_items} items")
    return c


def _manifest(cfg: JobConfig, data: InteractionData, split: Split, status: str) -> dict:
    return {"format": RUN_FORMAT, "name": cfg.name, "status": status, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "dataset": data.summary(), "dataset_checksum": data.checksum(), "split_counts": split.counts(),
            "versions": library_versions()}


def _read_manifest(run_dir: Path) -> dict:
    p = run_dir / "manifest.json"
    if not p.exists():
        raise ManifestError(f"{run_dir}: not a run directory (no manifest.json)")
    try:
        m = json.loads(p.read_text())
    except json.JSONDecodeError:
        raise ManifestError(f"{p}: corrupt manifest (not JSON)") from None
    if m.get("format") != RUN_FORMAT:
        raise ManifestError(f"{run_dir}: run format {m.get('format')} is not supported (expected {RUN_FORMAT})")
    return m


def _save_checkpoint(run_dir: Path, fed: Federation) -> None:
    save_checkpoint(run_dir, fed.state_tensors(), fed.round)


def _load_checkpoint(run_dir: Path, fed: Federation, k_prototypes: int | None = None) -> None:
    """Load the last checkpoint into ``fed``; k_prototypes: the config's prototype count (None: off)."""
    got_ck = read_checkpoint(run_dir)
    if got_ck is None:
        return
    tensors, rnd = got_ck
    ck = run_dir / CHECKPOINT
    expected = {k: tuple(v.shape) for k, v in fed.state_tensors().items() if k != PROTOTYPES_TENSOR}
    got = {k: tuple(v.shape) for k, v in tensors.items() if k != PROTOTYPES_TENSOR}
    affine = {f"client.{ENC_SCALE}", f"client.{ENC_SHIFT}"}
    if not affine & got.keys():       # saved before the encoder rows had an affine part: rows in full
        expected = {k: v for k, v in expected.items() if k not in affine}
    P = tensors.get(PROTOTYPES_TENSOR)
    if expected != got or (P is not None and tuple(P.shape) != (k_prototypes, fed.shape.h1)):
        raise ManifestError(f"{ck}: checkpoint shapes do not match this config and data")
    fed.load_state_tensors(tensors, rnd)


def prepare_data(cfg: JobConfig) -> tuple[InteractionData, Split]:
    data = load_dataset(cfg.data.path, cfg.data.format, cfg.data.columns or None, duplicates=cfg.data.duplicates)
    split = make_split(data, cfg.split.kind, cfg.split.seed, cfg.split.ratios, cfg.split.cold_fraction)
    return data, split


def train(config_path: str | Path, run_dir: str | Path | None = None, device: str | None = None,
          resume: bool = False, overwrite: bool = False, progress: bool = True,
          stop_after: int | None = None) -> Path:
    """Run a federated training job; returns the run directory.

    stop_after: stop (as if killed) after this many rounds in this invocation — for tests/benchmarks.
    """
    cfg = load_config(config_path)
    if device:
        cfg = parse_config({**cfg.model_dump(mode="json"), "engine": {**cfg.engine.model_dump(), "device": device}})
    run_dir = Path(run_dir or Path("runs") / cfg.name)
    if run_dir.exists() and any(run_dir.iterdir()):
        if resume:
            old = load_config(run_dir / "config.yaml")
            if old.model_dump(exclude={"engine"}) != cfg.model_dump(exclude={"engine"}):
                raise ManifestError(f"{run_dir}: --resume with a config that differs from the run's config.yaml")
        elif overwrite:
            shutil.rmtree(run_dir)
        else:
            raise FedrecError(f"{run_dir}: run directory exists; use --resume to continue or --overwrite to replace")
    run_dir.mkdir(parents=True, exist_ok=True)
    data, split = prepare_data(cfg)
    if resume and (run_dir / "split.json").exists():
        split = load_split(run_dir / "split", data)
        if _read_manifest(run_dir)["dataset_checksum"] != data.checksum():
            raise ManifestError(f"{run_dir}: the dataset changed since this run started (checksum differs)")
    else:
        save_split(split, run_dir / "split", data)
        write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        write_json(run_dir / "manifest.json", _manifest(cfg, data, split, "running"))
    content = None
    if cfg.content.enabled:
        if resume and (run_dir / CONTENT_FILE).exists():
            content = _load_content(run_dir, data)
        else:
            content = item_content(cfg, data, split, progress)
            save_arrays(run_dir / CONTENT_FILE, {"content": content})
    fed = build_federation(cfg, data, split, content=content)
    if resume:
        _load_checkpoint(run_dir, fed, cfg.prototypes.k if cfg.prototypes.enabled else None)
        log.info("resuming %s after round %d", run_dir, fed.round)
    run = Run(run_dir, cfg, data, split, fed)
    _train_loop(run, progress, stop_after)
    return run_dir


class InProcessSource:
    """The in-process engine as the run loop's round source (federation.runs.loop)."""

    checkpoint_every: int

    def __init__(self, run: Run):
        self.run, self.fed, self.cfg = run, run.fed, run.cfg
        self.label = run.cfg.name
        self.checkpoint_every = run.cfg.output.checkpoint_every
        self.metric = "rmse" if run.cfg.model.mode == "explicit" else f"ndcg@{run.cfg.eval.k[0]}"

    @property
    def round(self) -> int:
        return self.fed.round

    def run_round(self) -> dict:
        return self.fed.run_round().as_dict()

    def evaluate(self, part: str) -> dict[str, float]:
        c = self.cfg
        return evaluate_model(self.run.model(), self.run.data, self.run.split, part, c.model.mode, c.eval.k)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return self.fed.state_tensors()

    def has_prototypes(self) -> bool:
        return self.fed.prototypes is not None

    def fit_prototypes(self, progress: bool) -> dict:
        return _fit_prototypes(self.run, progress)

    def privacy_summary(self) -> dict:
        dp = self.fed.cfg.dp
        if dp is None:
            return {}
        return {"epsilon": epsilon(dp.noise_multiplier, self.cfg.federation.fraction, self.fed.round, dp.delta),
                "delta": dp.delta}


def _train_loop(run: Run, progress: bool, stop_after: int | None) -> None:
    c = run.cfg
    run_rounds(run.dir, InProcessSource(run), c.federation.rounds, c.eval.every, c.eval.split, c.prototypes.enabled,
               progress, stop_after)


def _fit_prototypes(run: Run, progress: bool) -> dict:
    """Fit the federated prototypes of a finished run (every active client takes part in each round)
    and record what the rounds cost; returns that record."""
    from recsys.progress import progress_bar

    cfg, fed = run.cfg, run.fed
    st_ = prototype_settings(cfg)
    n_rounds = rounds_needed(st_)
    bar = progress_bar(total=n_rounds, desc=f"{cfg.name} prototypes", unit="round", disable=not progress,
                       dynamic_ncols=True)
    info = {"k": st_.k, "blend": st_.blend, "rounds": 0, "clients": int(len(fed.active_users)),
            "bytes_up": 0, "bytes_down": 0}

    def on_round(rnd, C, stats):
        K, H = C.shape
        n = float(stats.counts.sum())
        info["rounds"] = rnd
        info["bytes_up"] += int(n) * 4 * K * (H + 2)        # sums (K, H) + counts (K,) + sq (K,), float32
        info["bytes_down"] += int(n) * 4 * K * H            # the broadcast centroids
        bar.update(1)

    C = fed.fit_prototypes(st_, on_round)
    bar.close()
    sizes = fed.prototype_stats(C).counts
    info["sizes"] = [int(v) for v in sizes.cpu().tolist()]
    log.info("prototypes: %d over %d clients in %d rounds, %.1f MB up", st_.k, info["clients"], info["rounds"],
             info["bytes_up"] / 1e6)
    return info


def load_run(run_dir: str | Path, device: str = "cpu") -> Run:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FedrecError(f"{run_dir}: no such run directory")
    manifest = _read_manifest(run_dir)
    cfg = load_config(run_dir / "config.yaml")
    cfg = parse_config({**cfg.model_dump(mode="json"), "engine": {**cfg.engine.model_dump(), "device": device}})
    data = load_dataset(cfg.data.path, cfg.data.format, cfg.data.columns or None, duplicates=cfg.data.duplicates)
    if manifest["dataset_checksum"] != data.checksum():
        raise ManifestError(f"{run_dir}: dataset at {cfg.data.path} differs from the one this run was trained on")
    split = load_split(run_dir / "split", data)
    content = _load_content(run_dir, data) if cfg.content.enabled else None
    fed = build_federation(cfg, data, split, content=content)
    if not (run_dir / "checkpoint.safetensors").exists():
        raise ManifestError(f"{run_dir}: no checkpoint yet (the run has not completed a checkpointed round)")
    _load_checkpoint(run_dir, fed, cfg.prototypes.k if cfg.prototypes.enabled else None)
    return Run(run_dir, cfg, data, split, fed)


def evaluate_run(run_dir: str | Path, split: str = "test", device: str = "cpu") -> dict:
    run = load_run(run_dir, device)
    return evaluate_model(run.model(), run.data, run.split, split, run.cfg.model.mode, run.cfg.eval.k)


def recommend_for(run_dir: str | Path, user: str, k: int = 10, device: str = "cpu") -> list[dict]:
    run = load_run(run_dir, device)
    u = run.data.user_index(user)
    seen = run.split.matrix(run.data, "train")
    ids, scores = run.model().recommend(np.array([u]), k, exclude=seen)
    return [{"rank": r + 1, "item_id": str(run.data.item_ids[i]), "title": run.data.title(i), "score": float(s)}
            for r, (i, s) in enumerate(zip(ids[0], scores[0])) if math.isfinite(s)]
