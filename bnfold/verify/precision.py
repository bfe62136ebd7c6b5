"""The lowest float precision a model computes in, which sets the default check tolerances.

A model converted to fp16 the usual way (``convert_float_to_float16(model, keep_io_types=True)``)
has fp32 inputs and outputs but fp16 weights and arithmetic inside: its outputs carry fp16
rounding, so an fp32 tolerance would fail a correct fold. The precision is read from the model
itself (no external data is loaded): the element types of initializers, Constant values, graph
inputs/outputs/value_info and Cast/CastLike targets, in every graph and model-local function.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import onnx

# float types by precision (mantissa bits), lowest first
_FLOATS: dict[int, str] = {
    int(onnx.TensorProto.BFLOAT16): "bfloat16",
    int(onnx.TensorProto.FLOAT16): "float16",
    int(onnx.TensorProto.FLOAT): "float32",
    int(onnx.TensorProto.DOUBLE): "float64",
}
_ORDER = ["bfloat16", "float16", "float32", "float64"]


@dataclass(frozen=True)
class ComputePrecision:
    """The lowest float type seen (None: no float at all), and where it was seen."""

    dtype: str | None
    evidence: dict[str, int]  # e.g. {"float16 initializers": 42, "Casts to float16": 2}

    def describe(self) -> str:
        if self.dtype is None:
            return "no float tensors"
        found = ", ".join(f"{n} {what}" for what, n in self.evidence.items())
        return f"the model computes in {self.dtype} ({found})"

    def lowest(self, output_dtype: str) -> str:
        """The lower of the output's float dtype and this precision."""
        if self.dtype is None or output_dtype not in _ORDER:
            return output_dtype
        return min(output_dtype, self.dtype, key=_ORDER.index)


def _scan(graph: onnx.GraphProto, seen: Counter) -> None:
    for t in graph.initializer:
        if t.data_type in _FLOATS:
            seen[(_FLOATS[t.data_type], "initializers")] += 1
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        elem = vi.type.tensor_type.elem_type
        if elem in _FLOATS:
            seen[(_FLOATS[elem], "typed values")] += 1
    for node in graph.node:
        _scan_node(node, seen)


def _scan_node(node: onnx.NodeProto, seen: Counter) -> None:
    for attr in node.attribute:
        if node.op_type in ("Cast", "CastLike") and attr.name == "to" and attr.i in _FLOATS:
            seen[(_FLOATS[attr.i], f"Casts to {_FLOATS[attr.i]}")] += 1
        elif attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type in _FLOATS:
            seen[(_FLOATS[attr.t.data_type], "constants")] += 1
        elif attr.type == onnx.AttributeProto.GRAPH:
            _scan(attr.g, seen)
        elif attr.type == onnx.AttributeProto.GRAPHS:
            for g in attr.graphs:
                _scan(g, seen)


def compute_precision(model: onnx.ModelProto) -> ComputePrecision:
    """The lowest float precision ``model`` holds or casts to."""
    seen: Counter = Counter()
    _scan(model.graph, seen)
    for function in model.functions:
        for node in function.node:
            _scan_node(node, seen)
    dtypes = {dtype for dtype, _ in seen}
    lowest = min(dtypes, key=_ORDER.index) if dtypes else None
    evidence = {
        (what if what.startswith("Casts") else f"{dtype} {what}"): n
        for (dtype, what), n in sorted(seen.items())
        if dtype == lowest
    }
    return ComputePrecision(lowest, evidence)
