"""Atomic file writes that survive faults: a temporary beside the destination, fsync, rename.

Every temporary file or staging folder bnfold writes is registered while it exists. The CLI
installs ``exit_on_signals``: SIGINT, SIGTERM or SIGHUP then removes everything registered and
exits 128 + the signal number (130, 143, 129) at once, even while worker threads are still
writing (``os._exit``; writes into removed files go nowhere). Renames that put several files
in place run in ``critical()``: a signal arriving then is handled right after them, so an
output is never half-committed. A failed write (full disk, file-size limit) raises OSError and
leaves the destination as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

_STAGED: dict[Path, None] = {}  # temporary files and staging folders that exist now
_CREATED: dict[Path, None] = {}  # folders created for outputs (removed on a signal if empty)
_LOCK = threading.Lock()
STAGING_PREFIX = ".bnfold-"  # the hidden folders a model is staged in beside its destination
_CRITICAL = 0
_PENDING: list[int] = []
SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and replaces ``path``,
    else it vanishes. Folders created for it are removed again if nothing was written."""
    dest = Path(path)
    with created_folders(dest.parent):
        tmp = _create_temporary(dest)
        try:
            yield tmp
            fsync_file(tmp)
            with critical():
                os.replace(tmp, dest)
            fsync_folder(dest.parent)
        finally:
            tmp.unlink(missing_ok=True)
            _unregister(tmp)


@contextlib.contextmanager
def staging_folder(parent: Path) -> Iterator[Path]:
    """A new hidden folder in ``parent`` (registered before it exists), removed with whatever
    is left in it when the block ends."""
    tmp = _create_registered(lambda: parent / f"{STAGING_PREFIX}{secrets.token_hex(6)}", Path.mkdir)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        _unregister(tmp)


def _register(path: Path) -> None:
    with _LOCK:
        _STAGED[path] = None


def _unregister(path: Path) -> None:
    with _LOCK:
        _STAGED.pop(path, None)


@contextlib.contextmanager
def created_folders(folder: Path) -> Iterator[None]:
    """Create ``folder`` (and missing parents); remove those created if the block fails and they
    are still empty."""
    missing = missing_folders([folder])
    with _LOCK:
        _CREATED.update(dict.fromkeys(missing))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        yield
    except BaseException:
        remove_empty(missing)
        raise
    finally:
        with _LOCK:
            for d in missing:
                _CREATED.pop(d, None)


def missing_folders(folders: Iterable[Path]) -> list[Path]:
    """The folders (and parents) among ``folders`` that do not exist yet, deepest first."""
    missing: set[Path] = set()
    for folder in folders:
        f = Path(os.path.abspath(folder))
        while not f.exists() and f.parent != f:
            missing.add(f)
            f = f.parent
    return sorted(missing, key=lambda p: len(p.parts), reverse=True)


def remove_empty(folders: list[Path]) -> None:
    """Remove those of ``folders`` (deepest first) that are empty; leave the others."""
    for d in folders:
        with contextlib.suppress(OSError):
            d.rmdir()


@contextlib.contextmanager
def critical() -> Iterator[None]:
    """Defer signals handled by ``exit_on_signals`` until the block is done."""
    global _CRITICAL
    _CRITICAL += 1
    try:
        yield
    finally:
        _CRITICAL -= 1
        if _CRITICAL == 0 and _PENDING:
            _exit_for(_PENDING[0])


def exit_on_signals() -> None:
    """On SIGINT/SIGTERM/SIGHUP remove every staged file and exit 128 + signal (main thread)."""
    for sig in SIGNALS:
        signal.signal(sig, _on_signal)


def _on_signal(signum: int, _frame: object) -> None:
    if _CRITICAL:
        _PENDING.append(signum)
        return
    _exit_for(signum)


def _exit_for(signum: int) -> None:
    removed = remove_staged()
    name = signal.Signals(signum).name
    note = f"; removed {removed} staged file(s)" if removed else ""
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(f"\nbnfold: error: interrupted by {name}{note}\n")
        sys.stderr.flush()
    os._exit(128 + signum)


def remove_staged() -> int:
    """Remove every registered temporary file and folder; return how many there were."""
    with _LOCK:
        paths, created = list(_STAGED), list(_CREATED)
        _STAGED.clear()
    for p in paths:
        for _ in range(3):  # a writer thread may create a file in a folder being removed
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    p.unlink()
            if not os.path.lexists(p):
                break
    remove_empty(sorted(created, key=lambda d: len(d.parts), reverse=True))
    return len(paths)


def fsync_file(path: Path) -> None:
    """Flush ``path``'s data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (the renames) to disk, where the platform allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def _create_temporary(dest: Path) -> Path:
    """A new empty file beside ``dest``, ending like it, with the umask's permissions (registered
    as staged).

    (``tempfile.mkstemp`` would create it 0600, and the renamed file would keep that.)
    """
    return _create_registered(
        lambda: dest.parent / f".{dest.name}.{secrets.token_hex(4)}.tmp{dest.suffix}",
        lambda tmp: os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)),
    )


def _create_registered(name: Callable[[], Path], create: Callable[[Path], object]) -> Path:
    """Create a new path named by ``name()`` (another name on a clash), registered as staged
    before it exists: a signal can come at any point."""
    while True:
        tmp = name()
        _register(tmp)
        try:
            create(tmp)
        except FileExistsError:
            _unregister(tmp)
            continue
        except BaseException:
            _unregister(tmp)
            raise
        return tmp


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, data: object) -> Path:
    """Write ``data`` as indented JSON with a trailing newline, atomically; return the path."""
    write_text(path, json.dumps(data, indent=2) + "\n")
    return Path(path)
