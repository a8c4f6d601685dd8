"""Progress bars for batch jobs. On a terminal: tqdm's live bar. Into a log file (nohup, a scheduler,
CI, the dashboard's job log): one update at most every LOG_INTERVAL_S seconds, plain ASCII, instead
of one carriage-return line per step, so a long job's log stays readable."""
from __future__ import annotations

import sys

LOG_INTERVAL_S = 30.0


def _is_tty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):        # closed or not a real stream
        return False


def progress_bar(iterable=None, **kw):
    """tqdm(iterable, **kw) with log-friendly defaults when its stream (``file``, default stderr) is
    not a terminal. Explicit ``mininterval`` / ``ascii`` arguments win."""
    from tqdm.auto import tqdm

    if not _is_tty(kw.get("file") or sys.stderr):
        kw.setdefault("mininterval", LOG_INTERVAL_S)
        kw.setdefault("ascii", True)
    return tqdm(iterable, **kw)
