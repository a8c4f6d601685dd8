"""Readers for the formats users have: RecBole atomic files, MovieLens native, CSV/Parquet.

Each reader returns :class:`recsys.data.InteractionData`; a pre-split RecBole dataset
also returns the split it defines (``data.extra["predefined_split"]``: part per stored entry).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.data import InteractionData, from_interactions
from recsys.errors import DataError

log = logging.getLogger(__name__)

PART_TRAIN, PART_VALID, PART_TEST = 0, 1, 2


def load_dataset(path: str | Path, fmt: str = "auto", columns: dict[str, str] | None = None,
                 name: str | None = None, duplicates: str = "latest") -> InteractionData:
    """Load a dataset from a directory or file.

    fmt: auto | atomic | ml-100k | ml-1m | ml-latest | csv | parquet
    columns: for csv/parquet, map of our names (user, item, rating, timestamp) to the file's columns
    duplicates: a user with the same item on several rows (a re-rating): "latest" keeps the row with
    the latest timestamp (the last such row without timestamps) and logs how many were merged;
    "refuse" stops with the first pair
    """
    if duplicates not in ("latest", "refuse"):
        raise DataError(f"duplicates: expected latest or refuse, got {duplicates!r}")
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file or directory")
    if fmt == "auto":
        fmt = detect_format(p)
    readers = {"atomic": load_atomic, "ml-100k": load_movielens_100k, "ml-1m": load_movielens_dat,
               "ml-latest": load_movielens_csv}
    if fmt in readers:
        return readers[fmt](p, name=name, duplicates=duplicates)
    if fmt in ("csv", "parquet"):
        return load_table(p, columns=columns, name=name, duplicates=duplicates)
    raise DataError(f"{p}: unknown format {fmt!r} (use atomic, ml-100k, ml-1m, ml-latest, csv or parquet)")


def latest_rows(users: pd.Series, items: pd.Series, ts: pd.Series | None, policy: str, src: str) -> np.ndarray:
    """(n,) bool: the rows to keep. Several rows of one (user, item): with ``latest`` the one with the
    latest timestamp (ties and no timestamps: the last row), with a warning saying how many were merged;
    with ``refuse`` every row (from_interactions then names the first pair)."""
    key = pd.Series(np.asarray(users).astype(str)) + "\x00" + pd.Series(np.asarray(items).astype(str))
    keep = np.ones(len(key), bool)
    if policy == "refuse" or not key.duplicated().any():
        return keep
    t = pd.to_numeric(pd.Series(np.asarray(ts)), errors="coerce").fillna(-np.inf).to_numpy() if ts is not None \
        else np.zeros(len(key))
    order = np.lexsort((np.arange(len(key)), t))                 # by time, then row: the last is the latest
    last = ~key.iloc[order].duplicated(keep="last").to_numpy()
    keep[:] = False
    keep[order[last]] = True
    log.warning("%s: %d duplicate (user, item) row(s) merged, kept the latest of each (data.duplicates: refuse "
                "to stop instead)", src, int(len(key) - keep.sum()))
    return keep


def check_rows(df: pd.DataFrame, src: str, user: str, item: str, rating: str | None = None,
               timestamp: str | None = None) -> None:
    """Refuse the first bad data row of one file, numbered as in that file (1 = first row after any
    header), before rows are merged or de-duplicated: a row with too few fields, a missing id, a
    rating or timestamp that is not a finite number."""
    roles = [(r, c) for r, c in (("user", user), ("item", item), ("rating", rating), ("timestamp", timestamp))
             if c is not None and c in df.columns]
    blank = pd.DataFrame({r: df[c].isna().to_numpy() | (df[c].astype(str).str.strip() == "").to_numpy()
                          for r, c in roles})
    if len(roles) >= 3:
        short = blank.iloc[:, -2:].all(axis=1).to_numpy()      # the row stops before its last two fields
        if short.any():
            k = int(np.flatnonzero(short)[0])
            raise DataError(f"{src}: data row {k + 1} has too few fields (expected "
                            f"{', '.join(r for r, _ in roles)})")
    for r, c in roles:
        if r in ("user", "item"):
            bad = blank[r].to_numpy()
            if bad.any():
                raise DataError(f"{src}: missing {r} id on data row {int(np.flatnonzero(bad)[0]) + 1}")
            continue
        v = pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(v)
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            raise DataError(f"{src}: {r} on data row {k + 1} is not a finite number ({str(df[c].iloc[k])!r})")


def unique_item_ids(ids: pd.Series, src: str) -> None:
    """Refuse an item table that lists one id twice (its title and content would be ambiguous)."""
    dup = ids.astype(str).duplicated()
    if dup.any():
        raise DataError(f"{src}: duplicate item id {str(ids.astype(str)[dup].iloc[0])!r} in the item table")


def detect_format(p: Path) -> str:
    if p.is_file():
        if p.suffix in (".parquet", ".pq"):
            return "parquet"
        if p.suffix == ".inter":
            return "atomic"
        return "csv"
    names = {f.name for f in p.iterdir()}
    if any(n.endswith(".inter") for n in names):
        return "atomic"
    if "u.data" in names:
        return "ml-100k"
    if "ratings.dat" in names:
        return "ml-1m"
    if "ratings.csv" in names:
        return "ml-latest"
    raise DataError(f"{p}: cannot tell the format (no .inter, u.data, ratings.dat or ratings.csv); pass --format")


# -- RecBole atomic files -------------------------------------------------------------------
def _read_atomic(path: Path) -> pd.DataFrame:
    """Read one atomic file; header fields are ``name:type``. Returns columns by bare name."""
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")
    try:
        df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=3, encoding="utf-8",
                         encoding_errors="replace")
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file is empty") from None
    except pd.errors.ParserError as e:
        raise DataError(f"{path}: not a tab-separated atomic file ({str(e).splitlines()[0]})") from None
    if len(df.columns) == 1 and any(c in str(df.columns[0]) for c in ",; |"):
        raise DataError(f"{path}: one column only ({str(df.columns[0])[:60]!r}): atomic files are tab-separated")
    df.columns = [c.split(":", 1)[0].strip() for c in df.columns]
    return df


def load_atomic(path: Path, name: str | None = None, duplicates: str = "latest") -> InteractionData:
    """RecBole atomic files: NAME.inter (+ .item, .user), or pre-split NAME.{train,valid,test}.inter."""
    d = path if path.is_dir() else path.parent
    stem = name or (path.name if path.is_dir() else path.name.split(".")[0])
    if not (d / f"{stem}.inter").exists() and not (d / f"{stem}.train.inter").exists():
        # a directory named otherwise than its files: NAME.inter first, else a pre-split NAME.train.inter
        whole = sorted(f for f in d.glob("*.inter") if f.name.count(".") == 1)
        parts = sorted(d.glob("*.train.inter"))
        if whole or parts:
            stem = (whole or parts)[0].name.split(".")[0]
    split_files = [d / f"{stem}.{part}.inter" for part in ("train", "valid", "test")]
    if all(f.exists() for f in split_files):
        frames = []
        for part, f in enumerate(split_files):
            df = _read_atomic(f)
            if part == 0 and len(df) == 0:
                raise DataError(f"{f}: no data rows (the training part of a pre-split dataset is empty)")
            _check_atomic(df, f)
            df["__part"] = part
            frames.append(df)
        inter = pd.concat(frames, ignore_index=True)
        src = str(split_files[0].with_name(f"{stem}.{{train,valid,test}}.inter"))
    else:
        f = d / f"{stem}.inter"
        if not f.exists():
            raise DataError(f"{d}: no {stem}.inter file (nor {stem}.train/valid/test.inter)")
        inter = _read_atomic(f)
        _check_atomic(inter, f)
        src = str(f)
    for col in ("user_id", "item_id"):
        if col not in inter.columns:
            raise DataError(f"{src}: missing column {col!r} (found {', '.join(inter.columns)})")
    rating = inter["rating"] if "rating" in inter.columns else np.ones(len(inter))
    ts = inter["timestamp"] if "timestamp" in inter.columns else None
    item_table = None
    fi = d / f"{stem}.item"
    if fi.exists():
        item_table = _atomic_item_table(_read_atomic(fi), str(fi))
    keep = latest_rows(inter["user_id"], inter["item_id"], ts, duplicates, src)
    inter, rating, ts = inter[keep], np.asarray(rating)[keep], None if ts is None else ts[keep]
    data = from_interactions(stem, inter["user_id"].to_numpy(), inter["item_id"].to_numpy(),
                             rating, None if ts is None else ts.to_numpy(), item_table, source=src)
    data.extra["root"] = str(d)
    fu = d / f"{stem}.user"
    if fu.exists():
        users = _read_atomic(fu)
        if "user_id" in users.columns:
            data.extra["user_table"] = users.set_index("user_id").reindex(data.user_ids).fillna("")
    if "__part" in inter.columns:
        data.extra["predefined_split"] = _parts_in_csr_order(data, inter)
    for extra in ("kg", "link"):
        fx = d / f"{stem}.{extra}"
        if fx.exists():
            data.extra[f"{extra}_path"] = str(fx)
    return data


def _check_atomic(df: pd.DataFrame, f: Path) -> None:
    for col in ("user_id", "item_id"):
        if col not in df.columns:
            raise DataError(f"{f}: missing column {col!r} (found {', '.join(df.columns)})")
    check_rows(df, str(f), "user_id", "item_id", "rating", "timestamp")


def _atomic_item_table(df: pd.DataFrame, src: str) -> pd.DataFrame:
    if "item_id" not in df.columns:
        raise DataError(f"{src}: missing column 'item_id'")
    title_col = next((c for c in ("movie_title", "title", "name") if c in df.columns), None)
    cat_col = next((c for c in ("class", "genre", "genres", "categories", "category") if c in df.columns), None)
    year_col = next((c for c in ("release_year", "year") if c in df.columns), None)
    out = pd.DataFrame({"item_id": df["item_id"].astype(str)})
    out["title"] = df[title_col].astype(str) if title_col else ""
    out["categories"] = df[cat_col].astype(str).str.replace(r"\s+", "|", regex=True) if cat_col else ""
    year = df[year_col].astype(str) if year_col else ""
    text = out["title"]
    if year_col:
        text = text + " (" + year + ")"
    if cat_col:
        text = text + ". Genres: " + df[cat_col].astype(str).str.replace(r"\s+", ", ", regex=True) + "."
    out["text"] = df["text"].astype(str) if "text" in df.columns else text
    out["image_path"] = df["image_path"].astype(str) if "image_path" in df.columns else ""
    out = out.drop_duplicates()                       # repeated identical rows say nothing new
    dup = out["item_id"].duplicated()
    if dup.any():
        raise DataError(f"{src}: duplicate item id {str(out['item_id'][dup].iloc[0])!r} with different "
                        "metadata; keep one row per item")
    return out


def _parts_in_csr_order(data: InteractionData, inter: pd.DataFrame) -> np.ndarray:
    """Map the per-row part labels onto the CSR's stored-entry order: (nnz,) int8."""
    u = pd.Index(data.user_ids).get_indexer(inter["user_id"].astype(str))
    i = pd.Index(data.item_ids).get_indexer(inter["item_id"].astype(str))
    key = u.astype(np.int64) * data.n_items + i
    R = data.ratings
    rows = np.repeat(np.arange(R.shape[0]), np.diff(R.indptr))
    csr_key = rows.astype(np.int64) * data.n_items + R.indices
    pos = pd.Index(key).get_indexer(csr_key)
    return inter["__part"].to_numpy()[pos].astype(np.int8)


