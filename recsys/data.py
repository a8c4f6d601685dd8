"""The data contract: one CSR user x item matrix with id maps and an item table.

Every loader returns an :class:`InteractionData`. Rows are users, columns items, both
indexed densely from 0; ``user_ids[u]`` / ``item_ids[i]`` give the external ids (strings).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys.errors import DataError

ITEM_COLUMNS = ("title", "text", "categories", "image_path")


@dataclass
class InteractionData:
    """Ratings and timestamps as aligned CSR matrices plus id maps and item metadata.

    ratings:    (n_users, n_items) float32 CSR, one stored entry per (user, item) interaction
    timestamps: (n_users, n_items) float64 CSR with exactly the same structure as ``ratings``
    user_ids:   (n_users,) external user ids, str
    item_ids:   (n_items,) external item ids, str
    items:      DataFrame indexed 0..n_items-1 with columns title, text, categories, image_path
    """

    name: str
    ratings: sp.csr_matrix
    timestamps: sp.csr_matrix
    user_ids: np.ndarray
    item_ids: np.ndarray
    items: pd.DataFrame
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        r, t = self.ratings, self.timestamps
        if r.shape != t.shape or not (np.array_equal(r.indptr, t.indptr) and np.array_equal(r.indices, t.indices)):
            raise DataError(f"{self.name}: ratings and timestamps must share one CSR structure")
        if r.shape != (len(self.user_ids), len(self.item_ids)):
            raise DataError(f"{self.name}: matrix shape {r.shape} does not match id maps")
        if len(self.items) != len(self.item_ids):
            raise DataError(f"{self.name}: item table has {len(self.items)} rows for {len(self.item_ids)} items")
        self._user_index: dict[str, int] | None = None
        self._item_index: dict[str, int] | None = None

    # -- sizes -------------------------------------------------------------------------
    @property
    def n_users(self) -> int:
        return self.ratings.shape[0]

    @property
    def n_items(self) -> int:
        return self.ratings.shape[1]

    @property
    def nnz(self) -> int:
        return self.ratings.nnz

    # -- id maps -----------------------------------------------------------------------
    def user_index(self, external: str | int) -> int:
        """External user id -> row index; raises DataError for an unknown id."""
        if self._user_index is None:
            self._user_index = {str(u): k for k, u in enumerate(self.user_ids)}
        try:
            return self._user_index[str(external)]
        except KeyError:
            raise DataError(f"unknown user id {external!r} (dataset {self.name} has {self.n_users} users)") from None

    def item_index(self, external: str | int) -> int:
        """External item id -> column index; raises DataError for an unknown id."""
        if self._item_index is None:
            self._item_index = {str(i): k for k, i in enumerate(self.item_ids)}
        try:
            return self._item_index[str(external)]
        except KeyError:
            raise DataError(f"unknown item id {external!r} (dataset {self.name} has {self.n_items} items)") from None

    def title(self, item: int) -> str:
        t = self.items.at[item, "title"]
        return str(t) if isinstance(t, str) and t else f"item {self.item_ids[item]}"

    def checksum(self) -> str:
        """SHA-256 over the interaction structure and values: identifies the exact data a run used."""
        h = hashlib.sha256()
        for a in (self.ratings.indptr, self.ratings.indices, self.ratings.data, self.timestamps.data):
            h.update(np.ascontiguousarray(a).tobytes())
        h.update("\x1f".join(map(str, self.item_ids)).encode())
        h.update("\x1f".join(map(str, self.user_ids)).encode())
        return h.hexdigest()

    def summary(self) -> dict:
        return {
            "name": self.name,
            "users": self.n_users,
            "items": self.n_items,
            "interactions": self.nnz,
            "density": self.nnz / max(1, self.n_users * self.n_items),
            "rating_min": float(self.ratings.data.min()) if self.nnz else None,
            "rating_max": float(self.ratings.data.max()) if self.nnz else None,
        }


def empty_item_table(n_items: int) -> pd.DataFrame:
    return pd.DataFrame({"title": [""] * n_items, "text": [""] * n_items,
                         "categories": [""] * n_items, "image_path": [""] * n_items})


def from_interactions(
    name: str,
    users: np.ndarray,
    items: np.ndarray,
    ratings: np.ndarray,
    timestamps: np.ndarray | None = None,
    item_table: pd.DataFrame | None = None,
    source: str = "<memory>",
) -> InteractionData:
    """Build the CSR contract from interaction columns, validating every value.

    users, items: (n,) external ids (any hashable; compared as str)
    ratings:      (n,) numeric, finite
    timestamps:   (n,) numeric or None (then 0)
    item_table:   optional DataFrame with an ``item_id`` column plus ITEM_COLUMNS (missing ones are empty)
    """
    n = len(users)
    if n == 0:
        raise DataError(f"{source}: no interactions (file is empty)")
    users = np.asarray(users).astype(str)
    items = np.asarray(items).astype(str)
    r = pd.to_numeric(pd.Series(ratings), errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(r)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise DataError(f"{source}: rating on data row {k + 1} is not a finite number ({str(ratings[k])!r})")
    if timestamps is None:
        ts = np.zeros(n)
    else:
        ts = pd.to_numeric(pd.Series(timestamps), errors="coerce").to_numpy(dtype=np.float64)
        if (~np.isfinite(ts)).any():
            k = int(np.flatnonzero(~np.isfinite(ts))[0])
            raise DataError(f"{source}: timestamp on data row {k + 1} is not a finite number ({str(timestamps[k])!r})")
    for label, ids in (("user", users), ("item", items)):
        neg = np.char.startswith(ids, "-")
        if neg.any():
            raise DataError(f"{source}: negative {label} id {str(ids[np.flatnonzero(neg)[0]])!r}")
        empty = ids == ""
        if empty.any() or (ids == "nan").any():
            raise DataError(f"{source}: missing {label} id on data row {int(np.flatnonzero(empty | (ids == 'nan'))[0]) + 1}")

    # Item universe: catalogue items (even unrated: cold-start) plus every rated item.
    rated_items = pd.unique(items)
    if item_table is not None and len(item_table):
        cat_ids = item_table["item_id"].astype(str).to_numpy()
        dup = pd.Index(cat_ids).duplicated()
        if dup.any():
            raise DataError(f"{source}: duplicate item id {str(cat_ids[dup][0])!r} in the item table")
        # Hash-based difference: np.setdiff1d on object arrays compares every pair (hours at 100k items).
        extra = pd.Index(rated_items).difference(pd.Index(cat_ids)).to_numpy(dtype=str)
        item_ids = np.concatenate([cat_ids.astype(str), np.sort(extra)])
    else:
        item_ids = np.sort(rated_items)
    user_ids = np.array(sorted(pd.unique(users), key=_natural_key))
    if item_table is None or not len(item_table):
        item_ids = np.array(sorted(item_ids, key=_natural_key))
    uidx = pd.Index(user_ids).get_indexer(users)
    iidx = pd.Index(item_ids).get_indexer(items)

    pairs = uidx.astype(np.int64) * len(item_ids) + iidx
    dup = pd.Index(pairs).duplicated()
    if dup.any():
        k = int(np.flatnonzero(dup)[0])
        first = int(np.flatnonzero(pairs == pairs[k])[0])
        raise DataError(f"{source}: user {str(users[k])!r} has item {str(items[k])!r} twice (data rows {first + 1} and "
                        f"{k + 1}); keep one row per user and item (e.g. the latest rating) before loading")
    # Entries sorted by (user, item) are already CSR order: build both matrices on one structure
    # directly (no COO round trip, so explicit 0 ratings are kept and the structures cannot differ).
    order = np.lexsort((iidx, uidx))
    shape = (len(user_ids), len(item_ids))
    indptr = np.concatenate([[0], np.cumsum(np.bincount(uidx, minlength=shape[0]))])
    indices = iidx[order].astype(np.int32)
    R = sp.csr_matrix((r[order].astype(np.float32), indices, indptr), shape=shape)
    T = sp.csr_matrix((ts[order], indices.copy(), indptr.copy()), shape=shape)

    table = empty_item_table(len(item_ids))
    if item_table is not None and len(item_table):
        it = item_table.set_index(item_table["item_id"].astype(str))
        for col in ITEM_COLUMNS:
            if col in it.columns:
                vals = it[col].reindex(item_ids).fillna("").astype(str).to_numpy()
                table[col] = vals
    return InteractionData(name=name, ratings=R, timestamps=T, user_ids=user_ids, item_ids=item_ids, items=table)


def _natural_key(s: str):
    """Sort numeric ids numerically and others lexically, numbers first."""
    return (0, int(s), "") if s.isdigit() else (1, 0, s)
