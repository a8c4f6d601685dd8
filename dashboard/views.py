"""What the dashboard pages show, computed without Streamlit (so it is testable and reusable).

Everything here only reads run and index directories; nothing writes into them.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.evaluation import is_count, metric_values

log = logging.getLogger(__name__)


@dataclass
class RunInfo:
    path: Path
    name: str
    status: str
    mode: str | None
    strategy: str | None
    rounds: int | None
    final: dict
    problem: str | None = None       # why the run cannot be opened, if it cannot
    privacy: str = ""                # one line: how the run protected its clients (privacy_line)
    dataset: str = ""                # the dataset's name (manifest), e.g. ml-100k

    @property
    def label(self) -> str:
        """What the sidebar's run picker shows: name · dataset · mode · strategy."""
        return " · ".join(x for x in (self.name, self.dataset, self.mode, self.strategy) if x)


def preferred_run(runs: list[RunInfo], mode: str | None) -> int:
    """Position of the first run trained in ``mode`` (e.g. "implicit": a ranker), else 0."""
    return next((i for i, r in enumerate(runs) if mode is not None and r.mode == mode), 0)


def headline_first(columns: list[str]) -> list[str]:
    """Metric columns with the headline ones first: RMSE (ratings), then NDCG (ranking), then the rest
    in their order."""
    def rank(c: str) -> int:
        return 0 if "rmse" in c else 1 if "ndcg" in c else 2
    return sorted(columns, key=rank)          # stable: the rest keep their order


def metric_columns(columns) -> list[str]:
    """The per-round metric columns of metrics.jsonl (valid_* / test_*, counts left out), headline first."""
    out = []
    for c in columns:
        part, _, key = str(c).partition("_")
        if part in ("valid", "test") and key and not is_count(key):
            out.append(str(c))
    return headline_first(out)


def run_table(runs: list[RunInfo]) -> pd.DataFrame:
    """One row per run: name, status, mode, strategy, rounds, its final test metrics (headline first),
    and why it cannot be opened, if it cannot."""
    df = pd.DataFrame([{"run": r.name, "dataset": r.dataset, "status": r.status, "mode": r.mode or "",
                        "strategy": r.strategy or "", "rounds": r.rounds, **r.final} for r in runs])
    fixed = ["run", "dataset", "status", "mode", "strategy", "rounds"]
    metrics = headline_first([c for c in df.columns if c not in fixed])
    metrics = [c for c in metrics if df[c].notna().any()]           # a column nobody has is left out
    df = df[fixed + metrics].assign(problem=[r.problem or "" for r in runs])
    # Text cells, blank where a run has no value (a broken run, a metric another mode reports).
    df["rounds"] = [f"{int(v)}" if pd.notna(v) else "" for v in df["rounds"]]
    for c in metrics:
        df[c] = [f"{v:.4f}" if pd.notna(v) else "" for v in df[c]]
    return df