# -- MovieLens native ---------------------------------------------------------------------
ML_GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
             "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
             "War", "Western"]


def _movie_text(title: str, genres: list[str]) -> str:
    return f"{title}. Genres: {', '.join(genres)}." if genres else title


def load_movielens_100k(path: Path, name: str | None = None, duplicates: str = "latest") -> InteractionData:
    """u.data (tab: user item rating timestamp) + u.item (pipe: id|title|date|video|url|19 genre flags)."""
    d = path if path.is_dir() else path.parent
    f = d / "u.data"
    df = _read_sep(f, "\t", ["user", "item", "rating", "timestamp"])
    check_rows(df, str(f), "user", "item", "rating", "timestamp")
    table = None
    fi = d / "u.item"
    if fi.exists():
        it = pd.read_csv(fi, sep="|", header=None, dtype=str, encoding="latin-1", keep_default_na=False)
        unique_item_ids(it[0], str(fi))
        flags = it.iloc[:, 5:5 + len(ML_GENRES)].to_numpy() == "1"
        genres = [[g for g, on in zip(ML_GENRES, row) if on] for row in flags]
        table = pd.DataFrame({"item_id": it[0], "title": it[1],
                              "categories": ["|".join(g) for g in genres],
                              "text": [_movie_text(t, g) for t, g in zip(it[1], genres)]})
    df = df[latest_rows(df["user"], df["item"], df["timestamp"], duplicates, str(f))]
    return from_interactions(name or "ml-100k", df["user"].to_numpy(), df["item"].to_numpy(),
                             df["rating"].to_numpy(), df["timestamp"].to_numpy(), table, source=str(f))


