"""Loaders, splits and bad input."""
import numpy as np
import pytest

from recsys.errors import DataError, ManifestError
from recsys.loaders import load_dataset
from recsys.splits import TEST, TRAIN, VALID, cold_item_split, leave_last_out, load_split, ratio_split, save_split


def _write(p, text):
    p.write_text(text)
    return p


def test_atomic_loader_with_items(tmp_path):
    d = tmp_path / "toy"
    d.mkdir()
    _write(d / "toy.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                            "1\t10\t4\t100\n1\t11\t2\t101\n2\t10\t5\t102\n")
    _write(d / "toy.item", "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
                           "10\tHeat\t1995\tAction Crime\n11\tBabe\t1995\tComedy\n12\tUnrated\t1990\tDrama\n")
    data = load_dataset(d)
    assert (data.n_users, data.n_items, data.nnz) == (2, 3, 3)         # item 12 kept: cold-start
    i = data.item_index("10")
    assert data.title(i) == "Heat" and "Action" in data.items.at[i, "text"]
    assert data.ratings[data.user_index("1"), i] == 4
    with pytest.raises(DataError, match="unknown user id"):
        data.user_index("99")


def test_predefined_split(tmp_path):
    d = tmp_path / "ps"
    d.mkdir()
    head = "user_id:token\titem_id:token\trating:float\n"
    _write(d / "ps.train.inter", head + "1\t1\t3\n1\t2\t4\n2\t1\t5\n")
    _write(d / "ps.valid.inter", head + "1\t3\t2\n")
    _write(d / "ps.test.inter", head + "2\t3\t1\n")
    data = load_dataset(d)
    parts = data.extra["predefined_split"]
    assert sorted(parts.tolist()) == [0, 0, 0, 1, 2]
    r = data.ratings
    u2 = data.user_index("2")
    row = slice(r.indptr[u2], r.indptr[u2 + 1])
    assert parts[row][list(r.indices[row]).index(data.item_index("3"))] == TEST


def test_movielens_formats(tmp_path):
    d = tmp_path / "ml"
    d.mkdir()
    _write(d / "u.data", "1\t5\t3\t881250949\n2\t5\t4\t881250950\n")
    _write(d / "u.item", "5|Copycat (1995)|01-Jan-1995||url|" + "|".join(["0"] * 11 + ["1"] + ["0"] * 7) + "\n")
    data = load_dataset(d)
    assert data.nnz == 2 and data.title(0) == "Copycat (1995)" and "Horror" in data.items.at[0, "categories"]
    d2 = tmp_path / "ml1m"
    d2.mkdir()
    _write(d2 / "ratings.dat", "1::7::5::978300760\n")
    _write(d2 / "movies.dat", "7::Sabrina (1995)::Comedy|Romance\n")
    assert load_dataset(d2).title(0) == "Sabrina (1995)"
    d3 = tmp_path / "latest"
    d3.mkdir()
    _write(d3 / "ratings.csv", "userId,movieId,rating,timestamp\n1,3,4.5,1\n")
    _write(d3 / "movies.csv", "movieId,title,genres\n3,Up (2009),Animation\n")
    assert load_dataset(d3).ratings.data.tolist() == [4.5]


def test_csv_column_mapping(tmp_path):
    f = _write(tmp_path / "log.csv", "who,what,stars\na,x,1\nb,x,2\n")
    data = load_dataset(f, "csv", {"user": "who", "item": "what", "rating": "stars"})
    assert data.n_users == 2 and data.n_items == 1
    with pytest.raises(DataError, match="missing user column 'user_id'"):
        load_dataset(f, "csv")


@pytest.mark.parametrize("body,match", [
    ("user_id,item_id,rating\n1,2,abc\n", "not a finite number"),
    ("user_id,item_id,rating\n1,2,nan\n", "not a finite number"),
    ("user_id,item_id,rating\n-1,2,3\n", "negative user id"),
    ("user_id,item_id,rating\n1,2,3\n1,2,4\n", r"twice \(data rows 1 and 2\)"),
    ("user_id,item_id,rating\n", "no interactions"),
    ("", "file is empty"),
])
def test_bad_input_is_one_clear_error(tmp_path, body, match):
    f = _write(tmp_path / "bad.csv", body)
    with pytest.raises(DataError, match=match):
        load_dataset(f, "csv", duplicates="refuse")


def test_rerated_items_keep_the_latest_row_and_say_how_many_merged(tmp_path, caplog):
    f = _write(tmp_path / "r.csv", "user_id,item_id,rating,timestamp\n1,2,3,100\n1,5,4,50\n1,2,5,300\n"
                                   "1,2,1,200\n2,2,4,10\n")
    d = load_dataset(f, "csv")
    assert d.ratings.nnz == 3 and "2 duplicate (user, item) row(s) merged" in caplog.text
    u, i = d.user_index("1"), list(d.item_ids).index("2")
    assert d.ratings[u, i] == 5.0 and d.timestamps[u, i] == 300           # the latest by timestamp, not the last row
    g = _write(tmp_path / "n.csv", "user_id,item_id,rating\n1,2,3\n1,2,4\n")
    assert load_dataset(g, "csv").ratings.data.tolist() == [4.0]          # no timestamps: the last row


def test_missing_path():
    with pytest.raises(DataError, match="no such file"):
        load_dataset("/nonexistent/dir")


def test_ratio_split_proportions_and_persistence(tiny_data, tmp_path):
    s = ratio_split(tiny_data, (0.8, 0.1, 0.1), seed=0)
    n = np.diff(tiny_data.ratings.indptr)
    for u in range(tiny_data.n_users):
        p = s.parts[tiny_data.ratings.indptr[u]:tiny_data.ratings.indptr[u + 1]]
        assert (p == TEST).sum() == round(n[u] * 0.1) and (p == TRAIN).sum() >= 1
    assert np.array_equal(s.parts, ratio_split(tiny_data, seed=0).parts)
    assert not np.array_equal(s.parts, ratio_split(tiny_data, seed=1).parts)
    save_split(s, tmp_path / "split", tiny_data)
    assert np.array_equal(load_split(tmp_path / "split", tiny_data).parts, s.parts)
    other_data = tiny_data
    other_data.ratings.data[0] += 1                               # data changed -> refuse
    with pytest.raises(ManifestError, match="different data"):
        load_split(tmp_path / "split", other_data)


def test_leave_last_out_and_cold_items(tiny_data):
    s = leave_last_out(tiny_data)
    r, t = tiny_data.ratings, tiny_data.timestamps
    for u in range(tiny_data.n_users):
        sl = slice(r.indptr[u], r.indptr[u + 1])
        assert t.data[sl][s.parts[sl] == TEST][0] == t.data[sl].max()
        assert (s.parts[sl] == VALID).sum() == 1
    c = cold_item_split(tiny_data, 0.2, seed=0)
    train = c.matrix(tiny_data, "train")
    assert len(c.cold_items) > 0
    assert np.isin(train.indices, c.cold_items).sum() == 0
