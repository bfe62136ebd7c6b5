"""Calibration and evaluation data: .npz files (one array per model input, optional ``labels``),
or the bundled digits for the zoo models.

An .npz holds one array per model input name, the first axis the samples, and may hold an integer
``labels`` array of shape (N,) (class ids, for accuracy; ignored by calibration). A folder stands
for the .npz files in it. Every file is checked against the model's inputs: a wrong name, dtype
kind, rank or fixed dim, an empty array, NaN/Inf, or bad labels is a BadInputError naming it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from bnfold import digits
from bnfold.errors import BadInputError, UsageError
from bnfold.verify.inputs import InputInfo, feeds_from_arrays, npz_files, read_npz

__all__ = [
    "CALIBRATION_SAMPLES",
    "LABELS",
    "Batch",
    "Dataset",
    "digits_dataset",
    "is_digits_model",
    "load_dataset",
    "resolve_dataset",
]

LABELS = "labels"
CALIBRATION_SAMPLES = 200  # digits training images calibrated on by default
BATCH = 64  # samples per calibration/evaluation run when the first dim is symbolic


@dataclass(frozen=True)
class Batch:
    """One feed dict, where it came from, and its labels if any."""

    label: str
    feeds: dict[str, np.ndarray]
    labels: np.ndarray | None = None

    @property
    def samples(self) -> int:
        first = next(iter(self.feeds.values()), None)
        return 1 if first is None or first.ndim == 0 else int(first.shape[0])


@dataclass
class Dataset:
    """Batches of inputs (with labels where given) and a description of their source."""

    source: str
    batches: list[Batch] = field(default_factory=list)

    @property
    def samples(self) -> int:
        return sum(b.samples for b in self.batches)

    @property
    def has_labels(self) -> bool:
        return bool(self.batches) and all(b.labels is not None for b in self.batches)

    def feeds(self) -> Iterator[dict[str, np.ndarray]]:
        for b in self.batches:
            yield b.feeds

    def merged(self) -> Batch:
        """Every batch in one (concatenated along the first axis)."""
        if not self.batches:
            raise ValueError("no batches")
        first = self.batches[0]
        feeds = {k: np.concatenate([b.feeds[k] for b in self.batches]) for k in first.feeds}
        labels = np.concatenate([b.labels for b in self.batches]) if self.has_labels else None
        return Batch(self.source, feeds, labels)

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "samples": self.samples,
            "batches": len(self.batches),
            "labels": self.has_labels,
        }


def is_digits_model(infos: Sequence[InputInfo]) -> bool:
    """One float32 input named ``input`` of shape (N, 1, 8, 8): a zoo digits model."""
    if len(infos) != 1:
        return False
    info = infos[0]
    fixed = tuple(d if isinstance(d, int) and d >= 0 else None for d in info.dims)
    return (
        info.name == digits.INPUT_NAME
        and info.type == "tensor(float)"
        and len(fixed) == 4
        and fixed[1:] == digits.INPUT_SHAPE
    )


def _symbolic_batch(infos: Sequence[InputInfo]) -> bool:
    return all(i.dims and not (isinstance(i.dims[0], int) and i.dims[0] >= 0) for i in infos)


def _split(
    label: str,
    feeds: dict[str, np.ndarray],
    labels: np.ndarray | None,
    batch: int | None,
    limit: int | None,
) -> list[Batch]:
    n = next(iter(feeds.values())).shape[0]
    if limit is not None:
        n = min(n, limit)
    step = n if batch is None else batch
    out = []
    for start in range(0, n, step):
        stop = min(start + step, n)
        out.append(
            Batch(
                label if (start, stop) == (0, n) else f"{label}[{start}:{stop}]",
                {k: v[start:stop] for k, v in feeds.items()},
                None if labels is None else labels[start:stop],
            )
        )
    return out


def _check(
    path: os.PathLike | str, feeds: dict[str, np.ndarray], labels: np.ndarray | None
) -> None:
    if not feeds:
        raise BadInputError(path, "holds no arrays")
    firsts = set()
    for name, arr in feeds.items():
        if arr.ndim == 0:
            raise BadInputError(
                path, f"array {name!r} is a scalar; the first axis holds the samples"
            )
        if arr.size == 0:
            raise BadInputError(path, f"array {name!r} is empty (shape {arr.shape})")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise BadInputError(path, f"array {name!r} holds NaN or Inf")
        firsts.add(arr.shape[0])
    if len(firsts) > 1:
        raise BadInputError(
            path, f"the arrays disagree on the number of samples ({sorted(firsts)})"
        )
    if labels is not None:
        (n,) = firsts
        if labels.dtype.kind not in "iu" or labels.shape != (n,):
            raise BadInputError(
                path,
                f"array {LABELS!r} must be integer class ids of shape ({n},), "
                f"got {labels.dtype} {labels.shape}",
            )


def load_dataset(
    paths: Sequence[str | os.PathLike[str]],
    infos: Sequence[InputInfo],
    *,
    limit: int | None = None,
    batch: int | None = BATCH,
) -> Dataset:
    """Batches from .npz files (or folders of them); at most ``limit`` samples in all. With a
    symbolic first dim each file is cut into runs of ``batch`` samples."""
    if limit is not None and limit < 1:
        raise UsageError(f"the sample limit must be >= 1, not {limit}")
    files = npz_files(paths)
    names = {i.name for i in infos}
    per_run = batch if _symbolic_batch(infos) else None
    batches: list[Batch] = []
    left = limit
    for f in files:
        if left is not None and left <= 0:
            break
        arrays = read_npz(f)
        labels = arrays.pop(LABELS) if LABELS in arrays and LABELS not in names else None
        if not arrays:
            raise BadInputError(f, "holds no arrays")
        feeds = feeds_from_arrays(f, arrays, infos)
        _check(f, feeds, labels)
        part = _split(str(f), feeds, labels, per_run, left)
        batches += part
        if left is not None:
            left -= sum(b.samples for b in part)
    return Dataset(
        ", ".join(map(str, files)) if len(files) <= 3 else f"{len(files)} files", batches
    )


def digits_dataset(split: str, *, limit: int | None = None, batch: int | None = BATCH) -> Dataset:
    """The bundled digits: ``train`` (the seeded training split) or ``test``, with labels."""
    data = digits.split_digits()
    x, y = (data.x_train, data.y_train) if split == "train" else (data.x_test, data.y_test)
    n = len(x) if limit is None else min(limit, len(x))
    source = f"bundled digits, {split} split ({n} images)"
    return Dataset(source, _split("digits", {digits.INPUT_NAME: x}, y, batch, n))


def resolve_dataset(
    paths: Sequence[str | os.PathLike[str]] | None,
    infos: Sequence[InputInfo],
    *,
    split: str,
    limit: int | None,
    batch: int | None = BATCH,
) -> Dataset | None:
    """Files when given, else the digits ``split`` for a zoo digits model, else None."""
    if paths:
        return load_dataset(paths, infos, limit=limit, batch=batch)
    if is_digits_model(infos):
        return digits_dataset(split, limit=limit, batch=batch)
    return None