def load_movielens_dat(path: Path, name: str | None = None, duplicates: str = "latest") -> InteractionData:
    """ML-1M/10M: ratings.dat (user::item::rating::ts) + movies.dat (id::title::genres)."""
    d = path if path.is_dir() else path.parent
    f = d / "ratings.dat"
    df = _read_sep(f, "::", ["user", "item", "rating", "timestamp"])
    check_rows(df, str(f), "user", "item", "rating", "timestamp")
    table = None
    fm = d / "movies.dat"
    if fm.exists():
        m = _read_sep(fm, "::", ["item_id", "title", "genres"], encoding="latin-1")
        unique_item_ids(m["item_id"], str(fm))
        table = _ml_movies_table(m)
    df = df[latest_rows(df["user"], df["item"], df["timestamp"], duplicates, str(f))]
    return from_interactions(name or d.name, df["user"].to_numpy(), df["item"].to_numpy(),
                             df["rating"].to_numpy(), df["timestamp"].to_numpy(), table, source=str(f))


def load_movielens_csv(path: Path, name: str | None = None, duplicates: str = "latest") -> InteractionData:
    """ml-latest / ml-25m: ratings.csv (userId,movieId,rating,timestamp) + movies.csv (movieId,title,genres)."""
    d = path if path.is_dir() else path.parent
    f = d / "ratings.csv"
    df = _read_csv_checked(f, ["userId", "movieId", "rating", "timestamp"])
    check_rows(df, str(f), "userId", "movieId", "rating", "timestamp")
    table = None
    fm = d / "movies.csv"
    if fm.exists():
        m = _read_csv_checked(fm, ["movieId", "title", "genres"]).rename(columns={"movieId": "item_id"})
        unique_item_ids(m["item_id"], str(fm))
        table = _ml_movies_table(m)
    df = df[latest_rows(df["userId"], df["movieId"], df["timestamp"], duplicates, str(f))]
    return from_interactions(name or d.name, df["userId"].to_numpy(), df["movieId"].to_numpy(),
                             df["rating"].to_numpy(), df["timestamp"].to_numpy(), table, source=str(f))


