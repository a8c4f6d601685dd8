"""One persisted FAISS index type, used for items, content, histories and summaries.

A ``VectorIndex`` is any FAISS ``index_factory`` string (Flat, IVF..., HNSW..., PQ...) with inner
product or L2, holding 64-bit external ids. Index types that cannot store ids (Flat, HNSW, PQ) are
wrapped in ``IndexIDMap2``; IVF types store ids natively. Removal is native where FAISS supports it;
for HNSW (which cannot remove) the index is rebuilt from its stored vectors, and the call says so.

On disk an index is a directory, written atomically:
    index.faiss      the FAISS index
    ids.safetensors  the external ids it holds (sorted int64), for collision and membership checks
    manifest.json    factory, metric, dim, count, source, run/model id, versions, build time, recall,
                     and the SHA-256 of both files; ``load`` refuses a mismatch or a damaged file.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from recsys.errors import FedrecError, ManifestError
from recsys.io import atomic_dir, fault, library_versions, load_arrays, save_arrays, sha256_file

log = logging.getLogger(__name__)

INDEX_FORMAT = 1
INDEX_FILE, IDS_FILE, MANIFEST_FILE = "index.faiss", "ids.safetensors", "manifest.json"
METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}


class IndexError_(FedrecError):
    """Bad input to an index (dimension, ids, empty data)."""


@dataclass
class SearchResult:
    ids: np.ndarray        # (m, k) int64 external ids, -1 where fewer than k results
    scores: np.ndarray     # (m, k) float32 inner products (ip) or squared distances (l2)


# What a refused load means, by manifest key (appended to the one-line error).
_MISMATCH_HINTS = {
    "run_checkpoint": " (built from another run, or from an earlier checkpoint of this one: rebuild it with "
                      "`fedrec index build KIND RUN --out DIR`)",
    "dataset_checksum": " (built on other data: rebuild it from this run)",
    "embedder": " (built with another embedder: rebuild it, or query with the embedder it names)",
    "kind": " (another kind of index: items, content, histories or summaries)",
}


@dataclass
class VectorIndex:
    index: faiss.Index
    factory: str
    metric: str
    dim: int
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))   # sorted external ids
    meta: dict = field(default_factory=dict)    # source, run id, recall, ... (goes into the manifest)

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def create(cls, dim: int, factory: str = "Flat", metric: str = "ip") -> "VectorIndex":
        if metric not in METRICS:
            raise IndexError_(f"metric must be one of {sorted(METRICS)}, got {metric!r}")
        if dim <= 0:
            raise IndexError_(f"dimension must be positive, got {dim}")
        try:
            base = faiss.index_factory(int(dim), factory, METRICS[metric])
        except RuntimeError as e:
            raise IndexError_(f"FAISS cannot build {factory!r}: {_faiss_msg(e)}") from None
        # (faiss' Python wrapper keeps `base` alive as long as the IDMap2 lives.)
        index = base if _ivf(base) is not None else faiss.IndexIDMap2(base)
        return cls(index, factory, metric, int(dim))

    @property
    def count(self) -> int:
        return int(self.index.ntotal)

    @property
    def is_trained(self) -> bool:
        return bool(self.index.is_trained)

    def _check(self, x: np.ndarray, what: str) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise IndexError_(f"{what} must have shape (n, {self.dim}); got {tuple(x.shape)}")
        if not np.isfinite(x).all():
            raise IndexError_(f"{what} contain NaN or infinite values")
        return np.ascontiguousarray(x, dtype=np.float32)

    def train(self, sample: np.ndarray) -> None:
        """Train quantizers (IVF centroids, PQ codebooks) on a sample (n, d); no-op for Flat/HNSW."""
        if self.index.is_trained:
            return
        sample = self._check(sample, "training vectors")
        if len(sample) == 0:
            raise IndexError_("cannot train an index on zero vectors")
        self.index.train(sample)

    def add(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        """Add vectors (n, d) under external ids (n,); ids must be new and unique."""
        vecs = self._check(vecs, "vectors")
        ids = np.asarray(ids)
        if ids.ndim != 1 or len(ids) != len(vecs):
            raise IndexError_(f"need one id per vector: {ids.shape} ids for {len(vecs)} vectors")
        if not np.issubdtype(ids.dtype, np.integer) or (ids < 0).any():
            raise IndexError_("ids must be non-negative integers")
        ids = ids.astype(np.int64)
        if len(np.unique(ids)) != len(ids):
            raise IndexError_("ids collide: the same id appears twice in one batch")
        clash = np.isin(ids, self.ids, assume_unique=True)
        if clash.any():
            raise IndexError_(f"ids collide with {int(clash.sum())} id(s) already in the index, e.g. {int(ids[clash][0])}")
        if not self.index.is_trained:
            raise IndexError_(f"{self.factory} must be trained before adding (call train on a sample)")
        self.index.add_with_ids(vecs, ids)
        self.ids = np.union1d(self.ids, ids)

    def contains(self, ids: np.ndarray) -> np.ndarray:
        return np.isin(np.asarray(ids, np.int64), self.ids)

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """Stored vectors (n, d) of the given ids (exact for Flat/HNSW-Flat, decoded for PQ)."""
        ids = np.asarray(ids, np.int64)
        missing = ~self.contains(ids)
        if missing.any():
            raise IndexError_(f"unknown id {int(ids[missing][0])}")
        ivf = _ivf(self.index)
        if ivf is not None and ivf.direct_map.type != faiss.DirectMap.Hashtable:
            ivf.set_direct_map_type(faiss.DirectMap.Hashtable)      # arbitrary 64-bit ids
        return np.stack([self.index.reconstruct(int(i)) for i in ids]) if len(ids) else np.zeros((0, self.dim), np.float32)

    def remove(self, ids: np.ndarray) -> dict:
        """Remove ids; unknown ids are an error. Returns {"removed": n, "rebuilt": bool}."""
        ids = np.unique(np.asarray(ids, np.int64))
        missing = ~self.contains(ids)
        if missing.any():
            raise IndexError_(f"cannot remove unknown id {int(ids[missing][0])}")
        if len(ids) == 0:
            return {"removed": 0, "rebuilt": False}
        try:
            n = int(self.index.remove_ids(faiss.IDSelectorBatch(len(ids), faiss.swig_ptr(ids))))
            rebuilt = False
        except RuntimeError:
            # HNSW cannot delete graph nodes: rebuild from the stored vectors of the ids that stay.
            keep = np.setdiff1d(self.ids, ids)
            log.warning("%s cannot remove ids in place; rebuilding from %d stored vectors", self.factory, len(keep))
            vecs = self.reconstruct(keep)
            fresh = faiss.clone_index(self.index)      # keeps trained codebooks (HNSW,PQ / SQ)
            fresh.reset()
            fresh.add_with_ids(np.ascontiguousarray(vecs, np.float32), keep)
            self.index = fresh
            n, rebuilt = len(ids), True
        self.ids = np.setdiff1d(self.ids, ids)
        return {"removed": n, "rebuilt": rebuilt}

    # -- search ------------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int, nprobe: int | None = None, ef_search: int | None = None,
               id_range: tuple[int, int] | None = None, batch: int = 4096) -> SearchResult:
        """Top-k for queries (m, d). nprobe (IVF) / ef_search (HNSW) apply to this call only;
        id_range=(lo, hi) restricts results to external ids lo <= id < hi."""
        q = self._check(queries, "queries")
        if k <= 0:
            raise IndexError_(f"k must be positive, got {k}")
        params = self._params(nprobe, ef_search, id_range)
        ids = np.empty((len(q), k), np.int64)
        scores = np.empty((len(q), k), np.float32)
        for s in range(0, len(q), batch):
            D, I = self.index.search(q[s:s + batch], k, params=params)
            scores[s:s + batch], ids[s:s + batch] = D, I
        return SearchResult(ids, scores)

    def _params(self, nprobe, ef_search, id_range):
        sel = faiss.IDSelectorRange(int(id_range[0]), int(id_range[1])) if id_range else None
        inner = self.index.index if isinstance(self.index, faiss.IndexIDMap2) else self.index
        hnsw = _hnsw(inner)
        if _ivf(self.index) is not None:
            p = faiss.SearchParametersIVF()
            p.nprobe = int(nprobe or _ivf(self.index).nprobe)
        elif hnsw is not None:
            p = faiss.SearchParametersHNSW()
            p.efSearch = int(ef_search or hnsw.hnsw.efSearch)
        elif sel is None:
            return None
        else:
            p = faiss.SearchParameters()
        if sel is not None:
            p.sel = sel
            p._sel_ref = sel           # the selector must outlive the parameters object
        return p

    # -- persistence -------------------------------------------------------------------------
    def set_search_defaults(self, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Search parameters stored with the index (used when a query does not give its own)."""
        if nprobe and _ivf(self.index) is not None:
            _ivf(self.index).nprobe = int(nprobe)
        inner = self.index.index if isinstance(self.index, faiss.IndexIDMap2) else self.index
        if ef_search and _hnsw(inner) is not None:
            _hnsw(inner).hnsw.efSearch = int(ef_search)

    def search_defaults(self) -> dict:
        out = {}
        if _ivf(self.index) is not None:
            out["nprobe"] = int(_ivf(self.index).nprobe)
        inner = self.index.index if isinstance(self.index, faiss.IndexIDMap2) else self.index
        if _hnsw(inner) is not None:
            out["ef_search"] = int(_hnsw(inner).hnsw.efSearch)
        return out

    def save(self, path: str | Path, extra: dict | None = None, files: dict | None = None) -> dict:
        """Write the index directory atomically; returns the manifest. ``files`` maps extra file
        names to writers ``fn(path)`` (e.g. the summaries beside their index); they are checksummed too."""
        path = Path(path)
        with atomic_dir(path) as tmp:
            faiss.write_index(self.index, str(tmp / INDEX_FILE))
            save_arrays(tmp / IDS_FILE, {"ids": self.ids})
            for name, writer in (files or {}).items():
                writer(tmp / name)
            names = [INDEX_FILE, IDS_FILE, *(files or {})]
            manifest = {"format": INDEX_FORMAT, "factory": self.factory, "metric": self.metric, "dim": self.dim,
                        "count": self.count, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        "versions": library_versions(), "search_defaults": self.search_defaults(),
                        **self.meta, **(extra or {}),
                        "checksums": {n: sha256_file(tmp / n) for n in names}}
            (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, default=_jsonable) + "\n")
            fault("index")                  # testing hook: killed with everything written, nothing committed
        return manifest

    @classmethod
    def load(cls, path: str | Path, expect: dict | None = None) -> "VectorIndex":
        """Load and verify an index directory. ``expect`` maps manifest keys (dim, run_id, kind, ...)
        to required values; any difference is an error naming the key."""
        path = Path(path)
        manifest = read_manifest(path)
        for name in manifest.get("checksums", {}):
            f = path / name
            if not f.exists():
                raise ManifestError(f"{path}: {name} is missing")
            if sha256_file(f) != manifest["checksums"].get(name):
                raise ManifestError(f"{f}: checksum does not match the manifest (corrupt or truncated file)")
        for key, want in (expect or {}).items():
            if manifest.get(key) != want:
                raise ManifestError(f"{path}: manifest {key} is {manifest.get(key)!r}, expected {want!r}"
                                    + _MISMATCH_HINTS.get(key, ""))
        try:
            index = faiss.read_index(str(path / INDEX_FILE))
        except RuntimeError as e:
            raise ManifestError(f"{path / INDEX_FILE}: FAISS cannot read it ({_faiss_msg(e)})") from None
        ids = load_arrays(path / IDS_FILE)["ids"]
        if index.d != manifest["dim"] or index.ntotal != manifest["count"] or len(ids) != index.ntotal:
            raise ManifestError(f"{path}: index holds {index.ntotal} x {index.d}, manifest says "
                                f"{manifest['count']} x {manifest['dim']}")
        meta = {k: v for k, v in manifest.items()
                if k not in ("format", "factory", "metric", "dim", "count", "created", "versions", "checksums",
                             "search_defaults")}
        return cls(index, manifest["factory"], manifest["metric"], int(manifest["dim"]), ids.astype(np.int64), meta)


