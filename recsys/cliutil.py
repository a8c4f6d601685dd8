"""Shared CLI plumbing: bad input becomes one line on stderr and exit code 2, never a traceback."""
from __future__ import annotations

import functools

import typer

from recsys.errors import FedrecError


def _fail(msg: str) -> None:
    typer.echo(f"fedrec: error: {msg}", err=True)
    raise typer.Exit(2)


def cli_errors(fn):
    """Turn user-input errors into one line and exit code 2; never a traceback for those."""
    @functools.wraps(fn)
    def wrapper(*a, **kw):
        try:
            return fn(*a, **kw)
        except FedrecError as e:
            _fail(str(e))
        except (ValueError, FileNotFoundError, PermissionError, IsADirectoryError) as e:
            _fail(f"{type(e).__name__}: {e}")
        except KeyboardInterrupt:
            typer.echo("fedrec: interrupted", err=True)
            raise typer.Exit(130)
    return wrapper


# glibc mallopt parameters (malloc.h). The mmap threshold's ceiling on 64-bit glibc is 32 MiB.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed blocks up to 32 MiB in the heap instead of returning them to the OS.

    Why: a training round allocates and frees the same multi-MiB tensors (each cohort's copies of its
    personal encoder layers) every round. By default glibc trims the heap top and unmaps large blocks when
    they are freed, so every round page-faults them in again, and on a VM a page fault is slow: on the 2-core dev VM this made an
    explicit ml-100k round of 283 clients spend more time in page faults than in arithmetic (see
    docs/benchmarks.md, "Speed"). Peak memory does not grow (the same blocks are live at the peak); memory
    freed at the end of a job is kept by the process until it exits. Set FEDREC_KEEP_FREED_MEMORY=0 to
    leave glibc's defaults alone. No-op (returns False) off glibc."""
    import ctypes
    import os

    if os.environ.get("FEDREC_KEEP_FREED_MEMORY", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) and mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1))
