"""Turn library errors into one-line messages and exit codes."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import typer

from bnfold.errors import BnfoldError


def error_text(exc: BnfoldError | OSError, path: object = None) -> str:
    """What went wrong, in command-line terms: a BnfoldError's message, or an OSError's file
    (else ``path``) and reason."""
    if isinstance(exc, BnfoldError):
        return str(exc.cli_message or exc)
    where = exc.filename or path
    return f"{where}: {exc.strerror or exc}" if where else str(exc.strerror or exc)


def error_line(exc: BnfoldError) -> str:
    """The one line ``bnfold: error: ...`` for ``exc``, in command-line terms."""
    return f"bnfold: error: {error_text(exc)}"


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
        print(f"bnfold: error: {error_text(exc)}", file=sys.stderr)
        raise typer.Exit(2) from None
