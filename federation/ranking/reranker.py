"""The re-ranker job (`fedrec rank train`) and serving a re-ranked list.

    RUN/config.yaml  manifest.json (kind "ranker", dataset + split checksums, the source runs with their
    manifests' hashes, the feature names)  RUN/ranker.txt (LightGBM text model)
    RUN/summary.json (test metrics of each source alone, the candidate union without and with the
    re-ranker, candidate recall, the boosting history, bytes, seconds)
"""
from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from federation.ranking.boosting import BoostSettings, train as boost
from federation.ranking.config import RankerJobConfig, parse_ranker_config
from federation.ranking.pipeline import (Sources, batch, examples, load_sources, manifest_sha, names_for,
                                         node_holders, topk_from_candidates)
from federation.runs.config import read_yaml
from recsys.errors import FedrecError, ManifestError
from recsys.io import atomic_dir, library_versions, write_json, write_text
from recsys.metrics import ranking_metrics, topk_from_scores

log = logging.getLogger(__name__)
RANKER_FORMAT = 1
RANKER_FILE = "ranker.txt"
RRF_K = 60.0


def boost_settings(cfg: RankerJobConfig) -> BoostSettings:
    t = cfg.training
    return BoostSettings(scheme=t.scheme, rounds=t.rounds, trees_per_round=t.trees_per_round,
                         learning_rate=t.learning_rate, num_leaves=t.num_leaves, min_data_in_leaf=t.min_data_in_leaf,
                         feature_fraction=t.feature_fraction, patience=t.patience, seed=t.seed)


def _rrf(b, names: list[str], sources: tuple[str, ...]) -> np.ndarray:
    """Reciprocal-rank fusion of the sources over each candidate: Σ_s 1/(60 + rank_s) (P,)."""
    cols = [names.index(f"{s}_rank") for s in sources]
    return (1.0 / (RRF_K + np.expm1(b.X[:, cols]))).sum(1)


def evaluate_pipeline(src: Sources, booster, names: list[str], n: int, ks=(10, 20)) -> dict:
    """Test metrics: each source alone (full ranking), the candidate union by RRF, the re-ranker;
    plus the candidate union's recall of the test items."""
    truth = src.split.matrix(src.data, "test").tocsr()
    users = np.flatnonzero(np.diff(truth.indptr) > 0)
    kmax = max(ks)
    tops = {s: [] for s in src.names}
    tops["union (RRF, no re-ranker)"] = []
    tops["union + re-ranker"] = []
    hit = tot = 0
    for b in examples(src, users, "test", n):
        for s in src.names:
            tops[s].append(topk_from_scores(b.scores[s].copy(), kmax)[0])
        tops["union (RRF, no re-ranker)"].append(topk_from_candidates(b, _rrf(b, names, src.names), kmax))
        if booster is not None:
            tops["union + re-ranker"].append(topk_from_candidates(b, booster.predict(b.X), kmax))
        hit += int(b.y.sum())
        tot += int(truth[b.users].nnz)
    out = {name: ranking_metrics(np.concatenate(t), truth, users, ks) for name, t in tops.items() if t}
    return {"rows": out, "candidate_recall": hit / max(tot, 1), "users": int(len(users))}


def train_ranker(config_path: str | Path, run_dir: str | Path | None = None, overwrite: bool = False,
                 progress: bool = True) -> Path:
    import lightgbm as lgb

    cfg = parse_ranker_config(read_yaml(config_path), str(config_path))
    run_dir = Path(run_dir or Path("runs") / cfg.name)
    if run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
        raise FedrecError(f"{run_dir}: run directory exists; use --overwrite to replace it")
    t0 = time.perf_counter()
    src = load_sources(cfg, progress)
    names = names_for(src)
    n = cfg.candidates.per_source
    holders, valid = node_holders(src, n, cfg.training.nodes, cfg.training.valid_users, cfg.training.seed)
    t1 = time.perf_counter()
    res = boost(holders, valid, boost_settings(cfg), names, progress)
    t2 = time.perf_counter()
    booster = lgb.Booster(model_str=res.model)
    ev = evaluate_pipeline(src, booster, names, n, tuple(cfg.eval.k))
    summary = {"test": ev, "best_round": res.best_round, "history": res.history, "upload_bytes": res.upload_bytes,
               "model_bytes": len(res.model.encode()), "features_s": round(t1 - t0, 2), "boost_s": round(t2 - t1, 2),
               "examples": int(sum(len(h) for h in holders)), "valid_examples": int(sum(len(h) for h in valid))}
    return write_ranker_run(run_dir, cfg, res.model, summary, src.data.checksum(), _split_sum(src), list(src.names),
                            names)


