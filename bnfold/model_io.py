"""Load ONNX models lazily and save them atomically.

Loading goes through onnx-ir, which maps external data lazily: a 2 GB model loads in well under
a second and its tensors are read only when used. Saving writes into a temporary folder beside
the destination and renames into place, so a failure leaves nothing half-written and the input
(including its external data file) is never touched.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import onnx
import onnx_ir as ir

from bnfold.errors import BadInputError

# Above this many bytes of tensor data the model is saved with external data
# (protobuf cannot serialise a message over 2 GiB).
EXTERNAL_DATA_THRESHOLD = 1536 * 1024 * 1024
_MIN_OPSET, _MAX_OPSET = 1, onnx.defs.onnx_opset_version()


def load_model(path: str | os.PathLike) -> ir.Model:
    """Load ``path`` as an ``ir.Model`` (external data lazily) or raise BadInputError."""
    p = Path(path)
    if not p.exists():
        raise BadInputError(p, "no such file")
    if p.is_dir():
        raise BadInputError(p, "is a directory, not an ONNX model")
    if p.stat().st_size == 0:
        raise BadInputError(p, "empty file, not an ONNX model")
    try:
        model = ir.load(p)
    except Exception as exc:  # protobuf DecodeError, truncated files, bad external data...
        raise BadInputError(p, f"not a readable ONNX model ({_short(exc)})") from None
    validate_model(model, p)
    return model


def validate_model(model: ir.Model, path: str | os.PathLike | None = None) -> None:
    """Reject models bnfold cannot reason about: no graph, or an unsupported default opset."""
    if len(model.graph) == 0 and not model.graph.outputs:
        raise BadInputError(path, "not an ONNX model (the graph is empty)")
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx"))
    if opset is None:
        if any(n.domain in ("", "ai.onnx") for n in model.graph):
            raise BadInputError(path, "uses ONNX operators but imports no default-domain opset")
        return
    if not _MIN_OPSET <= opset <= _MAX_OPSET:
        raise BadInputError(
            path, f"unsupported opset {opset} (this onnx supports {_MIN_OPSET} to {_MAX_OPSET})"
        )


def tensor_bytes(model: ir.Model) -> int:
    """Total bytes of initializer data in all graphs (without reading external data)."""
    total = 0
    for graph in model.graphs():
        for value in graph.initializers.values():
            tensor = value.const_value
            if tensor is not None:
                total += tensor.nbytes
    return total


def has_external_data(model: ir.Model) -> bool:
    """Whether any initializer lives in an external data file."""
    return any(
        isinstance(v.const_value, ir.ExternalTensor)
        for g in model.graphs()
        for v in g.initializers.values()
    )


def data_file_name(path: str | os.PathLike) -> str:
    """The external data file written beside ``path``."""
    return Path(path).name + ".data"


class StagedModel:
    """A model written into a temporary folder beside its destination, not yet in place."""

    def __init__(self, folder: Path, dest: Path, names: list[str]) -> None:
        self.folder = folder
        self.dest = dest
        self._names = names
        self.committed = False

    @property
    def path(self) -> Path:
        """The staged model file (its external data, if any, beside it)."""
        return self.folder / self.dest.name

    @property
    def files(self) -> list[Path]:
        return [self.dest.parent / name for name in self._names]

    def commit(self) -> list[Path]:
        """Move the files into place: data first, so a model never points at missing data."""
        for name in reversed(self._names):
            os.replace(self.folder / name, self.dest.parent / name)
        self.committed = True
        return self.files


@contextlib.contextmanager
def staged_save(
    model: ir.Model,
    path: str | os.PathLike,
    *,
    external_data: bool | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Iterator[StagedModel]:
    """Write ``model`` into a temporary folder beside ``path``; ``commit()`` puts it in place.

    Leaving the block without ``commit()`` (or on an error) deletes what was written, so a
    model that fails verification is never seen at its destination.

    ``external_data=None`` chooses external data when the input used it or the tensors exceed
    ``EXTERNAL_DATA_THRESHOLD``. The data file is ``<name>.data`` beside the model. Tensors are
    written one at a time (lazy tensors are computed as they are written). ``progress`` is
    called with (tensors done, tensors total).
    """
    dest = Path(path)
    if external_data is None:
        external_data = has_external_data(model) or tensor_bytes(model) > EXTERNAL_DATA_THRESHOLD
    dest.parent.mkdir(parents=True, exist_ok=True)
    callback = None
    if progress is not None:

        def callback(_tensor: ir.TensorProtocol, info: ir.external_data.CallbackInfo) -> None:
            progress(info.index + 1, info.total)

    with _staging_dir(dest.parent) as tmp:
        staged = tmp / dest.name
        if external_data:
            data_name = data_file_name(dest)
            ir.save(
                model, staged, external_data=data_name, size_threshold_bytes=1024, callback=callback
            )
            names = [dest.name, data_name]
        else:
            proto = ir.to_proto(model)
            if proto.ByteSize() >= 2**31:
                raise BadInputError(dest, "model exceeds 2 GB; save it with external data")
            staged.write_bytes(proto.SerializeToString(deterministic=True))
            names = [dest.name]
        yield StagedModel(tmp, dest, names)


def save_model(
    model: ir.Model,
    path: str | os.PathLike,
    *,
    external_data: bool | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[Path]:
    """Save ``model`` to ``path`` atomically (see :func:`staged_save`); return the files written."""
    with staged_save(model, path, external_data=external_data, progress=progress) as staged:
        return staged.commit()


@contextlib.contextmanager
def _staging_dir(parent: Path) -> Iterator[Path]:
    tmp = Path(tempfile.mkdtemp(prefix=".bnfold-", dir=parent))
    try:
        yield tmp
    finally:
        for child in tmp.iterdir():
            with contextlib.suppress(OSError):
                child.unlink()
        with contextlib.suppress(OSError):
            tmp.rmdir()


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    return first if len(first) <= 160 else first[:157] + "..."
