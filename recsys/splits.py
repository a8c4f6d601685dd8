"""Train/valid/test splits as one label per stored CSR entry.

A split is ``parts: (nnz,) int8`` aligned with ``data.ratings.data`` (0 train, 1 valid, 2 test)
plus ``cold_items`` for the cold-start split. Seeded, saved with a manifest, reloaded verbatim.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from recsys.data import InteractionData
from recsys.errors import ManifestError
from recsys.io import load_arrays, save_arrays, write_json

TRAIN, VALID, TEST = 0, 1, 2
PART_NAMES = {"train": TRAIN, "valid": VALID, "test": TEST}


@dataclass
class Split:
    kind: str
    seed: int
    parts: np.ndarray                      # (nnz,) int8
    cold_items: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # (n_cold,)
    params: dict = field(default_factory=dict)

    def matrix(self, data: InteractionData, part: str | int, what: str = "ratings") -> sp.csr_matrix:
        """The (n_users, n_items) CSR of one part; same shape as the full matrix."""
        p = PART_NAMES[part] if isinstance(part, str) else part
        src = data.ratings if what == "ratings" else data.timestamps
        keep = self.parts == p
        indptr = np.concatenate([[0], np.cumsum(_row_counts(src.indptr, keep))])
        out = sp.csr_matrix((src.data[keep], src.indices[keep], indptr), shape=src.shape)
        return out

    def counts(self) -> dict[str, int]:
        return {name: int((self.parts == v).sum()) for name, v in PART_NAMES.items()}


def _row_counts(indptr: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Number of kept entries per row: (n_rows,)."""
    c = np.concatenate([[0], np.cumsum(keep, dtype=np.int64)])
    return c[indptr[1:]] - c[indptr[:-1]]


def ratio_split(data: InteractionData, ratios=(0.8, 0.1, 0.1), seed: int = 0) -> Split:
    """Per-user random split. Each user with n interactions gets round(n*valid) valid and round(n*test)
    test entries, at least one train entry; users with fewer than 3 interactions stay in train."""
    r = np.asarray(ratios, dtype=np.float64)
    if r.shape != (3,) or (r < 0).any() or abs(r.sum() - 1) > 1e-6:
        raise ValueError(f"ratios must be three non-negative numbers summing to 1, got {list(ratios)}")
    rng = np.random.default_rng(seed)
    indptr = data.ratings.indptr
    n_per = np.diff(indptr)
    parts = np.zeros(data.nnz, dtype=np.int8)
    # One random key per entry; sorting keys within each row gives a per-user permutation (vectorized).
    keys = rng.random(data.nnz)
    rows = np.repeat(np.arange(data.n_users), n_per)
    order = np.lexsort((keys, rows))                      # entries grouped by row, random within row
    rank = np.empty(data.nnz, dtype=np.int64)
    rank[order] = np.arange(data.nnz) - np.repeat(indptr[:-1], n_per)
    n_test = np.where(n_per >= 3, np.round(n_per * r[2]).astype(np.int64), 0)
    n_valid = np.where(n_per >= 3, np.round(n_per * r[1]).astype(np.int64), 0)
    n_test = np.minimum(n_test, np.maximum(n_per - 1, 0))
    n_valid = np.minimum(n_valid, np.maximum(n_per - 1 - n_test, 0))
    nt, nv = np.repeat(n_test, n_per), np.repeat(n_valid, n_per)
    parts[rank < nt] = TEST
    parts[(rank >= nt) & (rank < nt + nv)] = VALID
    return Split("ratio", seed, parts, params={"ratios": [float(x) for x in r]})


def leave_last_out(data: InteractionData, seed: int = 0) -> Split:
    """Per user: latest interaction -> test, second latest -> valid (ties broken by seeded noise)."""
    rng = np.random.default_rng(seed)
    indptr = data.ratings.indptr
    n_per = np.diff(indptr)
    rows = np.repeat(np.arange(data.n_users), n_per)
    order = np.lexsort((rng.random(data.nnz), -data.timestamps.data, rows))   # newest first within row
    rank = np.empty(data.nnz, dtype=np.int64)
    rank[order] = np.arange(data.nnz) - np.repeat(indptr[:-1], n_per)
    big = np.repeat(n_per >= 3, n_per)
    parts = np.zeros(data.nnz, dtype=np.int8)
    parts[(rank == 0) & big] = TEST
    parts[(rank == 1) & big] = VALID
    return Split("leave_last_out", seed, parts)