def write_ranker_run(run_dir: Path, cfg: RankerJobConfig, model: str, summary: dict, dataset_checksum: str,
                     split_sum: str, source_names: list[str], names: list[str]) -> Path:
    """The run directory of a re-ranker, whole or not at all (in process and deployed alike)."""
    runs = {k: v for k, v in (("personalfr", cfg.sources.personalfr), ("ease", cfg.sources.ease)) if v}
    with atomic_dir(run_dir) as tmp:
        write_text(tmp / "config.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        write_text(tmp / RANKER_FILE, model)
        write_json(tmp / "summary.json", summary)
        write_json(tmp / "manifest.json", {
            "format": RANKER_FORMAT, "kind": "ranker", "name": cfg.name, "status": "done",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "dataset_checksum": dataset_checksum,
            "split_checksum": split_sum, "sources": {k: {"run": v, "manifest_sha256": manifest_sha(v)}
                                                     for k, v in runs.items()},
            "source_names": source_names, "feature_names": names,
            "candidates_per_source": cfg.candidates.per_source, "versions": library_versions()})
    log.info("re-ranker: %s", run_dir)
    return run_dir


def _split_sum(src: Sources) -> str:
    from federation.ranking.jobs import split_checksum

    return split_checksum(src.split)


@contextmanager
def one_thread():
    """torch on one thread for a one-user request: waking the intra-op pool for a (1, N) product costs
    more than it saves, and its wake-ups put 40-90 ms outliers into the request latency."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@dataclass
class Ranker:
    dir: Path
    cfg: RankerJobConfig
    manifest: dict
    src: Sources
    booster: object

    @property
    def tail(self) -> np.ndarray:
        """(N,) 1 for items outside the catalogue's most popular 20% (palette.item_values)."""
        if "_tail" not in self.__dict__:
            from recsys.ranking.palette import item_values

            self._tail = item_values(np.expm1(self.src.pop), self.src.data.n_users, None, None, None)["tail"]
        return self._tail

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Ranker scores (P,) of feature rows (P, F); one thread (a request is ~100 rows)."""
        return self.booster.predict(X, num_threads=1) if len(X) else np.zeros(0)

    def top(self, user: int, k: int, part: str = "test") -> tuple[np.ndarray, np.ndarray, object]:
        """(items (k,), ranker scores (k,), the user's Batch) for row ``user``; items not seen before ``part``."""
        with one_thread():
            b = batch(self.src, np.array([user]), part, self.manifest["candidates_per_source"])
        pred = self.predict(b.X)
        order = np.argsort(-pred, kind="stable")[:k]
        return b.cands.items[order], pred[order], b


def load_ranker(ranker_dir: str | Path, run_dir: str | Path | None = None) -> Ranker:
    """Load a re-ranker; refuse it when its sources changed since training, when ``run_dir`` is not
    one of its sources, or when its features are not the ones this code computes."""
    import lightgbm as lgb

    d = Path(ranker_dir)
    mp = d / "manifest.json"
    if not mp.exists():
        raise ManifestError(f"{d}: not a run directory (no manifest.json)")
    m = json.loads(mp.read_text())
    if m.get("kind") != "ranker":
        raise ManifestError(f"{d}: not a re-ranker run (kind {m.get('kind', 'federation')!r})")
    if m.get("format") != RANKER_FORMAT:
        raise ManifestError(f"{d}: ranker format {m.get('format')} is not supported (expected {RANKER_FORMAT})")
    for name, s in m["sources"].items():
        if not (Path(s["run"]) / "manifest.json").exists() or manifest_sha(s["run"]) != s["manifest_sha256"]:
            raise ManifestError(f"{d}: its {name} source {s['run']} is missing or was retrained since the ranker was trained")
    if run_dir is not None and Path(run_dir).resolve() not in {Path(s["run"]).resolve() for s in m["sources"].values()}:
        raise ManifestError(f"{d}: trained on other runs ({', '.join(s['run'] for s in m['sources'].values())}), not {run_dir}")
    cfg = parse_ranker_config(read_yaml(d / "config.yaml"), str(d / "config.yaml"))
    src = load_sources(cfg)
    if names_for(src) != m["feature_names"]:
        raise ManifestError(f"{d}: trained on other features than this version computes")
    booster = lgb.Booster(model_file=str(d / RANKER_FILE))
    if booster.feature_name() != m["feature_names"]:
        raise ManifestError(f"{d / RANKER_FILE}: model features differ from the manifest's")
    return Ranker(d, cfg, m, src, booster)


@dataclass
class PaletteReport:
    items: np.ndarray          # (k,) item rows, best first
    scores: np.ndarray         # (k,) the ranker's scores
    lam: dict                  # value -> λ
    asked: dict                # value -> target
    expected: dict             # value -> E_{p_λ}[r] over the candidates
    achieved: dict             # value -> mean over the list
    feasible: bool


def candidate_values(r: Ranker, user: int, items: np.ndarray, query: np.ndarray | None) -> dict[str, np.ndarray]:
    """The palette's values of one user's candidate ``items`` (C,): name -> (C,)."""
    from recsys.ranking.palette import item_values

    src = r.src
    profile = None
    if src.content is not None:
        h = src.train[user].indices
        profile = src.content[h].mean(0) if len(h) else None
    content = src.content[items] if src.content is not None else None
    v = item_values(np.expm1(src.pop[items]), src.data.n_users, content, profile, query)
    v["tail"] = r.tail[items]                      # the head is the catalogue's, not the candidates'
    return v


def recommend_aligned(r: Ranker, user: int, k: int, targets: dict[str, float], query: np.ndarray | None = None,
                      part: str = "test") -> PaletteReport:
    """The re-ranked top-k for row ``user``; with targets, MAP-aligned over the user's candidates."""
    from recsys.ranking.palette import align, list_lambda, log_softmax, ranked, temperature_for_perplexity

    with one_thread():
        b = batch(r.src, np.array([user]), part, r.manifest["candidates_per_source"])
    s = r.predict(b.X)
    vals = candidate_values(r, user, b.cands.items, query)
    missing = [t for t in targets if t not in vals]
    if missing:
        why = "needs item content (sources.content in the ranker config)" if r.src.content is None else "needs --query"
        raise FedrecError(f"--target {missing[0]}: {why}")
    names = list(targets)
    R = np.stack([vals[t] for t in names], 1) if names else np.zeros((len(s), 0))
    c = np.array([targets[t] for t in names])
    logp0 = log_softmax(s, temperature_for_perplexity(s, k))
    if names:
        a = align(logp0, R, c)
        lam, expected, ok = list_lambda(logp0, R, c, a.lam, k), a.expected, a.feasible
    else:
        lam, expected, ok = np.zeros(0), np.zeros(0), True
    top = ranked(logp0, R, lam, k)
    return PaletteReport(b.cands.items[top], s[top], dict(zip(names, lam.tolist())), dict(zip(names, c.tolist())),
                         dict(zip(names, expected.tolist())),
                         {t: float(vals[t][top].mean()) for t in names}, ok)


def query_vector(r: Ranker, text: str) -> np.ndarray:
    """A query text in the ranker's content space: (D,)."""
    from recsys.features import ClipSpec, make_extractor

    if r.src.content is None:
        raise FedrecError("--query: this ranker has no item content (sources.content is off)")
    c = r.cfg.content
    return make_extractor(ClipSpec(c.backend, c.model, c.pretrained, c.fusion)).encode_text([text], False)[0]
