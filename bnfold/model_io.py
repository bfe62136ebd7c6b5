"""Load ONNX models lazily and save them atomically.

Loading goes through onnx-ir, which maps external data lazily: a 2 GB model loads in well under
a second and its tensors are read only when used. A loaded model is checked before anything
reads its tensors: opset, declared tensor sizes and external-data locations
(``bnfold.tensor_data``), graph topology and BatchNormalization shapes (``bnfold.validate``).
Saving writes into a temporary folder beside the destination, fsyncs and renames into place
(``bnfold.atomic``), so a failure or a signal leaves nothing half-written and the input
(including its external data file) is never touched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import onnx
import onnx_ir as ir
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from bnfold import atomic
from bnfold.errors import BadInputError
from bnfold.paths import data_file
from bnfold.tensor_data import check_tensors
from bnfold.validate import validate_graph

# Above this many bytes of tensor data the model is saved with external data
# (protobuf cannot serialise a message over 2 GiB).
EXTERNAL_DATA_THRESHOLD = 1536 * 1024 * 1024
# Threads writing external data (onnx-ir's max_workers).
SAVE_WORKERS = max(1, min(4, os.cpu_count() or 1))
# ir.Model.meta key: whether the model was loaded with external data
_LOADED_EXTERNAL = "bnfold.loaded_external_data"
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
        proto = onnx.load(p, load_external_data=False)  # what ir.load does, checked between
    except Exception as exc:  # protobuf DecodeError, truncated files...
        raise BadInputError(p, f"not a readable ONNX model ({_load_problem(exc)})") from None
    model = model_from_proto(proto, p)
    del proto
    ir.external_data.set_base_dir(model.graph, os.path.dirname(p))
    validate_model(model, p)
    # remembered so that a fold which replaces every external tensor still saves externally
    model.meta[_LOADED_EXTERNAL] = has_external_data(model)
    return model


def model_from_proto(proto: onnx.ModelProto, label: str | os.PathLike = "<ModelProto>") -> ir.Model:
    """An ``ir.Model`` of a proto whose text fields are valid UTF-8, or BadInputError naming
    ``label``."""
    check_text(proto, label)
    check_unique_definitions(proto, label)
    try:
        with _quiet_loader():
            return ir.from_proto(proto)
    except Exception as exc:  # onnx-ir refuses e.g. a name defined twice
        raise BadInputError(label, f"not a readable ONNX model ({_load_problem(exc)})") from None


def check_unique_definitions(
    proto: onnx.ModelProto, label: str | os.PathLike | None = None
) -> None:
    """Refuse what onnx-ir would silently collapse to one copy while onnxruntime may use
    another, so that a fold of one would be checked against the other (both found by the
    fuzzer as verification failures of correct folds): two initializers of one name in a graph,
    two attributes of one name on a node (a Constant with two ``value`` tensors)."""
    stack: list[tuple[onnx.GraphProto, str]] = [(proto.graph, "main graph")]
    for function in proto.functions:
        _check_nodes(function.node, f"function '{function.name}'", label, stack)
    while stack:
        graph, where = stack.pop()
        seen: set[str] = set()
        for tensor in [*graph.initializer, *(s.values for s in graph.sparse_initializer)]:
            if tensor.name in seen:
                raise BadInputError(label, f"{where}: initializer '{tensor.name}' is defined twice")
            seen.add(tensor.name)
        _check_nodes(graph.node, where, label, stack)


def _check_nodes(
    nodes: Iterable[onnx.NodeProto],
    where: str,
    label: str | os.PathLike | None,
    stack: list[tuple[onnx.GraphProto, str]],
) -> None:
    for node in nodes:
        names = [attr.name for attr in node.attribute]
        if len(set(names)) != len(names):
            twice = next(n for n in names if names.count(n) > 1)
            raise BadInputError(
                label,
                f"{where}: node '{node.name or node.op_type}' has two attributes '{twice}'",
            )
        for attr in node.attribute:
            subgraphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            stack.extend((sub, f"subgraph '{sub.name}' of '{node.name}'") for sub in subgraphs)


def check_text(proto: onnx.ModelProto, label: str | os.PathLike | None = None) -> None:
    """Refuse string fields that are not valid UTF-8 (protobuf hands them over as bytes; names
    must print, go into JSON and serialize again). Tensor data is not looked at."""
    stack: list[tuple[Message, str]] = [(proto, "model")]
    while stack:
        message, where = stack.pop()
        if isinstance(message, onnx.TensorProto):
            texts = [("name", message.name), ("doc_string", message.doc_string)]
            texts += [(f"external_data.{e.key!r}", e.value) for e in message.external_data]
            texts += [("external_data key", e.key) for e in message.external_data]
            for name, value in texts:
                if isinstance(value, bytes):
                    raise BadInputError(label, f"{where}.{name} is not valid UTF-8 text")
            continue
        for field, value in message.ListFields():
            path = f"{where}.{field.name}"
            repeated = _is_repeated(field)
            if field.type == field.TYPE_MESSAGE:
                items = value if repeated else [value]
                stack.extend(
                    (item, f"{path}[{i}]" if repeated else path) for i, item in enumerate(items)
                )
            elif field.type == field.TYPE_STRING:
                for item in value if repeated else [value]:
                    if isinstance(item, bytes):
                        raise BadInputError(
                            label, f"{path} is not valid UTF-8 text ({item[:40]!r})"
                        )


_LABEL_REPEATED = 3  # FieldDescriptor.LABEL_REPEATED, gone from protobuf 7's stubs


def _is_repeated(field: FieldDescriptor) -> bool:
    flag = getattr(field, "is_repeated", None)  # protobuf >= 5.28; older ones have label
    return bool(flag) if flag is not None else getattr(field, "label", None) == _LABEL_REPEATED


def validate_model(model: ir.Model, path: str | os.PathLike | None = None) -> None:
    """Reject models bnfold cannot reason about: no graph, an unsupported default opset, tensors
    whose data cannot be trusted, an invalid graph (see the module docstring)."""
    if len(model.graph) == 0 and not model.graph.outputs:
        raise BadInputError(path, "not an ONNX model (the graph is empty)")
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx"))
    if opset is None:
        if any(n.domain in ("", "ai.onnx") for n in model.graph):
            raise BadInputError(path, "uses ONNX operators but imports no default-domain opset")
    elif not _MIN_OPSET <= opset <= _MAX_OPSET:
        raise BadInputError(
            path, f"unsupported opset {opset} (this onnx supports {_MIN_OPSET} to {_MAX_OPSET})"
        )
    check_tensors(model, path)
    validate_graph(model, path)


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


class StagedModel:
    """A model written into a temporary folder beside its destination, not yet in place."""

    def __init__(self, folder: Path, dest: Path, names: list[str]) -> None:
        self.folder = folder
        self.dest = dest
        self._names = names

    @property
    def path(self) -> Path:
        """The staged model file (its external data, if any, beside it)."""
        return self.folder / self.dest.name

    @property
    def files(self) -> list[Path]:
        return [self.dest.parent / name for name in self._names]

    def commit(self) -> list[Path]:
        """Move the files into place: data first, so a model never points at missing data.
        A signal during the renames is handled after them."""
        with atomic.critical():
            for name in reversed(self._names):
                os.replace(self.folder / name, self.dest.parent / name)
        atomic.fsync_folder(self.dest.parent)
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
        external_data = (
            bool(model.meta.get(_LOADED_EXTERNAL))
            or has_external_data(model)
            or tensor_bytes(model) > EXTERNAL_DATA_THRESHOLD
        )
    callback = None
    if progress is not None:
        started = 0

        def callback(_tensor: ir.TensorProtocol, info: ir.external_data.CallbackInfo) -> None:
            nonlocal started  # writers run in parallel: count calls, not indices
            started += 1
            progress(started, info.total)

    with atomic.created_folders(dest.parent), atomic.staging_folder(dest.parent) as tmp:
        staged = tmp / dest.name
        if external_data:
            data_name = data_file(dest).name
            ir.save(
                model,
                staged,
                external_data=data_name,
                size_threshold_bytes=1024,
                callback=callback,
                # computing a folded weight and writing another overlap (numpy and file
                # writes release the GIL); folded weights stream, so memory stays bounded
                max_workers=SAVE_WORKERS,
            )
            names = [dest.name, data_name]
        else:
            try:
                write_inline(model, staged)
            except BadInputError as exc:  # name the destination, not the staged file
                raise BadInputError(dest, exc.problem) from None
            names = [dest.name]
        for name in names:
            atomic.fsync_file(tmp / name)
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


# Main-graph initializers at least this large (and every external one) are streamed into an
# inline save instead of being copied into the protobuf message.
_STREAM_MIN_BYTES = 1024
_STREAM_LOCATION = "__bnfold_stream__"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, length: int) -> bytes:
    """Key and length of a length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(length)


