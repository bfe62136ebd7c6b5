"""Input sets for a model: seeded random draws by dtype, real arrays from .npz files."""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bnfold.errors import BadInputError, UsageError
from bnfold.report import size_text
from bnfold.verify.settings import DEFAULT_BATCH, RunSettings
from bnfold.verify.settings import DEFAULT_INPUT_BUDGET as DEFAULT_INPUT_BUDGET  # re-exported

_ORT_DTYPES: dict[str, np.dtype] = {
    "tensor(float16)": np.dtype(np.float16),
    "tensor(float)": np.dtype(np.float32),
    "tensor(double)": np.dtype(np.float64),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(int16)": np.dtype(np.int16),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(uint16)": np.dtype(np.uint16),
    "tensor(uint32)": np.dtype(np.uint32),
    "tensor(uint64)": np.dtype(np.uint64),
    "tensor(bool)": np.dtype(np.bool_),
}


@dataclass(frozen=True)
class InputInfo:
    """One model input as onnxruntime reports it; dims are ints, names (symbolic) or None."""

    name: str
    type: str
    dims: tuple[int | str | None, ...]

    @property
    def dtype(self) -> np.dtype:
        if self.type not in _ORT_DTYPES:
            raise BadInputError(
                None, f"input {self.name!r} has type {self.type}, which bnfold cannot feed"
            )
        return _ORT_DTYPES[self.type]


@dataclass(frozen=True)
class InputSet:
    """One feed dict and where it came from (a file, or a seeded random draw)."""

    label: str
    feeds: dict[str, np.ndarray]


def session_inputs(session) -> list[InputInfo]:
    """The inputs of an onnxruntime session."""
    return [
        InputInfo(i.name, i.type, tuple(d if isinstance(d, int | str) else None for d in i.shape))
        for i in session.get_inputs()
    ]


def parse_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """``NAME=1x3x224x224`` -> ("NAME", (1, 3, 224, 224)); NAME is an input or a symbolic dim."""
    name, sep, dims = text.rpartition("=")
    try:
        if not sep or not name:
            raise ValueError
        shape = tuple(int(d) for d in dims.lower().split("x")) if dims else ()
    except ValueError:
        raise UsageError(
            f"--shape {text!r}: expected NAME=1x3x224x224 (an input) or DIM=8 (a symbolic dim)"
        ) from None
    if any(d < 1 for d in shape):
        raise UsageError(
            f"--shape {text!r}: every dim must be >= 1 (an empty input proves nothing)"
        )
    return name, shape


class ShapeError(UsageError):
    """A symbolic dim no setting resolves. The message speaks of the API's ``shapes`` argument;
    ``cli_message`` of the ``--shape`` flag."""

    def __init__(
        self,
        info: InputInfo,
        index: int,
        example: tuple[int, ...],
        model: str | os.PathLike | None = None,
    ) -> None:
        dim = info.dims[index]
        whole = "x".join(map(str, example))
        named = f" ({dim!r})" if isinstance(dim, str) else " (unnamed)"
        where = f"input {info.name!r} dim {index}{named} is not fixed in the model"
        if isinstance(dim, str):
            api = f"shapes={{{dim!r}: (N,)}} or shapes={{{info.name!r}: {example}}}"
            cli = f"--shape {dim}=N (that dim) or --shape {info.name}={whole} (the whole input)"
        else:
            api = f"shapes={{{info.name!r}: {example}}}"
            cli = f"--shape {info.name}={whole} (the whole input)"
        BadInputError.__init__(self, model, f"{where}; give it with {api}")
        prefix = f"{self.path}: " if self.path else ""
        self.cli_message = f"{prefix}{where}; give it with {cli}"


def batch_dims(infos: Sequence[InputInfo]) -> set[str]:
    """The names of symbolic first dims: each is a batch dim wherever it appears."""
    return {i.dims[0] for i in infos if i.dims and isinstance(i.dims[0], str)}


def resolve_shape(
    info: InputInfo,
    shapes: Mapping[str, Sequence[int]],
    batch: int | None = None,
    batch_names: set[str] | frozenset[str] = frozenset(),
    model: str | os.PathLike | None = None,
) -> tuple[int, ...]:
    """Concrete dims for ``info``: a full shape given for the input, else each symbolic dim by
    name, else ``batch`` for a symbolic first dim (and for dims named like one, ``batch_names``).
    An unresolved dim is a ShapeError naming the input, the dim and both ways to give it."""
    if info.name in shapes:
        shape = tuple(int(d) for d in shapes[info.name])
        if len(shape) != len(info.dims):
            raise UsageError(
                f"--shape {info.name}=...: the input has rank {len(info.dims)}, "
                f"the shape given has rank {len(shape)}"
            )
        for i, (want, got) in enumerate(zip(info.dims, shape, strict=True)):
            if isinstance(want, int) and want >= 0 and want != got:
                raise UsageError(
                    f"--shape {info.name}=...: dim {i} is fixed at {want} in the model, not {got}"
                )
        return shape
    out: list[int | None] = []
    for i, d in enumerate(info.dims):
        if isinstance(d, int) and d >= 0:
            out.append(d)
        elif isinstance(d, str) and d in shapes and len(shapes[d]) == 1:
            out.append(int(shapes[d][0]))
        elif batch is not None and (i == 0 or d in batch_names):
            out.append(batch)
        else:
            out.append(None)
    if None in out:
        index = out.index(None)
        example = tuple(1 if d is None else d for d in out)
        raise ShapeError(info, index, example, model)
    return tuple(d for d in out if d is not None)


