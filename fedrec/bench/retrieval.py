"""Retrieval benchmarks: FAISS index types on 1M synthetic vectors, and the LaMP-3-like table.

Every figure is measured when the command runs. The vectors are a seeded mixture of Gaussians
(clustered like real embeddings; uniform random vectors have no neighbourhood structure to exploit).
"""
from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from retrieval.build import BuildOptions, default_factory
from retrieval.index import VectorIndex, exact_topk, recall_at_k

log = logging.getLogger(__name__)


def clustered_vectors(n: int, d: int, clusters: int = 1000, latent: int = 16, seed: int = 0) -> np.ndarray:
    """(n, d) float32, unit norm: a mixture of ``clusters`` Gaussians in a ``latent``-dimensional
    space, mapped linearly into d dimensions plus small isotropic noise. Real embeddings look like
    this (low intrinsic dimension); i.i.d. Gaussian vectors in 64-d would have no usable
    neighbourhood structure, and well-separated blobs would flatter IVF. The map and the centres
    come from ``seed`` 0 always, so queries (another seed) share the data's structure."""
    base = np.random.default_rng(0)
    centres = base.standard_normal((clusters, latent)).astype(np.float32)
    proj = (base.standard_normal((latent, d)) / np.sqrt(latent)).astype(np.float32)
    rng = np.random.default_rng(seed)
    out = np.empty((n, d), np.float32)
    for s in range(0, n, 200_000):
        m = min(200_000, n - s)
        z = centres[rng.integers(0, clusters, m)] + 0.5 * rng.standard_normal((m, latent)).astype(np.float32)
        out[s:s + m] = z @ proj + 0.05 * rng.standard_normal((m, d)).astype(np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def _qps(ix: VectorIndex, q: np.ndarray, k: int, **kw) -> tuple[float, np.ndarray]:
    ix.search(q[:50], k, **kw)                                   # warm up
    t = time.perf_counter()
    ids = ix.search(q, k, **kw).ids
    return len(q) / (time.perf_counter() - t), ids


def bench_index_types(n: int = 1_000_000, d: int = 64, n_queries: int = 2000, k: int = 10) -> tuple[list[list], str]:
    """Rows: config, build s, index MiB, QPS, recall@10, speed-up vs exact. Plus the default's name."""
    x = clustered_vectors(n, d, seed=0)
    q = clustered_vectors(n_queries, d, seed=1)
    ids = np.arange(n, dtype=np.int64)
    t = time.perf_counter()
    truth = exact_topk(q, x, ids, k)
    log.info("exact ground truth for %d queries in %.1fs", n_queries, time.perf_counter() - t)
    nlist = int(2 ** round(np.log2(4 * np.sqrt(n))))
    default, dparams = default_factory(n)
    configs = [("Flat", {}, {}),
               (f"IVF{nlist},Flat", {"nprobe": 8}, {}), (f"IVF{nlist},Flat", {"nprobe": 16}, {}),
               (f"IVF{nlist},Flat", {"nprobe": 32}, {}), (f"IVF{nlist},Flat", {"nprobe": 64}, {}),
               ("HNSW32", {"ef_search": 32}, {}), ("HNSW32", {"ef_search": 64}, {}), ("HNSW32", {"ef_search": 128}, {}),
               (f"IVF{nlist},PQ16", {"nprobe": 32}, {}), (f"IVF{nlist},PQ32", {"nprobe": 64}, {})]
    rows, built, flat_qps = [], {}, None
    for factory, search, _ in configs:
        if factory not in built:
            t = time.perf_counter()
            ix = VectorIndex.create(d, factory, "ip")
            if not ix.is_trained:
                rng = np.random.default_rng(0)
                ix.train(x[rng.choice(n, min(n, 40 * nlist), replace=False)])
            for s in range(0, n, 100_000):
                ix.add(ids[s:s + 100_000], x[s:s + 100_000])
            size = len(faiss.serialize_index(ix.index)) / 2 ** 20
            built[factory] = (ix, time.perf_counter() - t, size)
            log.info("built %s in %.1fs (%.0f MiB)", factory, built[factory][1], size)
        ix, secs, size = built[factory]
        qps, found = _qps(ix, q, k, **search)
        rec = recall_at_k(found, truth)
        if factory == "Flat":
            flat_qps = qps
        label = factory + "".join(f", {a}={b}" for a, b in search.items())
        if factory == default and search.get("nprobe") == dparams.get("nprobe"):
            label += " **(default)**"
        rows.append([label, round(secs, 1), round(size, 1), round(qps), rec, round(qps / flat_qps, 1)])
        log.info("%s: %.0f qps, recall@10 %.4f", label, qps, rec)
    return rows, default


def bench_lamp(data_dir: Path, pairs: int = 2000) -> tuple[list[dict], dict]:
    """Train the explicit ml-100k config, build histories + summaries, evaluate the LaMP-3-like task."""
    from federation.runs.jobs import load_run, train
    from retrieval.augment import Retriever
    from retrieval.build import histories_index, summaries_index
    from retrieval.embedders import get_embedder
    from retrieval.lamp import evaluate

    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "cfg.yaml"
        src = Path(__file__).resolve().parents[2] / "configs" / "ml100k-explicit.yaml"
        cfg.write_text(src.read_text().replace("data/ml-100k", str(data_dir / "ml-100k")))
        run_dir = train(cfg, Path(tmp) / "run", progress=False)
        run = load_run(run_dir)
        emb = get_embedder("minilm")
        opts = BuildOptions(progress=False)
        t = time.perf_counter()
        hist = histories_index(run, emb, opts)
        t_hist = time.perf_counter() - t
        t = time.perf_counter()
        _, store, _ = summaries_index(run, emb, opts, Path(tmp) / "summ")
        t_summ = time.perf_counter() - t
        r = Retriever(run.data, run.train, hist, emb, store.entries, explicit=True)
        table = evaluate(r, run.split, run.data, n_pairs=pairs, seed=0, model_predict=run.model().predict)
        return table, {"histories_build_s": t_hist, "summaries_build_s": t_summ, "history_entries": hist.count,
                       "summaries": len(store.entries), "embedder": emb.id}
