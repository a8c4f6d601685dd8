"""Every loader against the same bad files: empty, header only, wrong separator, wrong field count,
non-numeric and non-finite values, an empty id, duplicate ids in the item table. Each must stop with one
DataError line that names the file and shows plain values (the CLI prints it as ``fedrec: error: ...``
with exit code 2, tests/test_bad_input.py), never another exception and never a half-loaded dataset."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from recsys.errors import DataError
from recsys.loaders import load_dataset

GOOD = [["1", "10", "4", "100"], ["2", "11", "3", "101"], ["1", "11", "5", "102"]]
ITEMS = [["10", "Alpha"], ["11", "Beta"], ["12", "Gamma"]]


def _lines(rows, sep, header=None):
    out = [] if header is None else [sep.join(header)]
    return "\n".join(out + [sep.join(r) for r in rows]) + "\n"


def _write(f: Path, text: str | None):
    f.write_text("" if text is None else text)


class Fmt:
    """One on-disk format: how to write ratings rows and an item table, and what to pass the loader."""
    name: str
    sep: str
    header: list[str] | None = None
    columns: dict | None = None

    def write(self, d: Path, rows, sep=None, items=ITEMS, empty=False) -> Path:
        raise NotImplementedError

    def text(self, rows, sep=None, empty=False):
        if empty:
            return None
        return _lines(rows, sep or self.sep, self.header)


class Atomic(Fmt):
    name, sep = "atomic", "\t"
    header = ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]

    def write(self, d, rows, sep=None, items=ITEMS, empty=False):
        _write(d / "x.inter", self.text(rows, sep, empty))
        _write(d / "x.item", _lines(items, "\t", ["item_id:token", "title:token_seq"]))
        return d


class PreSplit(Atomic):
    name = "pre-split"

    def write(self, d, rows, sep=None, items=ITEMS, empty=False):
        _write(d / "x.train.inter", self.text(rows, sep, empty))
        for part in ("valid", "test"):
            _write(d / f"x.{part}.inter", self.text(GOOD[:1], None, False))
        _write(d / "x.item", _lines(items, "\t", ["item_id:token", "title:token_seq"]))
        return d


class UData(Fmt):
    name, sep = "ml-100k", "\t"

    def write(self, d, rows, sep=None, items=ITEMS, empty=False):
        _write(d / "u.data", self.text(rows, sep, empty))
        _write(d / "u.item", "".join(f"{i}|{t}|01-Jan-1995||http://x|" + "|".join(["0"] * 19) + "\n"
                                     for i, t in items))
        return d


class RatingsDat(Fmt):
    name, sep = "ml-1m", "::"

    def write(self, d, rows, sep=None, items=ITEMS, empty=False):
        _write(d / "ratings.dat", self.text(rows, sep, empty))
        _write(d / "movies.dat", "".join(f"{i}::{t}::Comedy\n" for i, t in items))
        return d


class RatingsCsv(Fmt):
    name, sep = "ml-latest", ","
    header = ["userId", "movieId", "rating", "timestamp"]

    def write(self, d, rows, sep=None, items=ITEMS, empty=False):
        _write(d / "ratings.csv", self.text(rows, sep, empty))
        _write(d / "movies.csv", _lines([[i, t, "Comedy"] for i, t in items], ",", ["movieId", "title", "genres"]))
        return d


class Csv(Fmt):
    name, sep = "csv", ","
    header = ["who", "what", "stars", "when"]
    columns = {"user": "who", "item": "what", "rating": "stars", "timestamp": "when"}

    def write(self, d, rows, sep=None, items=ITEMS, empty=False):
        _write(d / "log.csv", self.text(rows, sep, empty))
        return d / "log.csv"


class Parquet(Csv):
    name = "parquet"

    def write(self, d, rows, sep=None, items=ITEMS, empty=False):
        f = d / "log.parquet"
        if empty:
            f.write_bytes(b"")
            return f
        if sep is not None:                        # a "wrong separator" parquet: everything in one column
            pd.DataFrame({sep.join(self.header): [sep.join(r) for r in rows]}).to_parquet(f)
            return f
        if not rows:
            pd.DataFrame({c: pd.Series([], dtype=str) for c in self.header}).to_parquet(f)
            return f
        width = max(len(r) for r in rows)
        df = pd.DataFrame([r + [None] * (width - len(r)) for r in rows], columns=self.header[:width])
        df.to_parquet(f)
        return f


FORMATS = [Atomic(), PreSplit(), UData(), RatingsDat(), RatingsCsv(), Csv(), Parquet()]
FMT_ARG = {"pre-split": "atomic"}

# case name -> (rows, keyword arguments of write, what the message must say)
CASES = {
    "empty": (GOOD, {"empty": True}, "empty"),
    "header only": ([], {}, ""),
    "wrong separator": (GOOD, {"sep": ";"}, ""),     # worded per format: tab-separated, fields, columns
    "wrong field count": (GOOD + [["3", "12"]], {}, "data row 4 has too few fields"),
    "non-numeric rating": (GOOD + [["3", "12", "lots", "103"]], {}, "rating"),
    "non-finite rating": (GOOD + [["3", "12", "inf", "103"]], {}, "rating"),
    "NaN rating": (GOOD + [["3", "12", "nan", "103"]], {}, "rating"),
    "non-numeric timestamp": (GOOD + [["3", "12", "4", "soon"]], {}, "timestamp"),
    "non-finite timestamp": (GOOD + [["3", "12", "4", "-inf"]], {}, "timestamp"),
    "empty user id": (GOOD + [["", "12", "4", "103"]], {}, "user"),
    "duplicate item ids": (GOOD, {"items": ITEMS + [["10", "Alpha again"]]}, "duplicate item id '10'"),
}
HEADERLESS = {"ml-100k", "ml-1m"}
NO_ITEM_TABLE = {"csv", "parquet"}


def _params():
    for f in FORMATS:
        for case in CASES:
            if case == "header only" and f.name in HEADERLESS:
                continue                           # no header to leave alone: "empty" covers it
            if case == "duplicate item ids" and f.name in NO_ITEM_TABLE:
                continue
            yield pytest.param(f, case, id=f"{f.name}-{case}")


@pytest.mark.parametrize("fmt,case", list(_params()))
def test_bad_file_is_one_clear_line(tmp_path, fmt, case):
    rows, kw, expect = CASES[case]
    d = tmp_path / "data"
    d.mkdir()
    path = fmt.write(d, rows, **kw)
    with pytest.raises(DataError) as e:
        load_dataset(path, FMT_ARG.get(fmt.name, fmt.name), columns=fmt.columns)
    msg = str(e.value)
    assert "\n" not in msg and "np." not in msg and "array(" not in msg, msg
    assert str(d) in msg, msg                                   # names the file (or its directory)
    assert expect in msg, msg


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_the_good_file_loads(tmp_path, fmt):
    """The control: the same writer with good rows loads, so each failure above is the bad input's."""
    d = tmp_path / "data"
    d.mkdir()
    data = load_dataset(fmt.write(d, GOOD), FMT_ARG.get(fmt.name, fmt.name), columns=fmt.columns)
    assert data.n_users == 2 and data.ratings.nnz == 3


def test_unknown_format_is_one_line(tmp_path):
    d = Atomic().write(tmp_path, GOOD)
    with pytest.raises(DataError, match="unknown format 'xml'"):
        load_dataset(d, "xml")
