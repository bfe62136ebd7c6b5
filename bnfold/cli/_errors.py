"""Turn library errors into one-line messages and exit codes."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import typer

from bnfold.errors import BnfoldError


def error_line(exc: BnfoldError) -> str:
    """The one line ``bnfold: error: ...`` for ``exc``, in command-line terms."""
    return f"bnfold: error: {exc.cli_message or exc}"


@contextlib.contextmanager
def cli_errors() -> Iterator[None]:
    """Print a BnfoldError as one line on stderr and exit with its code; an OSError (a full disk,
    an unreadable file) is one line naming the file, exit 2."""
    try:
        yield
    except BnfoldError as exc:
        print(error_line(exc), file=sys.stderr)
        raise typer.Exit(exc.exit_code) from None
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"bnfold: error: {where}{exc.strerror or exc}", file=sys.stderr)
        raise typer.Exit(2) from None
