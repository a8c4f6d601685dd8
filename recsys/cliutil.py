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
