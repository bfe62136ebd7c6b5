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
- an inline tensor's ``raw_data`` or typed field does not hold exactly what its shape and type
  declare (a tensor that declares 10^12 elements and stores four bytes; 32 bytes for 16), a
  dimension is negative, or the data type is undefined.

Only file metadata (``stat``) and protobuf field lengths are read, never the data itself.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import PurePath

import onnx
import onnx_ir as ir

from bnfold.errors import BadInputError, PathLabel
from bnfold.folds.context import all_graphs

_COMPLEX = {ir.DataType.COMPLEX64, ir.DataType.COMPLEX128}


def check_tensors(model: ir.Model, path: str | os.PathLike | None = None) -> None:
    """Raise BadInputError (naming ``path``) for the first tensor whose data cannot be trusted."""
    sizes: dict[str, int] = {}
    for tensor in _tensors(model):
        if isinstance(tensor, ir.ExternalTensor):
            _check_external(tensor, path, sizes)
        elif isinstance(tensor, ir.TensorProtoTensor):
            _check_inline(tensor.raw, path)
        elif isinstance(tensor, ir.StringTensor):
            _check_strings(tensor, path)


def _tensors(model: ir.Model) -> Iterator[ir.TensorProtocol]:
    for graph in all_graphs(model):
        for value in graph.initializers.values():
            if value.const_value is not None:
                yield value.const_value
        for node in graph:
            for attr in node.attributes.values():
                if attr.is_ref():  # a function attribute: no tensor of its own
                    continue
                # .value, not as_tensor(): its protocol check reads nbytes, which raises for
                # a tensor without a data type
                if attr.type == ir.AttributeType.TENSOR:
                    yield attr.value
                elif attr.type == ir.AttributeType.TENSORS:
                    yield from attr.value


def _label(tensor: ir.TensorProtocol) -> str:
    return f"tensor '{tensor.name}'" if tensor.name else "an unnamed tensor"


def _check_shape(tensor: ir.TensorProtocol, path: PathLabel) -> None:
    """Dims not negative, and a data type whose size is known (STRING is counted instead)."""
    dims = [d for d in tensor.shape if isinstance(d, int)]
    if any(d < 0 for d in dims):
        raise BadInputError(path, f"{_label(tensor)} declares a negative dimension {tuple(dims)}")
    try:
        dtype = tensor.dtype
        if dtype != ir.DataType.STRING:
            _ = dtype.itemsize
    except (TypeError, ValueError):
        raw = getattr(tensor, "raw", None)
        code = raw.data_type if isinstance(raw, onnx.TensorProto) else "?"
        raise BadInputError(path, f"{_label(tensor)} has no usable data type ({code})") from None


def _count(tensor: ir.TensorProtocol) -> int:
    """Elements the tensor's (static) shape declares."""
    return math.prod(tensor.shape.numpy())


def _declared_bytes(tensor: ir.TensorProtocol) -> int:
    return math.ceil(tensor.dtype.itemsize * _count(tensor))


def _check_external(tensor: ir.ExternalTensor, path: PathLabel, sizes: dict[str, int]) -> None:
    _check_shape(tensor, path)
    location = os.fspath(tensor.location)
    what = f"{_label(tensor)}: external data location {location!r}"
    if "\0" in location or not location:
        raise BadInputError(path, f"{what} is not a file name")
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
_TYPED_FIELDS: dict[int, str] = {
    onnx.TensorProto.FLOAT: "float_data",
    onnx.TensorProto.COMPLEX64: "float_data",
    onnx.TensorProto.DOUBLE: "double_data",
    onnx.TensorProto.COMPLEX128: "double_data",
    onnx.TensorProto.INT64: "int64_data",
    onnx.TensorProto.UINT32: "uint64_data",
    onnx.TensorProto.UINT64: "uint64_data",
    onnx.TensorProto.STRING: "string_data",
}


def _check_inline(proto: onnx.TensorProto, path: PathLabel) -> None:
    tensor = ir.TensorProtoTensor(proto)
    _check_shape(tensor, path)
    try:
        dtype = tensor.dtype
    except ValueError:
        raise BadInputError(
            path, f"{_label(tensor)} has unknown data type {proto.data_type}"
        ) from None
    count = _count(tensor)
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
    if have != need and not (count == 0 and have == 0):
        raise BadInputError(
            path,
            f"{_label(tensor)} is declared {_shape_text(tensor)} ({need} {unit}) but holds "
            f"{have} {unit}",
        )


def _check_strings(tensor: ir.StringTensor, path: PathLabel) -> None:
    _check_shape(tensor, path)
    count, have = _count(tensor), len(tensor.raw)
    if have != count:
        raise BadInputError(
            path, f"{_label(tensor)} is declared {_shape_text(tensor)} but holds {have} strings"
        )


def _shape_text(tensor: ir.TensorProtocol) -> str:
    dims = "x".join(str(d) for d in tensor.shape) or "scalar"
    try:
        dtype = "string" if tensor.dtype == ir.DataType.STRING else tensor.dtype.numpy().name
    except (TypeError, ValueError):
        dtype = tensor.dtype.name.lower()
    return f"{dims} {dtype}"
