"""The linear layers folds can change, by op type: how to read each as producer or consumer.

A new linear op goes here: a module with ``producer(node, ctx)`` and/or ``consumer(use, ctx)``
returning :class:`~bnfold.folds.linear.Producer` / :class:`~bnfold.folds.linear.Consumer`.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx_ir as ir

from bnfold.folds import conv, conv_transpose, gemm, matmul
from bnfold.folds.common import is_default_domain, is_op, node_label
from bnfold.folds.context import FoldContext
from bnfold.folds.linear import Consumer, Producer
from bnfold.folds.plan import Refusal
from bnfold.folds.trace import Use

PRODUCERS: dict[str, Callable[[ir.Node, FoldContext], Producer | Refusal]] = {
    "Conv": conv.producer,
    "ConvTranspose": conv_transpose.producer,
    "Gemm": gemm.producer,
    "MatMul": matmul.producer,
}
CONSUMERS: dict[str, Callable[[Use, FoldContext], Consumer | Refusal]] = {
    "Conv": conv.consumer,
    "ConvTranspose": conv_transpose.consumer,
    "Gemm": gemm.consumer,
    "MatMul": matmul.consumer,
}
_NAMES = ", ".join(PRODUCERS)


def producer(node: ir.Node, ctx: FoldContext) -> Producer | Refusal:
    """``node`` (or the MatMul whose bias Add it is) read as a producer, or why not."""
    if not is_default_domain(node):
        return Refusal(f"its input comes from {node.domain}::{node.op_type}")
    if is_op(node, "Add"):
        owner = matmul.owns(node, ctx)
        if owner is not None:
            return matmul.producer(owner, ctx)
    read = PRODUCERS.get(node.op_type)
    if read is None:
        return Refusal(f"its input comes from {node.op_type}, not a linear layer ({_NAMES})")
    found = read(node, ctx)
    if isinstance(found, Producer) and found.bias is not None and found.bias.size != found.channels:
        return Refusal(
            f"the {node.op_type} bias has {found.bias.size} values for {found.channels} channels"
        )
    return found


def consumer(use: Use, ctx: FoldContext) -> Consumer | Refusal:
    node = use.node
    read = CONSUMERS.get(node.op_type) if is_default_domain(node) else None
    if read is None:
        return Refusal(
            f"'{node_label(node)}' ({node.op_type}) reads its output and is not a "
            f"linear layer ({_NAMES})"
        )
    return read(use, ctx)


def is_layer_bias(node: ir.Node, ctx: FoldContext) -> bool:
    """Whether ``node`` is part of a layer (a MatMul's bias Add), not an affine node of its own."""
    return is_op(node, "Add") and matmul.owns(node, ctx) is not None
