"""Run ``fedrec`` in this process (typer's CliRunner) instead of a subprocess that imports torch again.

Returns what ``subprocess.run(..., capture_output=True, text=True)`` would: ``returncode``, ``stdout`` and
``stderr``. Log records go to the captured stderr (as ``fedrec.cli.main`` sends them in a real process), and
an exception the CLI did not turn into one line is written there as a traceback with return code 1, so the
"one line, exit 2, no traceback" checks mean the same in process. The real entry point keeps one
subprocess check (tests/test_cli.py::test_the_installed_entry_point_prints_one_line_and_exits_2)."""
from __future__ import annotations

import logging
import os
import sys
import traceback
from contextlib import contextmanager
from dataclasses import dataclass

from typer.testing import CliRunner


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is at emit time (CliRunner swaps it in during invoke)."""

    def __init__(self):
        super().__init__()
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _):
        pass


@contextmanager
def _environment(cwd, env):
    old_cwd, old_env = os.getcwd(), {k: os.environ.get(k) for k in (env or {})}
    try:
        if cwd is not None:
            os.chdir(cwd)
        os.environ.update({k: str(v) for k, v in (env or {}).items()})
        yield
    finally:
        os.chdir(old_cwd)
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def fedrec(*args, cwd=None, env=None) -> Result:
    """``fedrec ARGS`` in process. env: extra variables set only for the call."""
    from fedrec.cli import NOISY_LOGGERS, app, quiet_open_clip

    root = logging.getLogger()
    handler, level = _CurrentStderr(), root.level
    handler.addFilter(quiet_open_clip)                   # the logging set-up of fedrec.cli.main
    noisy = {n: logging.getLogger(n).level for n in NOISY_LOGGERS}
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    for n in noisy:
        logging.getLogger(n).setLevel(logging.WARNING)
    try:
        with _environment(cwd, env):
            r = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=True)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        for n, lv in noisy.items():
            logging.getLogger(n).setLevel(lv)
    stderr = r.stderr
    code = r.exit_code
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        stderr += "".join(traceback.format_exception(r.exception))
        code = 1
    return Result(code, r.stdout, stderr)
