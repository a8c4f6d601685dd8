"""Run directories of the ranking stage. A federated EASE run is one release: it is written whole
(atomic_dir) or not at all, so there is nothing to resume.

    RUN/config.yaml  manifest.json (kind "ease", dataset + split checksums, library versions)
    RUN/split.{json,safetensors}   RUN/ease.safetensors (B, or idx/val of the top-k rows)
    RUN/summary.json (valid and test metrics, bytes, epsilon, seconds)
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import yaml

from federation.ranking.config import EaseJobConfig, parse_ease_config
from federation.runs.config import read_yaml
from federation.ranking.ease import EaseModel, EaseSettings, federated_gram, solve
from recsys.data import InteractionData
from recsys.errors import FedrecError, ManifestError
from recsys.evaluation import evaluate_model
from recsys.io import atomic_dir, library_versions, load_arrays, save_arrays, write_json, write_text
from recsys.loaders import load_dataset
from recsys.models.base import Recommender
from recsys.splits import Split, load_split, make_split, save_split

log = logging.getLogger(__name__)
EASE_FORMAT = 1
EASE_FILE = "ease.safetensors"


def split_checksum(split: Split) -> str:
    """Identifies a split's assignment of entries to parts (two runs rank the same users only if equal)."""
    h = hashlib.sha256(np.ascontiguousarray(split.parts).tobytes())
    h.update(np.ascontiguousarray(split.cold_items).tobytes())
    return h.hexdigest()


class EaseRecommender(Recommender):
    """Scores s = x B with the histories ``X`` (U, N) and the weights the clients received."""

    name = "fedease"

    def __init__(self, model: EaseModel, X: sp.csr_matrix):
        self.model, self.X = model, (X != 0).astype(np.float32).tocsr()
        self.W = model.matrix()

    def fit(self, train, valid=None):
        return self

    def score(self, users: np.ndarray) -> np.ndarray:
        out = self.X[users] @ self.W
        return np.asarray(out.toarray() if sp.issparse(out) else out, dtype=np.float32)


def settings(cfg: EaseJobConfig, n_users: int) -> EaseSettings:
    p, e = cfg.privacy, cfg.ease
    sigma = p.noise_multiplier or 1.0
    if p.dp and p.target_epsilon is not None:
        from federation.privacy.dp import noise_for_epsilon

        sigma = noise_for_epsilon(p.target_epsilon, 1.0, 1, p.delta)
    return EaseSettings(lam=e.lam, share=e.share, dense_max=e.dense_max, neighbours=e.neighbours,
                        secure=p.secure_aggregation, frac_bits=p.frac_bits, dp=p.dp, clip=p.clip,
                        noise_multiplier=sigma, delta=p.delta, noise_seed=p.noise_seed)


@dataclass
class EaseRun:
    dir: Path
    cfg: EaseJobConfig
    data: InteractionData
    split: Split
    model: EaseModel

    @property
    def train(self) -> sp.csr_matrix:
        return self.split.matrix(self.data, "train")

    def recommender(self) -> EaseRecommender:
        return EaseRecommender(self.model, self.train)


def train_ease(config_path: str | Path, run_dir: str | Path | None = None, overwrite: bool = False) -> Path:
    """Fit federated EASE as configured and write its run directory; returns it."""
    cfg = parse_ease_config(read_yaml(config_path), str(config_path))
    run_dir = Path(run_dir or Path("runs") / cfg.name)
    if run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
        raise FedrecError(f"{run_dir}: run directory exists; use --overwrite to replace it")
    data = load_dataset(cfg.data.path, cfg.data.format, cfg.data.columns or None, duplicates=cfg.data.duplicates)
    split = make_split(data, cfg.split.kind, cfg.split.seed, cfg.split.ratios, cfg.split.cold_fraction)
    train = split.matrix(data, "train")
    s = settings(cfg, data.n_users)
    t0 = time.perf_counter()
    g = federated_gram(train, s)
    model = solve(g.G, s)
    fit_s = time.perf_counter() - t0
    rec = EaseRecommender(model, train)
    metrics = {part: evaluate_model(rec, data, split, part, "implicit", cfg.eval.k) for part in ("valid", "test")}
    summary = {"metrics": metrics, "upload_bytes": g.upload_bytes, "download_bytes_per_client": model.download_bytes,
               "epsilon": g.epsilon, "delta": s.delta if s.dp else None, "noise_multiplier": s.noise_multiplier if s.dp else None,
               "shared_as": "dense" if model.B is not None else f"top-{s.neighbours} neighbours", "fit_s": round(fit_s, 3)}
    with atomic_dir(run_dir) as tmp:
        save_split(split, tmp / "split", data)
        write_text(tmp / "config.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        save_arrays(tmp / EASE_FILE, model.arrays(), {"n_items": str(data.n_items)})
        write_json(tmp / "summary.json", summary)
        write_json(tmp / "manifest.json", {
            "format": EASE_FORMAT, "kind": "ease", "name": cfg.name, "status": "done",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "dataset": data.summary(),
            "dataset_checksum": data.checksum(), "split_checksum": split_checksum(split),
            "split_counts": split.counts(), "versions": library_versions()})
    log.info("federated EASE: %s", run_dir)
    return run_dir


def run_kind(run_dir: str | Path) -> str:
    """'ease', 'ranker' or 'federation' (the autoencoder jobs) from a run directory's manifest."""
    p = Path(run_dir) / "manifest.json"
    if not p.exists():
        raise ManifestError(f"{run_dir}: not a run directory (no manifest.json)")
    try:
        return json.loads(p.read_text()).get("kind", "federation")
    except json.JSONDecodeError:
        raise ManifestError(f"{p}: corrupt manifest (not JSON)") from None


def load_ease(run_dir: str | Path) -> EaseRun:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FedrecError(f"{run_dir}: no such run directory")
    if run_kind(run_dir) != "ease":
        raise ManifestError(f"{run_dir}: not a federated EASE run")
    m = json.loads((run_dir / "manifest.json").read_text())
    if m.get("format") != EASE_FORMAT:
        raise ManifestError(f"{run_dir}: EASE run format {m.get('format')} is not supported (expected {EASE_FORMAT})")
    cfg = parse_ease_config(read_yaml(run_dir / "config.yaml"), str(run_dir / "config.yaml"))
    data = load_dataset(cfg.data.path, cfg.data.format, cfg.data.columns or None, duplicates=cfg.data.duplicates)
    if m["dataset_checksum"] != data.checksum():
        raise ManifestError(f"{run_dir}: dataset at {cfg.data.path} differs from the one this run was fitted on")
    split = load_split(run_dir / "split", data)
    arrays = load_arrays(run_dir / EASE_FILE)
    shape_ok = ("B" in arrays and arrays["B"].shape == (data.n_items, data.n_items)) or \
               ("idx" in arrays and len(arrays["idx"]) == data.n_items)
    if not shape_ok:
        raise ManifestError(f"{run_dir / EASE_FILE}: weights do not match the catalogue ({data.n_items} items)")
    return EaseRun(run_dir, cfg, data, split, EaseModel.from_arrays(arrays, data.n_items))


def evaluate_any(run_dir: str | Path, split: str = "test", device: str = "cpu") -> dict:
    """Evaluate a run directory of any kind on ``split``."""
    if Path(run_dir).is_dir() and run_kind(run_dir) == "ease":
        r = load_ease(run_dir)
        return evaluate_model(r.recommender(), r.data, r.split, split, "implicit", r.cfg.eval.k)
    from federation.runs.jobs import evaluate_run

    return evaluate_run(run_dir, split, device)
