"""The Makefile's own variables: `make demo` decides whether to serve the dashboard from DEMO_SERVE,
and a trailing comment on a make assignment keeps the spaces before it in the value ("1     " is
not "1"), which once silently stopped the demo from serving."""
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_demo_variables_have_no_stray_whitespace(tmp_path):
    probe = tmp_path / "probe.mk"
    probe.write_text(f"include {ROOT / 'Makefile'}\nprint-%:\n\t@echo '[$($*)]'\n")
    names = ["DEMO_SERVE", "DEMO_RUN", "DEMO_RANK", "DEMO_IDX", "PORT", "VENV", "PYTHON"]
    out = subprocess.run(["make", "-s", "--no-print-directory", "-C", str(ROOT), "-f", str(probe)]
                         + [f"print-{n}" for n in names], capture_output=True, text=True, check=True).stdout
    values = dict(zip(names, (ln.strip()[1:-1] for ln in out.splitlines())))
    assert values["DEMO_SERVE"] == "1" and values["PORT"] == "8501"
    for name, v in values.items():
        assert v and v == v.strip() and " " not in v, (name, v)
