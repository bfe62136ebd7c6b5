"""The external-data locations an ONNX file names, found without parsing it whole.

Checking that no output overwrites an input's data file has to happen before any work, so it
cannot wait for the model to load (a 2 GB inline model would be read, and held twice, by
``onnx.load`` just to learn it has no external data). This walks the protobuf wire format of
the memory-mapped file, descending only into the messages that can hold tensors (graphs, nodes,
attributes, functions, sparse tensors) and skipping every other field, tensor data included,
without touching its pages. A malformed file ends the walk early; the loader reports it.
"""

from __future__ import annotations

import mmap
import os

_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL
_MAX_DEPTH = 64

# message kind -> {field number: message kind of that (length-delimited) field}
_MODEL, _GRAPH, _NODE, _ATTR, _FUNCTION, _SPARSE, _TENSOR, _ENTRY = range(8)
_CHILDREN: dict[int, dict[int, int]] = {
    _MODEL: {7: _GRAPH, 25: _FUNCTION},
    _GRAPH: {1: _NODE, 5: _TENSOR, 15: _SPARSE},
    _NODE: {5: _ATTR},
    _ATTR: {5: _TENSOR, 6: _GRAPH, 10: _TENSOR, 11: _GRAPH, 22: _SPARSE, 23: _SPARSE},
    _FUNCTION: {7: _NODE},
    _SPARSE: {1: _TENSOR, 2: _TENSOR},
    _TENSOR: {13: _ENTRY},
    _ENTRY: {},
}


class _Malformed(Exception):
    pass


def external_locations(path: str | os.PathLike) -> list[str]:
    """The distinct ``location`` values of the file's external tensors, in file order."""
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                return []
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        return []
    found: dict[str, None] = {}
    try:
        _walk(memoryview(data), 0, len(data), _MODEL, 0, found)
    except _Malformed:
        pass
    finally:
        data.close()
    return list(found)


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Malformed
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _walk(
    buf: memoryview, pos: int, end: int, kind: int, depth: int, found: dict[str, None]
) -> tuple[str | None, str | None, int]:
    """Walk one message; a tensor adds its location to ``found``. Returns (key, value, data
    location) for an entry or tensor."""
    if depth > _MAX_DEPTH:
        raise _Malformed
    children = _CHILDREN[kind]
    key = value = None
    location: str | None = None
    data_location = 0
    while pos < end:
        tag, pos = _varint(buf, pos, end)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            number, pos = _varint(buf, pos, end)
            if kind == _TENSOR and field == 14:
                data_location = number
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            start, pos = pos, pos + length
            if pos > end:
                raise _Malformed
            if kind == _ENTRY and field in (1, 2):
                text = bytes(buf[start:pos]).decode("utf-8", "replace")
                key, value = (text, value) if field == 1 else (key, text)
            elif field in children:
                k, v, _ = _walk(buf, start, pos, children[field], depth + 1, found)
                if kind == _TENSOR and k == "location" and v is not None:
                    location = v
        else:
            raise _Malformed
    if pos != end:
        raise _Malformed
    if kind == _TENSOR and data_location == _EXTERNAL and location is not None:
        found.setdefault(location, None)
    return key, value, data_location
