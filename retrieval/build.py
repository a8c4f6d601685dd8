"""Building the four index kinds from a trained run (what ``fedrec index build`` calls).

  items      model item vectors [dec_out_i, dec_ob_i]; a user vector [h3_u, 1] scores every item
             exactly as the model does (fast top-K over large catalogues)
  content    item text embeddings (title, genres/attributes) for search and similar items
  histories  one entry per (user, training interaction), id = user << HISTORY_SHIFT | item, so a
             query can be restricted to one user's own entries with an id range
  summaries  one task-aware summary per user (retrieval.summaries), embedded; id = user index

Large inputs are added in batches after training the quantizer on a sample; at the end recall@10
of the index against exact search on a sample of queries is measured and stored in the manifest.
"""
from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrieval.embedders import encode_unique
from recsys.errors import FedrecError
from retrieval.index import IndexError_, VectorIndex, exact_topk, read_manifest, recall_at_k
from retrieval.summaries import SummaryStore, TemplateGenerator, histories, refresh

log = logging.getLogger(__name__)

HISTORY_SHIFT = 24            # history id = user << 24 | item: up to 16.7M items, 2^39 users
SUMMARIES_FILE = "summaries.jsonl"
KINDS = ("items", "content", "histories", "summaries")


@dataclass
class BuildOptions:
    factory: str | None = None        # None: Flat below 100k vectors, else IVF (see default_factory)
    metric: str = "ip"
    nprobe: int | None = None
    ef_search: int | None = None
    batch: int = 65_536
    train_sample: int = 100_000
    recall_queries: int = 500
    seed: int = 0
    progress: bool = True