def cold_item_split(data: InteractionData, cold_fraction: float = 0.1, ratios=(0.8, 0.1, 0.1),
                    seed: int = 0) -> Split:
    """A random ``cold_fraction`` of the rated items has no training interactions: all of their
    interactions go to test (half of them to valid). The other items are ratio-split per user."""
    rng = np.random.default_rng(seed)
    rated = np.flatnonzero(np.diff(data.ratings.tocsc().indptr) > 0)
    n_cold = int(round(len(rated) * cold_fraction))
    cold = np.sort(rng.choice(rated, size=n_cold, replace=False))
    base = ratio_split(data, ratios, seed)
    parts = base.parts.copy()
    is_cold = np.isin(data.ratings.indices, cold)
    coin = rng.random(int(is_cold.sum())) < 0.5
    parts[is_cold] = np.where(coin, VALID, TEST)
    return Split("cold_items", seed, parts, cold_items=cold.astype(np.int64),
                 params={"cold_fraction": cold_fraction, "ratios": list(ratios)})


def make_split(data: InteractionData, kind: str, seed: int = 0, ratios=(0.8, 0.1, 0.1),
               cold_fraction: float = 0.1) -> Split:
    if kind == "predefined":
        if "predefined_split" not in data.extra:
            raise ManifestError(f"{data.name}: split 'predefined' needs NAME.train/valid/test.inter files")
        return Split("predefined", seed, data.extra["predefined_split"])
    if kind == "ratio":
        return ratio_split(data, ratios, seed)
    if kind == "leave_last_out":
        return leave_last_out(data, seed)
    if kind == "cold_items":
        return cold_item_split(data, cold_fraction, ratios, seed)
    raise ValueError(f"unknown split kind {kind!r}")


def save_split(split: Split, path: str | Path, data: InteractionData) -> None:
    path = Path(path)
    save_arrays(path.with_suffix(".safetensors"), {"parts": split.parts, "cold_items": split.cold_items})
    write_json(path.with_suffix(".json"), {"kind": split.kind, "seed": split.seed, "params": split.params,
                                           "dataset_checksum": data.checksum(), "counts": split.counts()})


def load_split(path: str | Path, data: InteractionData) -> Split:
    import json

    path = Path(path)
    meta_path = path.with_suffix(".json")
    if not meta_path.exists():
        raise ManifestError(f"{meta_path}: split manifest missing")
    meta = json.loads(meta_path.read_text())
    if meta.get("dataset_checksum") != data.checksum():
        raise ManifestError(f"{path}: split was made for different data (dataset checksum differs)")
    arr = load_arrays(path.with_suffix(".safetensors"))
    if arr["parts"].shape != (data.nnz,):
        raise ManifestError(f"{path}: split has {arr['parts'].shape[0]} labels for {data.nnz} interactions")
    return Split(meta["kind"], meta["seed"], arr["parts"], arr["cold_items"], meta.get("params", {}))


def partition_users(n_users: int, partition_id: int, num_partitions: int) -> np.ndarray:
    """Users of one partition (a data holder: a SuperNode, a simulated user block): contiguous blocks
    of the user index (np.array_split)."""
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id {partition_id} outside 0..{num_partitions - 1}")
    return np.array_split(np.arange(n_users), num_partitions)[partition_id]


def hold_out_users(counts: np.ndarray, fraction: float, seed: int, min_interactions: int = 1) -> np.ndarray:
    """(m,) sorted indices of users held out entirely (new users for an onboarding evaluation): a seeded
    ``fraction`` of the users with at least ``min_interactions`` interactions (counts (n_users,))."""
    if not 0 < fraction < 1:
        raise ValueError(f"held-out fraction must be in (0, 1), got {fraction}")
    eligible = np.flatnonzero(np.asarray(counts) >= min_interactions)
    rng = np.random.default_rng(seed)
    m = int(round(fraction * len(eligible)))
    return np.sort(rng.choice(eligible, size=m, replace=False))


def reveal_order(items: np.ndarray, seed: int, user: int) -> np.ndarray:
    """A new user's interactions (item ids (L,)) in the order they are revealed: a seeded permutation per
    user, so the k revealed first are nested across k (k=1 inside k=3 inside ...)."""
    rng = np.random.default_rng([seed, user])
    return np.asarray(items)[rng.permutation(len(items))]