def resolve_shapes(
    infos: Sequence[InputInfo], settings: RunSettings, model: str | os.PathLike | None = None
) -> tuple[dict[str, tuple[int, ...]], list[str]]:
    """Every input's concrete shape under ``settings``, and a note for the symbolic batch dims
    set to the default size (when ``settings.batch`` is None)."""
    batch = DEFAULT_BATCH if settings.batch is None else settings.batch
    names = batch_dims(infos) - set(settings.shapes)
    resolved = {i.name: resolve_shape(i, settings.shapes, batch, names, model) for i in infos}
    notes = []
    if settings.batch is None:
        defaulted = [
            i for i in infos
            if i.name not in settings.shapes and i.dims
            and not (isinstance(i.dims[0], int) and i.dims[0] >= 0)
            and i.dims[0] not in settings.shapes
        ]  # fmt: skip
        if defaulted:
            labels = ", ".join(
                f"{d.dims[0]!r} of input {d.name!r}" if isinstance(d.dims[0], str)
                else f"dim 0 of input {d.name!r}"
                for d in defaulted
            )  # fmt: skip
            notes.append(f"symbolic batch dim {labels} run at {DEFAULT_BATCH} (--batch N sets it)")
    return resolved, notes


def random_feed(
    info: InputInfo, shape: tuple[int, ...], rng: np.random.Generator, int_range: tuple[int, int]
) -> np.ndarray:
    """A random array for one input: floats ~ N(0, 1), ints uniform in int_range (inclusive), bools fair."""
    dtype = info.dtype
    if dtype == np.bool_:
        return np.asarray(rng.random(shape) < 0.5)
    if np.issubdtype(dtype, np.floating):
        return np.asarray(rng.standard_normal(shape), dtype=dtype)
    lo, hi = int_range
    if lo > hi:
        raise UsageError(f"--int-range {lo} {hi}: low is above high")
    limits, drawn = np.iinfo(dtype), np.iinfo(np.int64)  # drawn as int64, then cast
    lo = max(lo, int(limits.min), int(drawn.min))
    hi = min(hi, int(limits.max), int(drawn.max))
    if lo > hi:
        raise UsageError(
            f"--int-range {int_range[0]} {int_range[1]}: no value fits input {info.name!r} "
            f"({dtype}, {limits.min} to {limits.max})"
        )
    return np.asarray(rng.integers(lo, hi, size=shape, endpoint=True, dtype=np.int64), dtype=dtype)


def npz_files(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The .npz files named, a folder standing for the .npz files in it (sorted)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.glob("*.npz"))
            if not found:
                raise BadInputError(p, "folder holds no .npz files")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise BadInputError(p, "no such file or folder")
    return files


