"""Where an int8 model still computes in float once onnxruntime has optimised it.

onnxruntime turns each QDQ group it has an integer kernel for (DequantizeLinear -> Conv ->
QuantizeLinear, ...) into one integer op (QLinearConv, QGemm, ...); what it cannot fuse stays a
float op between a DequantizeLinear and a QuantizeLinear (a BatchNormalization, a Mul/Add, a
pooling op without an int8 kernel). The optimised graph is written with
``SessionOptions.optimized_model_filepath`` (ORT_ENABLE_ALL) into a temporary folder and walked:
from every DequantizeLinear output forward through float ops up to a QuantizeLinear.

- ``between``: float ops on a path from a DequantizeLinear to a QuantizeLinear (they cost a
  dequantize, a float op and a requantize inside the int8 model);
- ``tail``: float ops after the last DequantizeLinear that reach no QuantizeLinear (e.g. a final
  Softmax on the dequantized logits), listed apart.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort

from bnfold.errors import BadInputError
from bnfold.verify.session import check_provider, model_ref

__all__ = ["FloatOp", "FloatOps", "float_ops", "float_ops_in_graph"]

_DEQUANTIZE = {"DequantizeLinear"}
_QUANTIZE = {"QuantizeLinear", "DynamicQuantizeLinear"}
_NO_COMPUTE = {"Shape", "Size"}  # read a float tensor's metadata only


@dataclass(frozen=True)
class FloatOp:
    op_type: str
    name: str
    where: str  # "between" or "tail"

    def to_dict(self) -> dict[str, str]:
        return dict(vars(self))


@dataclass
class FloatOps:
    """The float ops of one optimised int8 graph, and its op counts."""

    ops: list[FloatOp] = field(default_factory=list)
    op_counts: dict[str, int] = field(default_factory=dict)

    @property
    def between(self) -> list[FloatOp]:
        return [o for o in self.ops if o.where == "between"]

    def summary(self) -> str:
        """e.g. ``3 between DequantizeLinear and QuantizeLinear: BatchNormalization x3``."""
        counts = Counter(o.op_type for o in self.between)
        text = "none between DequantizeLinear and QuantizeLinear"
        if counts:
            text = (
                f"{sum(counts.values())} between DequantizeLinear and QuantizeLinear: "
                + ", ".join(f"{op} x{n}" for op, n in counts.most_common())
            )
        tail = Counter(o.op_type for o in self.ops if o.where == "tail")
        if tail:
            text += f"; {sum(tail.values())} after the last DequantizeLinear: " + ", ".join(
                f"{op} x{n}" for op, n in tail.most_common()
            )
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "between": [o.to_dict() for o in self.between],
            "tail": [o.to_dict() for o in self.ops if o.where == "tail"],
            "between_by_op": dict(Counter(o.op_type for o in self.between)),
            "optimised_op_counts": self.op_counts,
            "summary": self.summary(),
        }


def float_ops_in_graph(graph: onnx.GraphProto) -> FloatOps:
    """The float ops of an (optimised) QDQ graph: forward from DequantizeLinear outputs."""
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(graph.node):
        for name in node.input:
            if name:
                consumers.setdefault(name, []).append(i)
    nodes = list(graph.node)
    reached: set[int] = set()
    frontier = [o for n in nodes if n.op_type in _DEQUANTIZE for o in n.output]
    while frontier:
        value = frontier.pop()
        for i in consumers.get(value, []):
            node = nodes[i]
            if i in reached or node.op_type in _QUANTIZE | _DEQUANTIZE | _NO_COMPUTE:
                continue
            reached.add(i)
            frontier.extend(o for o in node.output if o)
    # which reached nodes lead to a QuantizeLinear through reached nodes: consumers come later
    # in a (topologically sorted) ONNX graph, so one pass in reverse order settles it
    leads: dict[int, bool] = {}
    for i in sorted(reached, reverse=True):
        leads[i] = any(
            nodes[j].op_type in _QUANTIZE or leads.get(j, False)
            for out in nodes[i].output
            for j in consumers.get(out, [])
        )
    ops = [
        FloatOp(nodes[i].op_type, nodes[i].name, "between" if leads[i] else "tail")
        for i in sorted(reached)
    ]
    return FloatOps(ops, dict(Counter(n.op_type for n in nodes)))


def float_ops(model: Any, *, provider: str = "cpu") -> FloatOps:
    """Optimise ``model`` (path, ModelProto or bytes) with onnxruntime at ORT_ENABLE_ALL, write
    the optimised graph into a temporary folder, and list its float ops."""
    ref = model_ref(model, "int8")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # the "hardware specific optimizations" warning is expected here
    with tempfile.TemporaryDirectory(prefix="bnfold-optimised-") as tmp:
        so.optimized_model_filepath = str(Path(tmp) / "optimised.onnx")
        try:
            ort.InferenceSession(ref.source, sess_options=so, providers=[check_provider(provider)])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise BadInputError(ref.path, f"onnxruntime cannot load it: {exc}") from exc
        optimised = onnx.load(so.optimized_model_filepath, load_external_data=False)
    return float_ops_in_graph(optimised.graph)
