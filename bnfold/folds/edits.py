"""Plan edits that give a producer or a consumer its new weight and bias (pure data)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from bnfold.folds.common import node_label
from bnfold.folds.linear import BiasSlot, Consumer, Producer
from bnfold.folds.plan import (
    Edit,
    NewTensor,
    Operand,
    Refusal,
    ReplaceNode,
    ScaledWeight,
    SetAttribute,
    SetInput,
)


def _layer_edits(
    node: ir.Node,
    weight: ScaledWeight | None,
    bias: NewTensor | None,
    slot: BiasSlot | None,
    after_weight: tuple[ir.Attr, ...],
    after_bias: tuple[ir.Attr, ...],
    what: str,
    why: str,
) -> list[Edit] | Refusal:
    """Put ``weight`` (input 1 of ``node``) and ``bias`` (into ``slot``) in place."""
    if bias is not None:
        if slot is None:
            return Refusal(f"{what} has no bias to take the shift ({why})")
        if slot.becomes_gemm:
            changes: list[tuple[int, Operand]] = [(2, bias)]
            if weight is not None:
                changes.insert(0, (1, weight))
            return [ReplaceNode(node, "Gemm", tuple(changes))]
    edits: list[Edit] = []
    if weight is not None:
        edits.append(SetInput(node, 1, weight))
        edits.extend(SetAttribute(node, attr) for attr in after_weight)
    if bias is not None:
        assert slot is not None
        edits.append(SetInput(slot.node, slot.index, bias))
        edits.extend(SetAttribute(node, attr) for attr in after_bias)
    return edits


def producer_edits(p: Producer, scale: np.ndarray, bias: np.ndarray | None) -> list[Edit] | Refusal:
    """``p``'s output channels scaled by ``scale`` (times its multiplier); ``bias`` (float64,
    None: keep none) as its new bias."""
    weight = ScaledWeight(p.weight, p.array, scale * p.multiplier, p.layout, p.groups)
    tensor = None if bias is None else NewTensor(bias, p.dtype, original=p.bias)
    return _layer_edits(
        p.node, weight, tensor, p.slot, p.after_weight, p.after_bias,
        f"the {p.node.op_type}", "its output is not rank 2",
    )  # fmt: skip


def consumer_edits(
    c: Consumer, scale: np.ndarray | None, shift_sum: np.ndarray | None
) -> list[Edit] | Refusal:
    """``c``'s input features scaled by ``scale`` (None: unchanged); ``shift_sum`` (``W t`` per
    output channel, None: no shift) added to its bias (times its multiplier)."""
    weight = None
    if scale is not None:
        weight = ScaledWeight(c.weight, c.array, scale, c.layout, c.groups, scales_outputs=False)
    tensor = None
    if shift_sum is not None:
        if c.bias is not None and c.bias.size != shift_sum.size:
            return Refusal(
                f"the {c.node.op_type} '{node_label(c.node)}' bias has {c.bias.size} values for "
                f"{shift_sum.size} outputs"
            )
        base = np.zeros_like(shift_sum) if c.bias is None else c.bias
        tensor = NewTensor(base + c.multiplier * shift_sum, c.dtype, original=c.bias)
    return _layer_edits(
        c.node, weight, tensor, c.slot, (), c.after_bias,
        f"the {c.node.op_type} '{node_label(c.node)}'", "its input is not rank 2",
    )  # fmt: skip