def list_runs(runs_dir: Path) -> list[RunInfo]:
    """Every directory under runs_dir that looks like a run; broken ones carry a ``problem``."""
    out = []
    if not runs_dir.is_dir():
        return out
    for d in sorted(p for p in runs_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not (d / "manifest.json").exists():
            continue
        info = RunInfo(d, d.name, "unknown", None, None, None, {})
        try:
            m = json.loads((d / "manifest.json").read_text())
            if m.get("kind", "federation") != "federation":      # EASE and re-ranker runs: list_rankers
                continue
            info.status = m.get("status", "unknown")
            info.dataset = str((m.get("dataset") or {}).get("name", "")) if isinstance(m.get("dataset"), dict) else ""
            if m.get("format") != 1:
                info.problem = f"run format {m.get('format')!r} is not supported by this fedrec (expects 1)"
                out.append(info)
                continue
            import yaml
            cfg = yaml.safe_load((d / "config.yaml").read_text())
            info.mode, info.strategy = cfg["model"]["mode"], cfg["federation"]["strategy"]
            info.rounds = cfg["federation"]["rounds"]
            s = json.loads((d / "summary.json").read_text()) if (d / "summary.json").exists() else {}
            if s:
                info.final = {f"test_{k}": v for k, v in metric_values(s.get("test", {})).items()}
            info.privacy = privacy_line(cfg, s)
            if not (d / "checkpoint.safetensors").exists():
                info.problem = info.problem or "no checkpoint yet"
        except (OSError, ValueError, KeyError, TypeError) as e:
            info.problem = f"unreadable run files ({type(e).__name__}: {e})"
        out.append(info)
    return out


def privacy_line(cfg: dict, summary: dict) -> str:
    """How a run protected its clients, in one line (docs/privacy.md): secure aggregation or plain
    messages, and the epsilon spent when differential privacy was on."""
    p = cfg.get("privacy") or {}
    if cfg.get("federation", {}).get("strategy") in ("local", "fedavg"):
        head = ("local: nothing leaves a client" if cfg["federation"]["strategy"] == "local"
                else "fedavg: every client sent its whole model in the clear")
    elif p.get("secure_aggregation"):
        head = (f"secure aggregation: the server saw only per-round sums over at least "
                f"{p.get('min_clients', 5)} clients")
    else:
        head = "plain messages: the server saw each sampled client's item ids and rows"
    if p.get("dp"):
        eps = summary.get("epsilon")
        head += (f" · differential privacy, epsilon {eps:.2f} at delta {summary.get('delta', p.get('delta', 1e-4)):g}"
                 if eps is not None else " · differential privacy (epsilon when the run finishes)")
    return head


def read_metrics(path: Path) -> tuple[pd.DataFrame, int]:
    """Per-round metrics; lines that are torn or not JSON are skipped and counted."""
    rows, bad = [], 0
    if not path.exists():
        return pd.DataFrame(), 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
            if isinstance(rec, dict) and "round" in rec:
                rows.append(rec)
            else:
                bad += 1
        except json.JSONDecodeError:
            bad += 1
    return pd.DataFrame(rows), bad


def image_of(data, item: int) -> str:
    """Absolute path of an item's image ("" when it has none); relative paths are under the dataset root."""
    p = str(data.items["image_path"].iloc[item] or "")
    if not p or p == "nan":
        return ""
    path = Path(p)
    return str(path if path.is_absolute() else Path(data.extra.get("root", ".")) / path)


def history_table(run, user: int) -> pd.DataFrame:
    row = run.train[user]
    items, ratings = row.indices, row.data
    order = np.argsort(-ratings, kind="stable")
    return pd.DataFrame({"item": [str(run.data.item_ids[i]) for i in items[order]],
                         "title": [run.data.title(int(i)) for i in items[order]],
                         "rating": ratings[order],
                         "image": [image_of(run.data, int(i)) for i in items[order]]})


def score_label(mode: str, rating_range: tuple[float, float]) -> str:
    """The column name of a list's score: a predicted rating on the data's scale, or the strength of an
    implicit (ranking) score."""
    lo, hi = rating_range
    return f"predicted rating ({lo:g}–{hi:g})" if mode == "explicit" else "strength"


SCORE_HELP = {"explicit": "The rating the model predicts this user would give, clipped to the rating scale.",
              "implicit": "Not a rating: the share of the catalogue this item outranks for this user "
                          "(100 = above every other item). Rank is what the model decides; strength says "
                          "how far ahead of the catalogue it is."}


def readable_scores(mode: str, scores: np.ndarray, all_scores: np.ndarray,
                    rating_range: tuple[float, float]) -> np.ndarray:
    """(k,) scores as a user reads them: explicit -> clipped to the rating scale; implicit -> the
    percentage of the catalogue's (n,) scores below each one (0-100)."""
    if mode == "explicit":
        return np.clip(scores, *rating_range).round(2)
    ref = np.sort(all_scores[np.isfinite(all_scores)])
    return (100.0 * np.searchsorted(ref, scores, side="left") / max(len(ref) - 1, 1)).clip(0, 100).round(1)


def cold_items(run) -> np.ndarray:
    """(c,) indices of the catalogue's items with no training interaction (new items)."""
    return np.flatnonzero(np.diff(run.train.tocsc().indptr) == 0)


def recommendations(run, user: int, k: int, exclude_seen: bool, item_vecs: np.ndarray,
                    among: np.ndarray | None = None) -> pd.DataFrame:
    """Top-k with a readable score (score_label), cold-start flag and a one-line explanation: the
    history item (never the item itself) whose decoder row is most similar to the recommended item's
    (the model's own notion of "similar"). ``among``: rank only these item indices (e.g. cold_items:
    new items are ranked among themselves, as the cold-item evaluation does)."""
    all_scores = run.model().score(np.array([user]))[0].astype(np.float64)           # (n_items,), scored once
    hist = run.train[user]
    s = all_scores.copy()
    if among is not None:
        s = np.full_like(all_scores, -np.inf)
        s[among] = all_scores[among]
    if exclude_seen:
        s[hist.indices] = -np.inf
    ids = np.argsort(-s, kind="stable")[:k]
    scores = s[ids]
    keep = np.isfinite(scores)
    ids, scores = ids[keep], scores[keep]
    counts = np.diff(run.train.tocsc().indptr)
    mode = run.cfg.model.mode
    expl = closest_in_history(run, user, ids, item_vecs) if hist.nnz else ["popular with similar users"] * len(ids)
    r = run.data.ratings.data
    rating_range = (float(r.min()), float(r.max()))
    seen = set(hist.indices.tolist())
    return pd.DataFrame({"rank": np.arange(1, len(ids) + 1), "item": [str(run.data.item_ids[i]) for i in ids],
                         "title": [run.data.title(int(i)) for i in ids],
                         score_label(mode, rating_range): readable_scores(mode, scores, all_scores, rating_range),
                         "cold start": ["no interactions yet" if counts[i] == 0 else "" for i in ids],
                         "seen": ["seen" if int(i) in seen else "" for i in ids],
                         "image": [image_of(run.data, int(i)) for i in ids],
                         "why": expl})


def per_user_metric(run, part: str = "valid") -> pd.DataFrame:
    """Per-client quality on a split: RMSE (explicit) or NDCG@10 (implicit), with history size."""
    from recsys.metrics import ranking_metrics

    model = run.model()
    M = run.split.matrix(run.data, part).tocsr()
    users = np.flatnonzero(np.diff(M.indptr) > 0)
    n_hist = np.diff(run.train.indptr)[users]
    if run.cfg.model.mode == "explicit":
        coo = M[users].tocoo()
        pred = model.predict(users[coo.row], coo.col)
        err = np.zeros(len(users))
        np.add.at(err, coo.row, (pred - coo.data) ** 2)
        val = np.sqrt(err / np.diff(M[users].indptr))
        name = "rmse"
    else:
        ids, _ = model.recommend(users, 10, exclude=run.train)
        val = np.array([ranking_metrics(ids[j:j + 1], M, np.array([u]), (10,))["ndcg@10"] for j, u in enumerate(users)])
        name = "ndcg@10"
    return pd.DataFrame({"user": [str(run.data.user_ids[u]) for u in users], "history": n_hist.astype(np.int64),
                         name: val})


def histogram(values, bins: int = 20) -> pd.DataFrame:
    """(bins,) rows: the real edges of each bin (start, end) and how many values fall in it, for a
    chart whose x axis reads in the values' unit (not bin numbers)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return pd.DataFrame({"start": [], "end": [], "clients": []})
    counts, edges = np.histogram(v, bins=bins)
    return pd.DataFrame({"start": edges[:-1], "end": edges[1:], "clients": counts})


def served_worst(per: pd.DataFrame, n: int = 10) -> tuple[pd.DataFrame, str]:
    """The n clients served worst (by the table's metric, the last column) and a sentence that says
    how many share the worst value when more than n do (then the n shown are those with the most
    history, the most surprising to be served badly)."""
    metric = per.columns[-1]
    worst_first = per.sort_values([metric, "history"], ascending=[metric != "rmse", False], kind="stable")
    floor = worst_first[metric].iloc[0] if len(per) else np.nan
    tied = int((per[metric] == floor).sum()) if len(per) else 0
    note = ""
    if tied > n:
        note = (f"{tied:,} of {len(per):,} clients ({tied / len(per):.0%}) are at {metric} = {floor:g}; "
                f"shown: the {n} of them with the longest history.")
    return worst_first.head(n).reset_index(drop=True), note


PER_CLIENT_CACHE = "dashboard-cache"


def _checkpoint_key(run_dir: Path) -> str:
    """Identifies the model a cached evaluation was made from: the checksum its checkpoint was written
    with (federation.runs.loop; older runs: the one in checkpoint.json)."""
    from federation.runs.loop import CHECKPOINT_META, checkpoint_meta

    from recsys.errors import FedrecError

    try:
        meta = checkpoint_meta(run_dir) or {}
    except FedrecError:
        return ""
    if "sha256" in meta:
        return meta["sha256"]
    try:
        return str(json.loads((run_dir / CHECKPOINT_META).read_text()).get("sha256", ""))
    except (OSError, ValueError):
        return ""


def per_user_metric_cached(run, part: str = "valid") -> pd.DataFrame:
    """per_user_metric, kept in the run directory (dashboard-cache/per-client-PART.csv beside a JSON
    with the checkpoint it was computed from): the first visit computes it, later visits read it. A
    cache from another checkpoint, or one that cannot be read, is recomputed; the run's own files are
    never touched."""
    from recsys.io import write_json, write_text

    d = Path(run.dir) / PER_CLIENT_CACHE
    csv, meta = d / f"per-client-{part}.csv", d / f"per-client-{part}.json"
    key = _checkpoint_key(Path(run.dir))
    try:
        if key and json.loads(meta.read_text()).get("checkpoint") == key:
            df = pd.read_csv(csv, dtype={"user": str})
            if list(df.columns[:2]) == ["user", "history"] and len(df.columns) == 3:
                return df
    except (OSError, ValueError):
        pass
    df = per_user_metric(run, part)
    try:
        d.mkdir(exist_ok=True)
        write_text(csv, df.to_csv(index=False))
        write_json(meta, {"checkpoint": key, "part": part, "rows": len(df)})
    except OSError as e:                       # a read-only run directory: serve without caching
        log.warning("cannot cache the per-client evaluation in %s: %s", d, e)
    return df


def list_indices(root: Path) -> list[dict]:
    """Index directories below root with their manifests (unverified here; loading verifies)."""
    out = []
    if not root.is_dir():
        return out
    for mf in sorted(root.rglob("manifest.json")):
        d = mf.parent
        if not (d / "index.faiss").exists():
            continue
        try:
            m = json.loads(mf.read_text())
        except (OSError, json.JSONDecodeError):
            out.append({"path": str(d), "problem": "manifest is not valid JSON"})
            continue
        size = sum(f.stat().st_size for f in d.iterdir() if f.is_file())
        out.append({"path": str(d), "kind": m.get("kind"), "factory": m.get("factory"), "count": m.get("count"),
                    "dim": m.get("dim"), "recall@10": m.get("recall@10"), "size_MiB": round(size / 2 ** 20, 2),
                    "run": m.get("run"), "dataset_checksum": m.get("dataset_checksum"), "created": m.get("created")})
    return out


# Index kinds made from a user's data alone (not from a model): any run on the same data may use them.
DATA_INDEX_KINDS = ("summaries", "histories")


def index_for(indices: list[dict], kind: str, run: str, dataset_checksum=None) -> dict | None:
    """The index of ``kind`` built for run ``run``; for a data-only kind (DATA_INDEX_KINDS) without one,
    an index built on the same dataset by another run. ``dataset_checksum``: a value, or a callable
    giving it (only called when needed)."""
    exact = next((m for m in indices if m.get("kind") == kind and m.get("run") == run), None)
    if exact is not None or kind not in DATA_INDEX_KINDS or dataset_checksum is None:
        return exact
    want = dataset_checksum() if callable(dataset_checksum) else dataset_checksum
    return next((m for m in indices if m.get("kind") == kind and m.get("dataset_checksum") == want), None)


def personalization_gain(personal: pd.DataFrame, global_: pd.DataFrame) -> pd.DataFrame:
    """Per-client gain of one run over another on the same split, in the metric's "better" direction
    (positive = the first run serves this client better)."""
    metric = personal.columns[-1]
    if global_.columns[-1] != metric:
        raise ValueError(f"runs measure different metrics ({metric} vs {global_.columns[-1]})")
    m = personal.merge(global_[["user", metric]], on="user", suffixes=("", "_global"))
    sign = -1.0 if metric == "rmse" else 1.0
    m["gain"] = sign * (m[metric] - m[f"{metric}_global"])
    return m


def gain_by_activity(gain: pd.DataFrame) -> pd.DataFrame:
    """Who gains: the per-client gains grouped by history-size quarter (lightest first): clients,
    history range, mean gain, share served better / worse."""
    q = pd.qcut(gain["history"].rank(method="first"), 4, labels=["lightest 25%", "2nd 25%", "3rd 25%", "heaviest 25%"])
    g = gain.groupby(q, observed=True)
    return pd.DataFrame({
        "clients": g.size(),
        "history": g["history"].agg(lambda h: f"{h.min()}-{h.max()}"),
        "mean gain": g["gain"].mean().round(4),
        "better": g["gain"].agg(lambda x: f"{(x > 0).mean():.0%}"),
        "worse": g["gain"].agg(lambda x: f"{(x < 0).mean():.0%}"),
    }).reset_index(names="activity")


def biggest_changes(gain: pd.DataFrame, n: int = 10) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The n clients who gain most and the n who lose most (user, history, both runs' metric, gain)."""
    winners = gain[gain["gain"] > 0].nlargest(n, "gain")
    losers = gain[gain["gain"] < 0].nsmallest(n, "gain")
    return winners.reset_index(drop=True), losers.reset_index(drop=True)


def comparable_runs(runs: list[RunInfo], run) -> list[RunInfo]:
    """Other usable runs trained on the same dataset and split as ``run`` (same mode)."""
    out = []
    for r in runs:
        if r.problem or r.path.resolve() == run.dir.resolve() or r.mode != run.cfg.model.mode:
            continue
        try:
            m = json.loads((r.path / "manifest.json").read_text())
            mine = json.loads((run.dir / "manifest.json").read_text())
            same_split = (r.path / "split.json").read_text() == (run.dir / "split.json").read_text()
        except (OSError, ValueError):
            continue
        if m.get("dataset_checksum") == mine.get("dataset_checksum") and same_split:
            out.append(r)
    return out


# -- the ranking stage -----------------------------------------------------------------------------
def list_rankers(runs_dir: Path) -> list[dict]:
    """Re-ranker runs under runs_dir: name, path and the runs they were trained over."""
    out = []
    if not runs_dir.is_dir():
        return out
    for d in sorted(p for p in runs_dir.iterdir() if p.is_dir() and (p / "manifest.json").exists()):
        try:
            m = json.loads((d / "manifest.json").read_text())
        except (OSError, ValueError):
            continue
        if m.get("kind") == "ranker":
            out.append({"name": d.name, "path": d, "sources": {k: v["run"] for k, v in m.get("sources", {}).items()}})
    return out


def rankers_for(rankers: list[dict], run_dir: Path) -> list[dict]:
    """The re-rankers trained over ``run_dir`` (one of their sources)."""
    me = Path(run_dir).resolve()
    return [r for r in rankers if me in {Path(p).resolve() for p in r["sources"].values()}]


def reranked(ranker, user: int, k: int, targets: dict[str, float]) -> tuple[pd.DataFrame, pd.DataFrame, bool]:
    """The re-ranked (and, with targets, MAP-aligned) top-k of row ``user``: the list, a table of each
    target asked against what the list and the aligned distribution reach, and whether the targets
    are reachable together."""
    from federation.ranking.reranker import recommend_aligned

    rep = recommend_aligned(ranker, user, k, targets)
    data = ranker.src.data
    tail = ranker.tail
    recs = pd.DataFrame({"rank": np.arange(1, len(rep.items) + 1), "title": [data.title(int(i)) for i in rep.items],
                         "item": [str(data.item_ids[i]) for i in rep.items], "ranker score": np.round(rep.scores, 3),
                         "long tail": ["yes" if tail[i] else "" for i in rep.items]})
    report = pd.DataFrame([{"target": t, "asked": rep.asked[t], "list": round(rep.achieved[t], 3),
                            "aligned distribution": round(rep.expected[t], 3), "lambda": round(rep.lam[t], 2)}
                           for t in targets])
    return recs, report, rep.feasible


def palette_values(ranker) -> list[str]:
    """The list values this re-ranker can target (diversity needs item content)."""
    return ["tail", "novelty"] + (["diversity"] if ranker.src.content is not None else [])


def list_values(ranker, user: int, k: int) -> dict[str, float]:
    """What the re-ranker's own top-k reaches on each value (targets of 0 are met by it, λ = 0)."""
    from federation.ranking.reranker import recommend_aligned

    return recommend_aligned(ranker, user, k, {v: 0.0 for v in palette_values(ranker)}).achieved


# -- charts ------------------------------------------------------------------------------------------
# Per-round columns of metrics.jsonl a chart shows, with its axis title; bytes are shown in GB.
ROUND_SERIES = {"loss": "training loss (log scale)", "participants": "clients per round",
                "cum_bytes_up": "sent up so far (GB)", "cum_fedavg_bytes": "FedAvg would have sent (GB)"}
# One colour per run, the same on every chart: Tableau 10, in the order of the runs' names.
RUN_PALETTE = ["#4c78a8", "#f58518", "#e45756", "#72b7b2", "#54a24b", "#eeca3b", "#b279a2", "#ff9da6",
               "#9d755d", "#bab0ac"]


def run_colors(names: list[str]) -> dict[str, str]:
    """name -> colour, fixed by the sorted list of every run (so a run keeps its colour whatever is
    compared); more runs than colours cycle."""
    return {n: RUN_PALETTE[i % len(RUN_PALETTE)] for i, n in enumerate(sorted(set(names)))}


def series_title(col: str) -> str:
    """Axis title of a per-round column: units for bytes, 'valid_ndcg@10' -> 'NDCG@10 on valid'."""
    if col in ROUND_SERIES:
        return ROUND_SERIES[col]
    part, _, key = col.partition("_")
    return f"{key.upper() if key in ('rmse', 'mae') else key.replace('ndcg', 'NDCG').replace('recall', 'Recall')} on {part}"


def series_frame(df: pd.DataFrame, col: str) -> pd.DataFrame:
    """Long frame (round, run, value) of one per-round column, in the chart's unit: bytes as GB;
    a loss keeps only positive values (its axis is logarithmic)."""
    out = df[["round", "run", col]].dropna().rename(columns={col: "value"})
    if "bytes" in col:
        out["value"] = out["value"] / 1e9
    if col == "loss":
        out = out[out["value"] > 0]
    return out.reset_index(drop=True)


def mixed_runs(infos: list[RunInfo]) -> str:
    """A warning when runs compared on one chart differ in dataset or mode ("" when they agree)."""
    datasets = sorted({i.dataset for i in infos if i.dataset})
    modes = sorted({i.mode for i in infos if i.mode})
    parts = []
    if len(datasets) > 1:
        parts.append(f"datasets ({', '.join(datasets)})")
    if len(modes) > 1:
        parts.append(f"modes ({', '.join(modes)}: losses and metrics are not on one scale)")
    return f"These runs differ in {' and '.join(parts)}; compare their curves with care." if parts else ""


# -- pictures ----------------------------------------------------------------------------------------
PLACEHOLDER_URI = ("data:image/svg+xml;base64,PHN2ZyB4bWxucz0iaHR0cDovL3d3dy53My5vcmcvMjAwMC9zdmciIHdpZHRoPSI2NCIg"
                   "aGVpZ2h0PSI2NCI+PHJlY3Qgd2lkdGg9IjY0IiBoZWlnaHQ9IjY0IiBmaWxsPSIjZWVlIi8+PC9zdmc+")


def thumbnail_uri(path: str, size: int = 64) -> str:
    """A small PNG of an item's image as a data URI (for an image column); the neutral placeholder
    when there is no image or it cannot be read."""
    import base64
    import io

    if not path or not Path(path).is_file():
        return PLACEHOLDER_URI
    try:
        from PIL import Image

        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((size, size))
            buf = io.BytesIO()
            im.save(buf, format="PNG")
    except (OSError, ValueError):
        return PLACEHOLDER_URI
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def nearest_reference(item_vecs: np.ndarray, items: np.ndarray, refs: np.ndarray,
                      weights: np.ndarray | None = None) -> np.ndarray:
    """For each of (k,) items, the position in refs (m,) of the most similar reference item by cosine of
    their rows in item_vecs (n_items, d), times weights (m,); -1 where the only reference is the item
    itself (an item never explains itself)."""
    items, refs = np.asarray(items, dtype=np.int64), np.asarray(refs, dtype=np.int64)
    Rn = item_vecs[refs] / (np.linalg.norm(item_vecs[refs], axis=1, keepdims=True) + 1e-9)     # (m, d)
    In = item_vecs[items] / (np.linalg.norm(item_vecs[items], axis=1, keepdims=True) + 1e-9)   # (k, d)
    sim = In @ Rn.T                                                                             # (k, m)
    if weights is not None:
        sim = sim * np.asarray(weights)[None, :]
    sim[items[:, None] == refs[None, :]] = -np.inf
    best = sim.argmax(1)
    return np.where(np.isfinite(sim[np.arange(len(items)), best]), best, -1)


def closest_in_history(run, user: int, items: np.ndarray, item_vecs: np.ndarray) -> list[str]:
    """For each of (k,) items, why it suits the user: the history item (never the item itself) whose
    decoder row (item_vecs (n_items, d)) is the most similar, weighted by the user's rating of it —
    "like TITLE (item ID), which you rated R" (explicit) or "..., in your history" (implicit)."""
    hist = run.train[user]
    if not hist.nnz:
        return ["no history yet"] * len(items)
    explicit = run.cfg.model.mode == "explicit"
    out = []
    for b in nearest_reference(item_vecs, items, hist.indices, hist.data / hist.data.max()):   # favour loved items
        if b < 0:
            out.append("only this item in your history")
            continue
        i = int(hist.indices[b])
        t = f"like {run.data.title(i)} (item {run.data.item_ids[i]})"
        out.append(f"{t}, which you rated {hist.data[b]:g}" if explicit else f"{t}, in your history")
    return out


# -- new users -----------------------------------------------------------------------------------------
def search_titles(data, text: str, limit: int = 30) -> list[int]:
    """Item indices whose title contains ``text`` (case-insensitive), at most ``limit``, in catalogue order."""
    t = text.strip().lower()
    if not t:
        return []
    titles = data.items["title"].astype(str).str.lower()
    return np.flatnonzero(titles.str.contains(t, regex=False).to_numpy())[:limit].tolist()


def new_user_recommendations(run, picks: list[int], k: int, steps: int, item_vecs: np.ndarray,
                             start: dict | None = None) -> pd.DataFrame:
    """Top-k for a new user who picked ``picks`` (item indices): a fresh encoder folded in for ``steps``
    local steps (federation/runs/onboard.py; ``start``: onboard.new_client_start, kept by the caller),
    with strength and why (the closest pick in the model's item space)."""
    from federation.runs.onboard import FoldIn, new_user_scores

    items = np.asarray(picks, dtype=np.int64)
    ratings = None
    if run.fed.shape.mode == "explicit":
        ratings = np.full(len(items), float(run.data.ratings.data.max()))
    s = new_user_scores(run.fed, items, ratings, FoldIn(steps), start).astype(np.float64)
    ids = np.argsort(-s, kind="stable")[:k]
    ids = ids[np.isfinite(s[ids])]
    best = nearest_reference(item_vecs, ids, items)          # never -1: picks are not in the list
    mode = run.cfg.model.mode
    r = run.data.ratings.data
    rating_range = (float(r.min()), float(r.max()))
    return pd.DataFrame({"rank": np.arange(1, len(ids) + 1), "item": [str(run.data.item_ids[i]) for i in ids],
                         "title": [run.data.title(int(i)) for i in ids],
                         score_label(mode, rating_range): readable_scores(mode, s[ids], s, rating_range),
                         "image": [image_of(run.data, int(i)) for i in ids],
                         "why": [f"like {run.data.title(int(items[b]))} (item {run.data.item_ids[items[b]]}), "
                                 "which you picked" for b in best]})