def _npz_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every array in an .npz, read from the headers (no data)."""
    out = {}
    with zipfile.ZipFile(path) as z:
        for member in z.namelist():
            with z.open(member) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                else:
                    shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            out[member.removesuffix(".npy")] = (tuple(shape), dtype)
    return out


def check_npz_budget(path: Path, max_bytes: int) -> None:
    """Refuse an .npz whose arrays would take more than ``max_bytes``, before reading them."""
    try:
        headers = _npz_headers(path)
    except Exception as exc:
        raise BadInputError(path, f"not a readable .npz file ({exc})") from exc
    sizes = {k: math.prod(shape) * dtype.itemsize for k, (shape, dtype) in headers.items()}
    if sum(sizes.values()) > max_bytes:
        name = max(sizes, key=lambda k: sizes[k])
        shape, dtype = headers[name]
        raise BadInputError(
            path,
            f"its arrays take {size_text(sum(sizes.values()))}, over the "
            f"{size_text(max_bytes)} budget of one input set (array {name!r} is "
            f"{'x'.join(map(str, shape)) or 'scalar'} {dtype}); raise it with "
            f"--max-input-mib {math.ceil(sum(sizes.values()) / (1 << 20))}",
        )


def check_input_budget(
    infos: Sequence[InputInfo],
    shapes: Mapping[str, tuple[int, ...]],
    max_bytes: int,
    model: str | os.PathLike | None = None,
) -> None:
    """Refuse random input sets larger than ``max_bytes`` before allocating them; the error
    names the largest input and the flag that fixes it."""
    sizes = {i.name: math.prod(shapes[i.name]) * i.dtype.itemsize for i in infos}
    total = sum(sizes.values())
    if total <= max_bytes:
        return
    info = max(infos, key=lambda i: sizes[i.name])
    need = f"--max-input-mib {math.ceil(total / (1 << 20))}"
    if all(isinstance(d, int) and d >= 0 for d in info.dims):
        fix = f"its dims are fixed in the model, so raise the budget with {need}"
    else:
        example = "x".join(str(d) if isinstance(d, int) and d >= 0 else "1" for d in info.dims)
        fix = f"give smaller dims, e.g. --shape {info.name}={example}, or raise it with {need}"
    shape = "x".join(map(str, shapes[info.name])) or "scalar"
    raise BadInputError(
        model,
        f"one input set would take {size_text(total)}, over the {size_text(max_bytes)} "
        f"budget: input {info.name!r} is {shape} {info.dtype} ({size_text(sizes[info.name])}); "
        f"{fix}",
    )


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an .npz file (no pickles); an unreadable file is a BadInputError."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except Exception as exc:
        raise BadInputError(path, f"not a readable .npz file ({exc})") from exc


def load_npz(path: Path, infos: Sequence[InputInfo]) -> dict[str, np.ndarray]:
    """One feed dict from an .npz holding one array per input name, cast within its kind."""
    return feeds_from_arrays(path, read_npz(path), infos)


def feeds_from_arrays(
    path: Path, arrays: Mapping[str, np.ndarray], infos: Sequence[InputInfo]
) -> dict[str, np.ndarray]:
    """Check ``arrays`` (read from ``path``) against the model's inputs: one per input name, of
    the input's kind (cast within it) and rank, matching its fixed dims."""
    names = [i.name for i in infos]
    missing = [n for n in names if n not in arrays]
    extra = [k for k in arrays if k not in names]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing input(s) {', '.join(missing)}")
        if extra:
            parts.append(f"unknown array(s) {', '.join(extra)}")
        raise BadInputError(path, f"{'; '.join(parts)} (the model's inputs: {', '.join(names)})")
    feeds = {}
    for info in infos:
        arr = arrays[info.name]
        want = info.dtype
        if arr.dtype != want:
            if (
                arr.dtype.kind not in "biuf"
                or (want.kind == "b") != (arr.dtype.kind == "b")
                or ((want.kind == "f") != (arr.dtype.kind == "f"))
            ):
                raise BadInputError(
                    path, f"array {info.name!r} has dtype {arr.dtype}, the input wants {want}"
                )
            arr = arr.astype(want)
        if arr.ndim != len(info.dims):
            raise BadInputError(
                path,
                f"array {info.name!r} has rank {arr.ndim}, the input has rank {len(info.dims)}",
            )
        for i, (want_d, got) in enumerate(zip(info.dims, arr.shape, strict=True)):
            if isinstance(want_d, int) and want_d >= 0 and want_d != got:
                raise BadInputError(
                    path, f"array {info.name!r} dim {i} is {got}, the model fixes it at {want_d}"
                )
        feeds[info.name] = arr
    return feeds


def input_sets(
    infos: Sequence[InputInfo],
    settings: RunSettings,
    *,
    samples: int,
    model: str | os.PathLike | None = None,
) -> tuple[list[InputSet], list[str]]:
    """Real input sets from ``settings.inputs`` then ``samples`` seeded random sets, none larger
    than ``settings.max_input_bytes`` (checked before it is read or drawn; ``model`` names the
    file in the error); and notes (a symbolic batch dim set to the default size)."""
    if samples < 0:
        raise UsageError("--samples must be >= 0")
    shapes = settings.shapes
    known = {i.name for i in infos} | {d for i in infos for d in i.dims if isinstance(d, str)}
    unknown = [k for k in shapes if k not in known]
    if unknown:
        dims = sorted({d for i in infos for d in i.dims if isinstance(d, str)})
        raise UsageError(
            f"--shape {unknown[0]}=...: no input or symbolic dim of that name "
            f"(inputs: {', '.join(i.name for i in infos) or 'none'}; "
            f"symbolic dims: {', '.join(dims) or 'none'})"
        )
    files = npz_files(settings.inputs)
    for f in files:
        check_npz_budget(f, settings.max_input_bytes)
    sets = [InputSet(str(f), load_npz(f, infos)) for f in files]
    notes: list[str] = []
    if samples:
        resolved, notes = resolve_shapes(infos, settings, model)
        check_input_budget(infos, resolved, settings.max_input_bytes, model)
        for k in range(samples):
            rng = np.random.default_rng([settings.seed, k])
            feeds = {
                i.name: random_feed(i, resolved[i.name], rng, settings.int_range) for i in infos
            }
            sets.append(InputSet(f"random #{k} (seed {settings.seed})", feeds))
    if not sets:
        raise UsageError("no input sets: give --samples above 0 or --inputs FILE.npz")
    return sets, notes