def default_factory(n: int) -> tuple[str, dict]:
    """Exact search is fast enough below ~100k vectors; above, IVF with ~4*sqrt(n) lists and the
    nprobe that reached recall@10 >= 0.95 in docs/benchmarks.md."""
    if n < 100_000:
        return "Flat", {}
    nlist = int(2 ** round(math.log2(4 * math.sqrt(n))))
    return f"IVF{nlist},Flat", {"nprobe": max(8, nlist // 256)}


def history_id(user: np.ndarray, item: np.ndarray) -> np.ndarray:
    return (np.asarray(user, np.int64) << HISTORY_SHIFT) | np.asarray(item, np.int64)


def user_id_range(user: int) -> tuple[int, int]:
    return user << HISTORY_SHIFT, (user + 1) << HISTORY_SHIFT


def split_history_id(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids = np.asarray(ids, np.int64)
    return ids >> HISTORY_SHIFT, ids & ((1 << HISTORY_SHIFT) - 1)


def build_index(vectors: np.ndarray, ids: np.ndarray, opts: BuildOptions, queries: np.ndarray | None = None,
                meta: dict | None = None) -> VectorIndex:
    """Train on a sample, add in batches, measure recall@10 vs exact on a query sample."""
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or len(vectors) == 0:
        raise IndexError_(f"nothing to index: got vectors of shape {tuple(vectors.shape)}")
    t0 = time.perf_counter()
    source_sha = hashlib.sha256(np.ascontiguousarray(vectors, np.float32).tobytes()).hexdigest()
    factory, params = (opts.factory, {}) if opts.factory else default_factory(len(vectors))
    ix = VectorIndex.create(vectors.shape[1], factory, opts.metric)
    rng = np.random.default_rng(opts.seed)
    if not ix.is_trained:
        sample = vectors[np.sort(rng.choice(len(vectors), min(len(vectors), opts.train_sample), replace=False))]
        ix.train(sample)
    ix.set_search_defaults(opts.nprobe or params.get("nprobe"), opts.ef_search or params.get("ef_search"))
    it = range(0, len(vectors), opts.batch)
    if opts.progress and len(vectors) > opts.batch:
        from recsys.progress import progress_bar
        it = progress_bar(it, desc=f"adding to {factory}", unit="batch")
    for s in it:
        ix.add(ids[s:s + opts.batch], vectors[s:s + opts.batch])
    q = queries if queries is not None else vectors[rng.choice(len(vectors), min(len(vectors), opts.recall_queries),
                                                                replace=False)]
    q = q[: opts.recall_queries]
    k = min(10, len(vectors))
    truth = exact_topk(q, vectors, ids, k, opts.metric)
    rec = recall_at_k(ix.search(q, k).ids, truth)
    ix.meta.update(meta or {})
    ix.meta.update({"recall@10": round(rec, 4), "recall_queries": int(len(q)), "source_sha256": source_sha,
                    "build_seconds": round(time.perf_counter() - t0, 2)})
    log.info("%s over %d vectors: recall@%d vs exact = %.4f", factory, ix.count, k, rec)
    return ix


def run_identity(run) -> dict:
    """What ties an index to a run: run dir name, checkpoint file checksum and round (read from the
    checkpoint itself, never from the checkpoint.json convenience copy), dataset checksum."""
    from federation.runs.loop import CHECKPOINT, checkpoint_meta
    from recsys.io import sha256_file

    meta = checkpoint_meta(run.dir) or {}
    return {"run": run.dir.name, "run_checkpoint": sha256_file(run.dir / CHECKPOINT), "round": int(meta.get("round", 0)),
            "dataset_checksum": run.data.checksum()}


def item_vectors_index(run, opts: BuildOptions) -> VectorIndex:
    model = run.model()
    items = model.item_vectors()                                               # (N, H1+1)
    users = np.flatnonzero(np.diff(run.train.indptr) > 0)
    users = np.random.default_rng(opts.seed).permutation(users)[: opts.recall_queries]
    return build_index(items, np.arange(len(items)), opts, queries=model.user_vectors(users),
                       meta={"kind": "items", **run_identity(run), "source": "model item vectors [dec_out, dec_ob]"})


def item_texts(data) -> list[str]:
    t = data.items["text"].fillna("").astype(str).tolist()
    titles = data.items["title"].fillna("").astype(str).tolist()
    return [x if x.strip() else (y or f"item {data.item_ids[i]}") for i, (x, y) in enumerate(zip(t, titles))]


def content_index(data, embedder, opts: BuildOptions) -> VectorIndex:
    vecs = embedder.encode(item_texts(data), progress=opts.progress)
    return build_index(vecs, np.arange(len(vecs)), opts, meta={
        "kind": "content", "embedder": embedder.id, "dataset_checksum": data.checksum(), "source": "item text"})


def history_texts(data, users: np.ndarray, items: np.ndarray, ratings: np.ndarray, explicit: bool) -> list[str]:
    base = item_texts(data)
    if explicit:
        return [f"{base[i]} Rated {r:g}/5." for i, r in zip(items, ratings)]
    return [base[i] for i in items]


def histories_index(run, embedder, opts: BuildOptions) -> VectorIndex:
    train = run.train.tocoo()
    explicit = run.cfg.model.mode == "explicit"
    users, items, ratings = train.row.astype(np.int64), train.col.astype(np.int64), train.data
    if run.data.n_items >= 1 << HISTORY_SHIFT:
        raise IndexError_(f"history ids hold at most {1 << HISTORY_SHIFT} items; the dataset has {run.data.n_items}")
    vecs = encode_unique(embedder, history_texts(run.data, users, items, ratings, explicit), opts.progress)
    return build_index(vecs, history_id(users, items), opts, meta={
        "kind": "histories", "embedder": embedder.id, **run_identity(run), "explicit": explicit,
        "id_layout": f"user << {HISTORY_SHIFT} | item"})


def summaries_index(run, embedder, opts: BuildOptions, out: Path, generator=None) -> tuple[VectorIndex, SummaryStore, int]:
    """Refresh the summaries kept in ``out`` (only stale ones are regenerated) and index them."""
    store = SummaryStore()
    if (out / SUMMARIES_FILE).exists():
        try:
            store = SummaryStore.load(out / SUMMARIES_FILE)
        except Exception as e:  # noqa: BLE001 - a damaged old file only costs a full regeneration
            log.warning("%s: %s; regenerating every summary", out / SUMMARIES_FILE, e)
    if store.meta.get("dataset_checksum") not in (None, run.data.checksum()):
        store = SummaryStore()
    hist = histories(run.train, run.split.matrix(run.data, "train", "timestamps"), run.data.user_ids)
    generator = generator or TemplateGenerator(run.data.items)
    before = store
    store, n_new = refresh(store, hist, generator, progress=opts.progress)
    store.meta.update({"dataset_checksum": run.data.checksum(), "run": run.dir.name})
    users = np.array([run.data.user_index(u) for u in store.entries])
    vecs = _summary_vectors(out, embedder, store, before, users, opts.progress)
    ix = build_index(vecs, users, opts, meta={"kind": "summaries", "embedder": embedder.id, **run_identity(run),
                                              "generator": generator.name, "regenerated": n_new})
    return ix, store, n_new


def _summary_vectors(out: Path, embedder, store: SummaryStore, before: SummaryStore, users: np.ndarray,
                     progress: bool) -> np.ndarray:
    """Embeddings of every summary: unchanged summaries reuse their stored vectors when the old index
    was built with the same embedder and stores vectors exactly; only new or changed ones are embedded."""
    unchanged = np.array([before.entries.get(u) == s for u, s in store.entries.items()], bool)
    vecs = np.zeros((len(users), embedder.dim), np.float32)
    todo = ~unchanged
    if unchanged.any():
        try:
            old = VectorIndex.load(out, {"kind": "summaries", "embedder": embedder.id})
            exact = not any(t in old.factory for t in ("PQ", "SQ", "LSH"))
            have = unchanged & old.contains(users) if exact else np.zeros_like(unchanged)
            if have.any():
                vecs[have] = old.reconstruct(users[have])
            todo = ~have
        except FedrecError as e:
            log.info("not reusing old summary vectors (%s)", e)
            todo = np.ones_like(unchanged)
    texts = [s.text for s in store.entries.values()]
    if todo.any():
        vecs[todo] = embedder.encode([t for t, d in zip(texts, todo) if d], progress=progress)
    log.info("summaries: embedded %d, reused %d stored vectors", int(todo.sum()), int((~todo).sum()))
    return vecs


def load_index(path: str | Path, kind: str | None = None, run=None, embedder_id: str | None = None) -> VectorIndex:
    """Load an index and check it belongs to ``run`` / was built with ``embedder_id``."""
    expect = {}
    if kind:
        expect["kind"] = kind
    m = read_manifest(path)
    if run is not None and "run_checkpoint" in m:
        expect.update({k: v for k, v in run_identity(run).items() if k in ("run_checkpoint", "dataset_checksum")})
    if embedder_id is not None and "embedder" in m:
        expect["embedder"] = embedder_id
    return VectorIndex.load(path, expect)