def _ml_movies_table(m: pd.DataFrame) -> pd.DataFrame:
    genres = m["genres"].astype(str).str.split("|")
    return pd.DataFrame({"item_id": m["item_id"].astype(str), "title": m["title"].astype(str),
                         "categories": m["genres"].astype(str),
                         "text": [_movie_text(t, g) for t, g in zip(m["title"], genres)]})


def _read_sep(f: Path, sep: str, names: list[str], encoding: str = "utf-8") -> pd.DataFrame:
    if not f.exists():
        raise DataError(f"{f}: no such file")
    if f.stat().st_size == 0:
        raise DataError(f"{f}: file is empty")
    try:
        df = pd.read_csv(f, sep=sep, header=None, dtype=str, engine="python" if len(sep) > 1 else "c",
                         encoding=encoding, encoding_errors="replace", keep_default_na=False)
    except pd.errors.ParserError as e:
        raise DataError(f"{f}: cannot parse ({str(e).splitlines()[0]})") from None
    if df.shape[1] < len(names):
        raise DataError(f"{f}: expected {len(names)} fields separated by {sep!r}, found {df.shape[1]}")
    df = df.iloc[:, : len(names)]
    df.columns = names
    return df


def _read_csv_checked(f: Path, required: list[str]) -> pd.DataFrame:
    if not f.exists():
        raise DataError(f"{f}: no such file")
    try:
        df = pd.read_csv(f, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"{f}: file is empty") from None
    except pd.errors.ParserError as e:
        raise DataError(f"{f}: cannot parse ({str(e).splitlines()[0]})") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(f"{f}: missing column(s) {', '.join(missing)} (found {', '.join(df.columns)})")
    return df


