"""Atomic file writes: write a temporary file beside the destination, then rename it."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, else vanishes."""
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temporary(dest)
    try:
        yield tmp
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _create_temporary(dest: Path) -> Path:
    """A new empty file beside ``dest``, ending like it, with the umask's permissions.

    (``tempfile.mkstemp`` would create it 0600, and the renamed file would keep that.)
    """
    while True:
        tmp = dest.parent / f".{dest.name}.{secrets.token_hex(4)}.tmp{dest.suffix}"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, data: object) -> Path:
    """Write ``data`` as indented JSON with a trailing newline, atomically; return the path."""
    write_text(path, json.dumps(data, indent=2) + "\n")
    return Path(path)
