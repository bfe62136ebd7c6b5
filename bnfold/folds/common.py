"""Small graph helpers every fold uses: attributes, labels, consumers, parameter vectors."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from bnfold.folds.context import FoldContext
from bnfold.folds.plan import Refusal, Refused

# Folded weights larger than this are computed when written, one tensor at a time.
LAZY_BYTES = 1 << 20


def is_default_domain(node: ir.Node) -> bool:
    return node.domain in ("", "ai.onnx")


def is_op(node: ir.Node | None, *op_types: str) -> bool:
    """Whether ``node`` is a default-domain node of one of ``op_types``."""
    return node is not None and node.op_type in op_types and is_default_domain(node)


def node_label(node: ir.Node) -> str:
    """The node's name, else ``Op(first output)``."""
    if node.name:
        return node.name
    out = node.outputs[0].name if node.outputs else None
    return f"{node.op_type}({out})" if out else node.op_type


def attribute(node: ir.Node, name: str) -> ir.Attr | None:
    """``node``'s attribute ``name``; one that refers to a function attribute (``@name`` in a
    function body) has a value only per call, so the fold is refused (raises Refused)."""
    attr = node.attributes.get(name)
    if attr is not None and attr.is_ref():
        raise Refused(
            Refusal(
                f"the {node.op_type} '{node_label(node)}' attribute '{name}' refers to the "
                f"function attribute '{attr.ref_attr_name}'"
            )
        )
    return attr


def int_attr(node: ir.Node, name: str, default: int) -> int:
    attr = attribute(node, name)
    return default if attr is None else int(attr.as_int())


def float_attr(node: ir.Node, name: str, default: float) -> float:
    attr = attribute(node, name)
    return default if attr is None else float(attr.as_float())


def ints_attr(node: ir.Node, name: str) -> list[int] | None:
    attr = attribute(node, name)
    return None if attr is None else [int(i) for i in attr.as_ints()]


def str_attr(node: ir.Node, name: str, default: str) -> str:
    attr = attribute(node, name)
    return default if attr is None else str(attr.as_string())


def input_at(node: ir.Node, index: int) -> ir.Value | None:
    """``node.inputs[index]``, or None when the input is absent."""
    return node.inputs[index] if index < len(node.inputs) else None


@dataclass(frozen=True, eq=False)
class ConstInput:
    """A constant input of a node: the value it reads and the array behind it."""

    value: ir.Value
    array: np.ndarray


def const_input(node: ir.Node, index: int, what: str, ctx: FoldContext) -> ConstInput | Refusal:
    """Input ``index`` of ``node`` with its constant array, or why it is not a usable constant
    (absent, computed at run time, overridable)."""
    value = input_at(node, index)
    array = ctx.const(value, what)
    if isinstance(array, Refusal):
        return array
    assert value is not None  # ctx.const refuses a missing value
    return ConstInput(value, array)


def sole_use_refusal(value: ir.Value, kind: str) -> Refusal | None:
    """Refuse when ``value`` feeds more than one node or is a graph output."""
    if value.is_graph_output():
        return Refusal(f"the {kind} output '{value.name}' is also a graph output")
    uses = value.uses()
    if len(uses) != 1:
        return Refusal(f"the {kind} output '{value.name}' also feeds {len(uses) - 1} other node(s)")
    return None


def is_float(dtype: np.dtype) -> bool:
    return bool(np.issubdtype(dtype, np.floating)) or str(dtype) == "bfloat16"


def float_weight(array: np.ndarray, kind: str) -> Refusal | None:
    if is_float(array.dtype):
        return None
    return Refusal(f"the {kind} weight is {array.dtype}, not floating point")


def conv_weight_and_bias(
    node: ir.Node, ctx: FoldContext, layout: str
) -> tuple[ConstInput, ConstInput | None] | Refusal:
    """Constant float weight (rank >= 3, ``layout`` names its axes) and optional bias of a
    (de)convolution."""
    op = node.op_type
    weight = const_input(node, 1, f"{op} weight", ctx)
    if isinstance(weight, Refusal):
        return weight
    if weight.array.ndim < 3:
        return Refusal(f"weight of shape {tuple(weight.array.shape)} is not {layout}")
    refusal = float_weight(weight.array, op)
    if refusal:
        return refusal
    if input_at(node, 2) is None:
        return weight, None
    bias = const_input(node, 2, f"{op} bias", ctx)
    if isinstance(bias, Refusal):
        return bias
    if bias.array.ndim != 1:
        return Refusal(f"the {op} bias has shape {tuple(bias.array.shape)}, not (C,)")
    return weight, bias


def bias_vector(bias: ConstInput | None) -> np.ndarray | None:
    """A (de)convolution bias as a float64 vector (None when absent)."""
    return None if bias is None else bias.array.astype(np.float64).reshape(-1)
