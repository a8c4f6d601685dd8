"""Atomic writes: a failure leaves the destination as it was and no temporary behind; a directory is
replaced in one step (the old or the new one is always there)."""
import os
import threading

import pytest

from recsys.io import atomic_dir, atomic_path, exchange_paths, write_text


def _names(d):
    return sorted(p.name for p in d.iterdir())


def test_atomic_path_replaces_on_success_and_keeps_dest_on_error(tmp_path):
    dest = tmp_path / "f.txt"
    write_text(dest, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(dest) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert dest.read_text() == "old" and _names(tmp_path) == ["f.txt"]
    with atomic_path(dest) as tmp:
        tmp.write_text("new")
    assert dest.read_text() == "new" and _names(tmp_path) == ["f.txt"]


def test_atomic_dir_replaces_whole_or_not_at_all(tmp_path):
    dest = tmp_path / "d"
    with atomic_dir(dest) as tmp:
        (tmp / "a").write_text("1")
    assert _names(dest) == ["a"]
    with pytest.raises(RuntimeError):
        with atomic_dir(dest) as tmp:
            (tmp / "b").write_text("2")
            raise RuntimeError("failed build")
    assert _names(dest) == ["a"] and _names(tmp_path) == ["d"]
    with atomic_dir(dest) as tmp:
        (tmp / "c").write_text("3")
    assert _names(dest) == ["c"] and _names(tmp_path) == ["d"]          # old contents gone, no leftovers


@pytest.mark.skipif(os.name != "posix", reason="POSIX only")
def test_atomic_dir_never_leaves_the_destination_missing(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    if not exchange_paths(a, b):
        pytest.skip("renameat2 RENAME_EXCHANGE is not available here (two renames are used)")
    dest = tmp_path / "d"
    with atomic_dir(dest) as tmp:
        (tmp / "v").write_text("0")
    missing = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            if not dest.exists():
                missing.append(1)
    t = threading.Thread(target=watch)
    t.start()
    for i in range(200):
        with atomic_dir(dest) as tmp:
            (tmp / "v").write_text(str(i))
    stop.set()
    t.join()
    assert not missing and (dest / "v").read_text() == "199"
