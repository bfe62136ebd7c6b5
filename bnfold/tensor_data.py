"""Tensor data is untrusted: declared sizes and external-data locations are checked before any
tensor is read or allocated.

``check_tensors`` visits every initializer and tensor attribute (Constant values...) of every
graph, subgraph and function of a loaded ``ir.Model`` and raises BadInputError when:

- an external-data location is absolute, contains ``..``, or resolves (through symlinks too)
  outside the model's folder; onnx and onnxruntime refuse these as well;
- the data file is missing, is not a regular file, or has more than one hard link (onnx-ir,
  bnfold's loader, refuses to read hard-linked data files);
- the file holds fewer bytes than the tensor's declared shape and type need at its offset, or
  the declared ``length`` is shorter than that;
- an inline tensor declares more elements than its ``raw_data`` or typed fields hold (a tensor
  that declares 10^12 elements and stores four bytes), or a negative dimension.

Only file metadata (``stat``) and protobuf field lengths are read, never the data itself.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path, PurePath

import onnx
import onnx_ir as ir

from bnfold.errors import BadInputError

_COMPLEX = {ir.DataType.COMPLEX64, ir.DataType.COMPLEX128}


def check_tensors(model: ir.Model, path: str | os.PathLike | None = None) -> None:
    """Raise BadInputError (naming ``path``) for the first tensor whose data cannot be trusted."""
    sizes: dict[str, int] = {}
    for tensor in _tensors(model):
        if isinstance(tensor, ir.ExternalTensor):
            _check_external(tensor, path, sizes)
        elif isinstance(tensor, ir.TensorProtoTensor):
            _check_inline(tensor.raw, path)


def external_data_files(model: ir.Model) -> list[Path]:
    """The external-data files ``model`` reads (as named, relative to its base folder)."""
    seen: dict[str, None] = {}
    for tensor in _tensors(model):
        if isinstance(tensor, ir.ExternalTensor):
            seen.setdefault(os.path.join(tensor.base_dir or ".", tensor.location), None)
    return [Path(p) for p in seen]


def _tensors(model: ir.Model) -> Iterator[ir.TensorProtocol]:
    graphs = [*model.graphs()]
    for function in model.functions.values():
        graphs.append(function.graph)
        graphs.extend(function.subgraphs())
    for graph in graphs:
        for value in graph.initializers.values():
            if value.const_value is not None:
                yield value.const_value
        for node in graph:
            for attr in node.attributes.values():
                if attr.type == ir.AttributeType.TENSOR:
                    yield attr.as_tensor()
                elif attr.type == ir.AttributeType.TENSORS:
                    yield from attr.as_tensors()


def _label(tensor: ir.TensorProtocol) -> str:
    return f"tensor '{tensor.name}'" if tensor.name else "an unnamed tensor"


def _check_shape(tensor: ir.TensorProtocol, path) -> None:
    dims = [d for d in tensor.shape if isinstance(d, int)]
    if any(d < 0 for d in dims):
        raise BadInputError(path, f"{_label(tensor)} declares a negative dimension {tuple(dims)}")


def _declared_bytes(tensor: ir.TensorProtocol) -> int:
    return math.ceil(tensor.dtype.itemsize * math.prod(int(d) for d in tensor.shape))


def _check_external(tensor: ir.ExternalTensor, path, sizes: dict[str, int]) -> None:
    _check_shape(tensor, path)
    location = os.fspath(tensor.location)
    what = f"{_label(tensor)}: external data location '{location}'"
    if os.path.isabs(location) or PurePath(location).anchor:
        raise BadInputError(path, f"{what} is absolute; it must be relative to the model's folder")
    if ".." in PurePath(location.replace("\\", "/")).parts:
        raise BadInputError(path, f"{what} contains '..'; it must stay in the model's folder")
    base = os.fspath(tensor.base_dir) or "."
    real_base = os.path.realpath(base)
    real = os.path.realpath(os.path.join(base, location))
    if os.path.commonpath([real_base, real]) != real_base:
        raise BadInputError(path, f"{what} resolves outside the model's folder (to {real})")
    file = os.path.join(os.fspath(tensor.base_dir), location) if tensor.base_dir else location
    if real not in sizes:
        try:
            st = os.stat(real)
        except OSError as exc:
            raise BadInputError(
                file, f"cannot read the external data of {_label(tensor)} ({exc.strerror})"
            ) from None
        if not os.path.isfile(real):
            raise BadInputError(file, f"external data of {_label(tensor)} is not a regular file")
        if st.st_nlink > 1:
            raise BadInputError(
                file,
                f"external data of {_label(tensor)} has {st.st_nlink} hard links; onnx-ir "
                "refuses hard-linked data files (copy the file instead)",
            )
        sizes[real] = st.st_size
    need = _declared_bytes(tensor)
    offset = tensor.offset or 0
    if tensor.length is not None and tensor.length < need:
        raise BadInputError(
            file,
            f"{_label(tensor)} is declared {_shape_text(tensor)} ({need} bytes) but its "
            f"external data length is {tensor.length}",
        )
    if offset < 0 or offset + need > sizes[real]:
        raise BadInputError(
            file,
            f"file is too short for {_label(tensor)}: {_shape_text(tensor)} needs {need} bytes "
            f"at offset {offset}, the file holds {sizes[real]}",
        )


# TensorProto typed field holding each data type (elements per entry is 1 unless noted)
_TYPED_FIELDS = {
    onnx.TensorProto.FLOAT: "float_data",
    onnx.TensorProto.COMPLEX64: "float_data",
    onnx.TensorProto.DOUBLE: "double_data",
    onnx.TensorProto.COMPLEX128: "double_data",
    onnx.TensorProto.INT64: "int64_data",
    onnx.TensorProto.UINT32: "uint64_data",
    onnx.TensorProto.UINT64: "uint64_data",
    onnx.TensorProto.STRING: "string_data",
}


def _check_inline(proto: onnx.TensorProto, path) -> None:
    tensor = ir.TensorProtoTensor(proto)
    _check_shape(tensor, path)
    try:
        dtype = tensor.dtype
    except ValueError:
        raise BadInputError(
            path, f"{_label(tensor)} has unknown data type {proto.data_type}"
        ) from None
    count = math.prod(int(d) for d in proto.dims)
    if count == 0:
        return
    if proto.data_type != onnx.TensorProto.STRING and proto.HasField("raw_data"):
        have, need, unit = len(proto.raw_data), _declared_bytes(tensor), "bytes"
    else:
        field = _TYPED_FIELDS.get(proto.data_type, "int32_data")
        have, unit = len(getattr(proto, field)), "values"
        if dtype in _COMPLEX:
            need = 2 * count
        elif proto.data_type != onnx.TensorProto.STRING and dtype.itemsize < 1:
            need = _declared_bytes(tensor)  # sub-byte types: one packed byte per entry
        else:
            need = count
    if have < need:
        raise BadInputError(
            path,
            f"{_label(tensor)} is declared {_shape_text(tensor)} ({need} {unit}) but holds "
            f"{have} {unit}",
        )


def _shape_text(tensor: ir.TensorProtocol) -> str:
    dims = "x".join(str(d) for d in tensor.shape) or "scalar"
    try:
        dtype = tensor.dtype.numpy().name
    except (TypeError, ValueError):
        dtype = tensor.dtype.name.lower()
    return f"{dims} {dtype}"