# -- Generic tables -------------------------------------------------------------------------
DEFAULT_COLUMNS = {"user": "user_id", "item": "item_id", "rating": "rating", "timestamp": "timestamp"}


def load_table(path: Path, columns: dict[str, str] | None = None, name: str | None = None,
               duplicates: str = "latest") -> InteractionData:
    """CSV or Parquet with a column mapping {user, item, rating?, timestamp?} -> file column names."""
    cols = {**DEFAULT_COLUMNS, **(columns or {})}
    unknown = set(cols) - set(DEFAULT_COLUMNS)
    if unknown:
        raise DataError(f"column mapping: unknown key(s) {', '.join(sorted(unknown))} (use user, item, rating, timestamp)")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")
    try:
        if path.suffix in (".parquet", ".pq"):
            df = pd.read_parquet(path)
        else:
            sep = "\t" if path.suffix in (".tsv", ".tab") else ","
            df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file is empty") from None
    except Exception as e:  # noqa: BLE001 - parser errors of both engines become one line
        raise DataError(f"{path}: cannot read ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    for key in ("user", "item"):
        if cols[key] not in df.columns:
            raise DataError(f"{path}: missing {key} column {cols[key]!r} (found {', '.join(map(str, df.columns))})")
    if columns and "rating" in columns and cols["rating"] not in df.columns:
        raise DataError(f"{path}: missing rating column {cols['rating']!r}")
    check_rows(df, str(path), cols["user"], cols["item"], cols["rating"], cols["timestamp"])
    rating = df[cols["rating"]].to_numpy() if cols["rating"] in df.columns else np.ones(len(df))
    ts = df[cols["timestamp"]].to_numpy() if cols["timestamp"] in df.columns else None
    stem = re.sub(r"\W+", "-", path.stem)
    keep = latest_rows(df[cols["user"]], df[cols["item"]], None if ts is None else pd.Series(ts), duplicates, str(path))
    return from_interactions(name or stem, df[cols["user"]].to_numpy()[keep], df[cols["item"]].to_numpy()[keep],
                             np.asarray(rating)[keep], None if ts is None else ts[keep], None, source=str(path))
