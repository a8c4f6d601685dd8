"""Bad data files get one clear line and exit code 2 from every loader, never a traceback and never a
numpy repr in the message."""
import pandas as pd
import pytest

from cli_inprocess import fedrec

pytestmark = pytest.mark.e2e


def _info(path, fmt="auto", *extra):
    return fedrec("data", "info", path, "--format", fmt, *extra)


def _one_line(r):
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("fedrec: error:"), r.stderr
    assert "Traceback" not in r.stderr and "np." not in lines[0], lines[0]
    return lines[0]


def _atomic(d, inter: str, item: str | None = None):
    d.mkdir(parents=True, exist_ok=True)
    (d / "x.inter").write_text(inter)
    if item is not None:
        (d / "x.item").write_text(item)
    return d


HEAD = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"


@pytest.mark.parametrize("name,make,fmt,expect", [
    ("commas in an atomic file", lambda d: _atomic(d, "user_id:token,item_id:token,rating:float\n1,2,3\n"), "atomic",
     "atomic files are tab-separated"),
    ("wrong field count in u.data", lambda d: (d.mkdir(), (d / "u.data").write_text("1\t2\t3\n1\t3\t4\n"))[0] or d,
     "ml-100k", "expected 4 fields"),
    ("unknown format", lambda d: _atomic(d, HEAD + "1\t2\t3\t4\n"), "xml", "unknown format"),
    ("non-finite timestamp", lambda d: _atomic(d, HEAD + "1\t2\t3\t100\n1\t3\t4\tinf\n"), "atomic",
     "timestamp on data row 2 is not a finite number"),
    ("duplicate id in the item table", lambda d: _atomic(d, HEAD + "1\t7\t3\t100\n",
                                                          "item_id:token\ttitle:token_seq\n7\tA\n7\tB\n"), "atomic",
     "duplicate item id '7' with different metadata"),
    ("corrupt parquet", lambda d: (d.mkdir(), (d / "r.parquet").write_bytes(b"PAR1 not really"))[0] or d / "r.parquet",
     "parquet", "cannot read"),
])
def test_bad_files_are_one_line(tmp_path, name, make, fmt, expect):
    path = make(tmp_path / "data")
    assert expect in _one_line(_info(path, fmt)), name


def test_rerating_is_merged_by_default_and_refused_on_request(tmp_path):
    d = _atomic(tmp_path / "data", HEAD + "196\t2\t3\t100\n196\t5\t4\t101\n196\t2\t5\t102\n")
    r = _info(d, "atomic")
    assert r.returncode == 0 and '"interactions": 2' in r.stdout and "1 duplicate (user, item) row(s) merged" in r.stderr
    assert "user '196' has item '2' twice (data rows 1 and 3)" in _one_line(_info(d, "atomic", "--duplicates", "refuse"))


def test_parquet_loads_and_a_missing_column_is_named(tmp_path):
    """A table without ratings loads as implicit feedback (every row a 1); without items it is refused."""
    df = pd.DataFrame({"user_id": ["a", "a", "b"], "item_id": ["x", "y", "x"], "rating": [4.0, 3.0, 5.0],
                       "timestamp": [1.0, 2.0, 3.0]})
    df.to_parquet(tmp_path / "r.parquet")
    r = _info(tmp_path / "r.parquet", "parquet")
    assert r.returncode == 0, r.stderr
    df.drop(columns=["rating"]).to_parquet(tmp_path / "s.parquet")
    r = _info(tmp_path / "s.parquet", "parquet")
    assert r.returncode == 0 and '"rating_max": 1.0' in r.stdout
    df.drop(columns=["item_id"]).to_parquet(tmp_path / "t.parquet")
    assert "item" in _one_line(_info(tmp_path / "t.parquet", "parquet"))
