"""Output paths checked before any work: writable, of a supported kind, and never an input.

Every command calls ``guard`` once, with every file it reads and every path it will write. An
output is refused (BadInputError, exit 2) when it:

- is an existing folder, or lies under a regular file (``report.json/x``);
- lies in a folder that cannot be written (probed by creating and removing a temporary file in
  the nearest existing folder: permission bits alone say nothing for root or read-only mounts);
- is a plot whose extension matplotlib's Agg backend cannot write;
- aliases an input (the model, any external-data file it names, ``--inputs`` arrays, a
  checkpoint) or another output: the same path, the same file through a symlink (either side,
  or a symlinked folder), or the same inode (a hard link).

A model output also writes ``<name>.data`` when it is saved with external data, so that path is
checked as an output too. ``in_place`` names an input model that a model output may overwrite
(``bnfold fold M --in-place``), together with its data files.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bnfold.errors import BadInputError, UsageError
from bnfold.proto_scan import external_locations


@dataclass(frozen=True)
class Output:
    """A path a command will write. ``kind``: file, model (also writes ``<name>.data``), plot
    (an image matplotlib writes) or folder (files are written inside it)."""

    option: str
    path: Path
    kind: str = "file"


def model_files(model: str | os.PathLike) -> list[Path]:
    """The model file and the external-data files it names (as named, beside it)."""
    path = Path(model)
    return [path, *(path.parent / loc for loc in external_locations(path))]


def data_file(model: str | os.PathLike) -> Path:
    """The external-data file a model saved at ``model`` writes beside it."""
    path = Path(model)
    return path.with_name(path.name + ".data")


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether ``a`` and ``b`` name one file: same path, through symlinks, or a hard link."""
    return not file_keys(a).isdisjoint(file_keys(b))


def file_keys(path: str | os.PathLike) -> set[tuple]:
    """What names ``path``'s file: its absolute path, its real path (through symlinks) and,
    when it exists, its device and inode (hard links); two paths share one iff they name one
    file (see same_file)."""
    keys: set[tuple] = {
        ("path", os.path.normcase(os.path.abspath(path))),
        ("real", os.path.normcase(os.path.realpath(path))),
    }
    try:
        st = os.stat(path)
    except OSError:
        return keys
    keys.add(("inode", st.st_dev, st.st_ino))
    return keys


def _index(paths: Sequence[Path]) -> dict[tuple, list[int]]:
    """Each file key of ``paths`` -> the indices of the paths that have it, in order."""
    index: dict[tuple, list[int]] = {}
    for i, p in enumerate(paths):
        for key in file_keys(p):
            index.setdefault(key, []).append(i)
    return index


def _matches(index: dict[tuple, list[int]], path: Path) -> list[int]:
    """The indices in ``index`` of the paths that name ``path``'s file, in order."""
    return sorted({i for key in file_keys(path) for i in index.get(key, [])})


def guard(
    outputs: Sequence[Output | None],
    *,
    models: Sequence[str | os.PathLike] = (),
    files: Sequence[str | os.PathLike] = (),
    in_place: str | os.PathLike | None = None,
    in_place_hint: bool = True,
) -> None:
    """Refuse unusable or aliasing outputs (see the module docstring) before any work.
    ``in_place_hint``: say "pass --in-place" when the model output is the input (commands
    that have that option)."""
    wanted = [o for o in outputs if o is not None]
    for out in wanted:
        check_output(out)
    writes: list[tuple[Output, Path, str]] = []  # (output, path written, how to name it)
    for out in wanted:
        writes.append((out, out.path, out.option))
        if out.kind == "model":
            writes.append((out, data_file(out.path), f"the external-data file of {out.option}"))
    inputs: list[tuple[Path, str, bool]] = []  # (path, description, may be overwritten)
    for model in models:
        own = in_place is not None and same_file(model, in_place)
        for i, f in enumerate(model_files(model)):
            what = "the input model" if i == 0 else f"the external data of input model {model}"
            inputs.append((f, what, own))
    inputs.extend((Path(f), "an input file", False) for f in files)
    by_input = _index([src for src, _, _ in inputs])  # each path's keys once, not per pair
    for out, path, name in writes:
        for k in _matches(by_input, path):
            src, description, own = inputs[k]
            if own and out.kind == "model":
                continue
            hint = ""
            if (
                out.kind == "model"
                and description == "the input model"
                and in_place is None
                and in_place_hint
            ):
                hint = "; pass --in-place to write over it"
            raise BadInputError(path, f"{name} would overwrite {description} ({src}){hint}")
    by_write = _index([p for _, p, _ in writes])
    for i, (a, pa, na) in enumerate(writes):
        for j in _matches(by_write, pa):
            b, _, nb = writes[j]
            if j > i and a is not b:
                raise UsageError(f"{na} and {nb} name the same file ({pa}); give each its own path")


def check_output(out: Output) -> None:
    """One output path: not a folder (unless a folder is wanted), its folder writable."""
    path = out.path
    if out.kind == "folder":
        if path.exists() and not path.is_dir():
            raise BadInputError(path, f"{out.option} names a file, not a folder")
    elif path.is_dir():
        raise BadInputError(path, f"{out.option} names a folder, not a file")
    if out.kind == "plot":
        check_plot_format(path, out.option)
    parent = path if out.kind == "folder" else path.parent
    existing = _nearest_existing(parent)
    if not existing.is_dir():
        raise BadInputError(path, f"{out.option}: {existing} is a file, not a folder")
    _probe_writable(existing, path, out.option)


def check_plot_format(path: Path, option: str = "--plot") -> None:
    """Refuse an image extension matplotlib's Agg backend cannot write."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
    except ImportError:
        raise UsageError(f"{option} needs matplotlib: pip install 'bnfold[plot]'") from None
    formats = FigureCanvasAgg.get_supported_filetypes()
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in formats:
        shown = f"'.{suffix}'" if suffix else "no extension"
        raise BadInputError(
            path,
            f"{option}: {shown} is not an image format matplotlib can write "
            f"(use one of {', '.join('.' + k for k in sorted(formats))})",
        )


def _nearest_existing(folder: Path) -> Path:
    folder = Path(os.path.abspath(folder))
    while not folder.exists() and not folder.is_symlink():
        if folder.parent == folder:
            break
        folder = folder.parent
    return folder


def _probe_writable(folder: Path, path: Path, option: str) -> None:
    try:
        fd, probe = tempfile.mkstemp(prefix=".bnfold-probe-", dir=folder)
    except OSError as exc:
        raise BadInputError(
            path, f"{option}: cannot write in {folder} ({exc.strerror or exc})"
        ) from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)
