"""What commands print: tables on stdout (at the terminal's width, never forced), one line per
file written on stderr, JSON to a file or stdout (``--json PATH|-``), nothing with ``--quiet``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console, RenderableType

from bnfold import atomic, paths
from bnfold.cli.verify_options import OutputFlags


def stdout() -> Console:
    """A console on stdout at the terminal's width (80, or ``COLUMNS``, when piped)."""
    return Console()


def show(flags: OutputFlags, *renderables: RenderableType) -> None:
    """Print on stdout unless ``--quiet`` or ``--json -``."""
    if flags.human:
        console = stdout()
        for r in renderables:
            console.print(r)


def status(flags: OutputFlags, text: str) -> None:
    """One status line on stderr (files written, progress notes) unless ``--quiet``."""
    if not flags.quiet:
        Console(stderr=True, highlight=False).print(text, style="dim", soft_wrap=True)


def wrote(flags: OutputFlags, path: str | Path) -> None:
    """Confirm a written file: ``wrote PATH`` on stderr (not with ``--quiet``)."""
    status(flags, f"wrote {path}")


def json_output(flags: OutputFlags, option: str = "--json") -> paths.Output | None:
    """The ``--json`` file as an output to guard (None for stdout or no JSON)."""
    path = flags.json_file
    return paths.Output(option, path) if path is not None else None


def emit_json(flags: OutputFlags, data: Any) -> None:
    """Write ``data`` where ``--json`` says: stdout for '-', else atomically to the file (and
    confirm it)."""
    if flags.json_stdout:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        sys.stdout.flush()
    elif flags.json_file is not None:
        atomic.write_json(flags.json_file, data)
        wrote(flags, flags.json_file)


def write_report(flags: OutputFlags, path: Path | None, data: Any) -> None:
    """Write a JSON report to ``path`` (``--report``, the older name of ``--json PATH``)."""
    if path is not None:
        atomic.write_json(path, data)
        wrote(flags, path)
