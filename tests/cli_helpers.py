"""Running the CLI as a user does: a child process with its output piped (no terminal)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
ZOO = MODELS / "zoo"


def cli(*args: object, columns: int = 80, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python -m bnfold ARGS`` with ``COLUMNS`` set (rich's width for piped output)."""
    return subprocess.run(
        [sys.executable, "-m", "bnfold", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": str(columns)},
        timeout=timeout,
    )


def invoke(*args: object, columns: int = 80) -> subprocess.CompletedProcess[str]:
    """The CLI in this process (typer's CliRunner, output captured as when piped), with
    ``COLUMNS`` set; the result shaped like ``cli``'s."""
    from typer.testing import CliRunner

    from bnfold.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": str(columns)})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return subprocess.CompletedProcess(
        [str(a) for a in args], result.exit_code, result.stdout, result.stderr
    )