def _streamable(tensor: ir.TensorProtocol) -> bool:
    if tensor.dtype == ir.DataType.STRING:
        return False
    return isinstance(tensor, ir.ExternalTensor) or tensor.nbytes >= _STREAM_MIN_BYTES


def _with_tensor(
    values: Iterable[ir.Value], keep: Callable[[ir.TensorProtocol], bool]
) -> list[tuple[ir.Value, ir.TensorProtocol]]:
    """(value, its tensor) for each value holding a tensor that ``keep`` accepts."""
    out = []
    for value in values:
        tensor = value.const_value
        if tensor is not None and keep(tensor):
            out.append((value, tensor))
    return out


def _shape(tensor: ir.TensorProtocol) -> ir.Shape:
    shape = tensor.shape
    return shape if isinstance(shape, ir.Shape) else ir.Shape(shape.numpy())


def _returning(tensor: ir.TensorProtocol) -> Callable[[], ir.TensorProtocol]:
    return lambda: tensor


def write_inline(model: ir.Model, path: Path) -> int:
    """Write ``model`` as one protobuf file, streaming the main graph's tensor data; return its size.

    ``ir.to_proto(model).SerializeToString()`` would hold every tensor two more times (the
    message and the string) and compute every lazy tensor at once. Here the message is built
    with placeholders for the large initializers, serialized small, and the file written as
    ``ModelProto`` fields, then the graph field (its length computed up front) with its
    initializers last, each tensor's raw data written by ``tofile`` (folded weights one chunk
    at a time, external data copied by the kernel). Protobuf parsers accept fields in any
    order; ``onnx.load`` reads back the same model as ``ir.to_proto`` gives. Raises
    BadInputError if the result would exceed protobuf's 2 GiB limit.
    """
    streamed = _with_tensor(model.graph.initializers.values(), _streamable)
    originals = [tensor for _, tensor in streamed]
    # subgraph initializers are serialized inside their nodes: an external one is read in
    # (through a lazy wrapper), or the file would point at the input's data file
    inner = _with_tensor(
        (v for g in model.graphs() if g is not model.graph for v in g.initializers.values()),
        lambda t: isinstance(t, ir.ExternalTensor),
    )
    try:
        for i, (value, tensor) in enumerate(streamed):
            value.const_value = ir.ExternalTensor(
                _STREAM_LOCATION, i, tensor.nbytes, tensor.dtype,
                shape=_shape(tensor), name=tensor.name or value.name or "",
                doc_string=tensor.doc_string, metadata_props=dict(tensor.metadata_props),
            )  # fmt: skip
        for value, t in inner:
            value.const_value = ir.LazyTensor(
                _returning(t), t.dtype, _shape(t),
                name=t.name, doc_string=t.doc_string, metadata_props=dict(t.metadata_props),
            )  # fmt: skip
        proto = ir.to_proto(model)
    finally:
        for value, tensor in (*streamed, *inner):
            value.const_value = tensor
    parts: list[tuple[bytes, ir.TensorProtocol | None, int]] = []  # (bytes, tensor to stream, n)
    for tp in proto.graph.initializer:
        place = {e.key: e.value for e in tp.external_data}
        if (
            tp.data_location == onnx.TensorProto.EXTERNAL
            and place.get("location") == _STREAM_LOCATION
        ):
            tensor = originals[int(place["offset"])]
            n = int(place["length"])
            tp.ClearField("external_data")
            tp.ClearField("data_location")
            header = tp.SerializeToString(deterministic=True)
            body = header + _field(9, n)  # raw_data follows
            parts.append((_field(5, len(body) + n) + body, tensor, n))
        else:
            body = tp.SerializeToString(deterministic=True)
            parts.append((_field(5, len(body)) + body, None, 0))
    proto.graph.ClearField("initializer")
    graph_rest = proto.graph.SerializeToString(deterministic=True)
    proto.ClearField("graph")
    model_rest = proto.SerializeToString(deterministic=True)
    graph_len = len(graph_rest) + sum(len(head) + n for head, _, n in parts)
    head = model_rest + _field(7, graph_len)
    total = len(head) + graph_len
    if total >= 2**31:
        raise BadInputError(path, "model exceeds 2 GB; save it with external data")
    with open(path, "wb") as f:
        f.write(head)
        f.write(graph_rest)
        for data_head, streaming, n in parts:
            f.write(data_head)
            if streaming is None:
                continue
            start = f.tell()
            if hasattr(streaming, "tofile"):
                streaming.tofile(f)
            else:
                f.write(streaming.tobytes())
            if f.tell() - start != n:
                raise RuntimeError(
                    f"tensor {streaming.name!r} wrote {f.tell() - start} bytes, expected {n}"
                )
    return total


@contextlib.contextmanager
def _quiet_loader() -> Iterator[None]:
    """Silence onnx-ir's deserializer: it logs warnings for invalid graphs that bnfold reports
    itself, in one line, after loading."""
    log = logging.getLogger("onnx_ir.serde")
    level = log.level
    log.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():  # e.g. "Ignoring unknown external data key(s)"
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


def _load_problem(exc: BaseException) -> str:
    """onnx-ir's load error in a line (the innermost cause: onnx-ir wraps errors in "Error
    calling _deserialize_graph"); a repeated output name is said plainly."""
    seen = 0
    while exc.__cause__ is not None and seen < 32:
        exc, seen = exc.__cause__, seen + 1
    text = str(exc)
    match = re.search(r"Output '(.*?)' is redeclared.*by operator '(.*?)' of node '(.*?)'", text)
    if match:
        name, op, node = match.groups()
        return f"the name '{name}' is defined twice (again as output of {op} node '{node}')"
    return _short(exc)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    return first if len(first) <= 160 else first[:157] + "..."