def read_manifest(path: str | Path) -> dict:
    path = Path(path)
    mf = path / MANIFEST_FILE
    if not path.is_dir():
        raise ManifestError(f"{path}: no such index directory")
    if not mf.exists():
        raise ManifestError(f"{path}: not an index directory ({MANIFEST_FILE} missing)")
    try:
        manifest = json.loads(mf.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ManifestError(f"{mf}: not valid JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != INDEX_FORMAT or "checksums" not in manifest:
        raise ManifestError(f"{mf}: unsupported index format {manifest.get('format') if isinstance(manifest, dict) else None!r}"
                            f" (this fedrec reads format {INDEX_FORMAT})")
    return manifest


# -- exact search and recall ------------------------------------------------------------------

def exact_topk(queries: np.ndarray, vectors: np.ndarray, ids: np.ndarray, k: int, metric: str = "ip",
               batch: int = 262_144) -> np.ndarray:
    """Exact top-k ids (m, k) by brute force, streaming over ``vectors`` (n, d) in batches so memory
    stays bounded by the batch. The ground truth for recall."""
    q = np.ascontiguousarray(queries, np.float32)
    best_s = np.full((len(q), k), -np.inf if metric == "ip" else np.inf, np.float32)
    best_i = np.full((len(q), k), -1, np.int64)
    for s in range(0, len(vectors), batch):
        block = np.ascontiguousarray(vectors[s:s + batch], np.float32)
        D, I = faiss.knn(q, block, min(k, len(block)), metric=METRICS[metric])
        cand_s = np.concatenate([best_s, D], 1)
        cand_i = np.concatenate([best_i, np.asarray(ids)[s:s + batch][I]], 1)
        order = np.argsort(-cand_s if metric == "ip" else cand_s, axis=1, kind="stable")[:, :k]
        best_s = np.take_along_axis(cand_s, order, 1)
        best_i = np.take_along_axis(cand_i, order, 1)
    return best_i


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found ∩ truth| / |truth| for (m, k) id arrays (-1 ignored)."""
    hits = [len(np.intersect1d(f[f >= 0], t[t >= 0])) / max(1, (t >= 0).sum()) for f, t in zip(found, truth)]
    return float(np.mean(hits)) if hits else 0.0


# -- helpers ------------------------------------------------------------------------------------

def _ivf(index: faiss.Index):
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def _hnsw(index: faiss.Index):
    idx = faiss.downcast_index(index)
    return idx if hasattr(idx, "hnsw") else None


def _faiss_msg(e: Exception) -> str:
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return lines[-1].strip() if lines else type(e).__name__


def _jsonable(o):
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")
