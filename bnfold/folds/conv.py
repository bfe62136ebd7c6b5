"""Conv (1-D, 2-D, 3-D; any group, strides, dilations) as a producer and as a consumer.

Backward (BN after the Conv):
  Before:  y = BN(Conv(x, W, b))
  After:   y = Conv(x, W', b')          W'[o] = s[o] W[o],  b' = s (b - mean) + beta
  Conditions: W (Cout, Cin/group, k...) and b (Cout,) constant and floating point (b may be
  absent: it is created); padding does not matter (the affine map acts on the output).

Forward (BN before the Conv):
  Before:  y = Conv(BN(x), W, b)
  After:   y = Conv(x, W', b')          W'[o, j] = W[o, j] s[g*Cin/g + j]  (g = o's group),
                                        b'[o] = b[o] + sum_{j,k} W[o, j, k] t[g*Cin/g + j]
  Conditions: the BN channels are the Conv's input channels (axis 1); for a non-zero shift t,
  the padding cannot see it: all pads 0, or auto_pad VALID, or SAME with every kernel dim 1
  (border outputs of a padded Conv see zeros where the BN would have given t). The scale
  alone commutes with zero padding, so a shift-free BN folds forward whatever the padding.
"""

from __future__ import annotations

import onnx_ir as ir

from bnfold.arithmetic import WeightLayout
from bnfold.folds.common import (
    bias_vector,
    conv_weight_and_bias,
    int_attr,
    ints_attr,
    node_label,
    str_attr,
)
from bnfold.folds.context import FoldContext
from bnfold.folds.linear import BiasSlot, Consumer, Producer
from bnfold.folds.plan import Refusal
from bnfold.folds.trace import Use, channel_axis_features


def producer(node: ir.Node, ctx: FoldContext) -> Producer | Refusal:
    parts = conv_weight_and_bias(node, ctx, "(Cout, Cin/group, k...)")
    if isinstance(parts, Refusal):
        return parts
    weight, bias = parts
    return Producer(
        kind="conv",
        node=node,
        output=node.outputs[0],
        weight=weight.value,
        array=weight.array,
        layout=WeightLayout.AXIS0,
        groups=int_attr(node, "group", 1),
        channels=int(weight.array.shape[0]),
        feature_axis=1,
        rank=weight.array.ndim,
        bias=bias_vector(bias),
        slot=BiasSlot(node, 2),
        bias_source=None if bias is None else bias.value,
    )


def padding_refusal(node: ir.Node, kernel: tuple[int, ...]) -> str | None:
    """Why zero padding would see a shifted input, or None when the Conv does not pad."""
    auto_pad = str_attr(node, "auto_pad", "NOTSET")
    if auto_pad == "VALID":
        return None
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        if all(k == 1 for k in kernel):
            return None
        return (
            f"the {node.op_type} '{node_label(node)}' pads its input (auto_pad {auto_pad}): "
            "border outputs would see zeros where the BN gives its shift"
        )
    pads = ints_attr(node, "pads") or []
    if any(pads):
        return (
            f"the {node.op_type} '{node_label(node)}' pads its input (pads {pads}): border "
            "outputs would see zeros where the BN gives its shift"
        )
    return None


def consumer(use: Use, ctx: FoldContext) -> Consumer | Refusal:
    node = use.node
    if use.index != 0:
        return Refusal(f"its output is the Conv '{node_label(node)}' weight or bias, not its data")
    parts = conv_weight_and_bias(node, ctx, "(Cout, Cin/group, k...)")
    if isinstance(parts, Refusal):
        return parts
    weight, bias = parts
    w = weight.array
    groups = int_attr(node, "group", 1)
    if groups < 1 or w.shape[0] % groups:
        return Refusal(f"weight dim 0 ({w.shape[0]}) is not divisible by group={groups}")
    index = channel_axis_features(use, w.ndim, int(w.shape[1]) * groups, "Conv")
    if isinstance(index, Refusal):
        return index
    return Consumer(
        kind="conv",
        node=node,
        weight=weight.value,
        array=w,
        layout=WeightLayout.GROUPED_AXIS1,
        groups=groups,
        index=index,
        bias=bias_vector(bias),
        slot=BiasSlot(node, 2),
        out_axis=0,
        shift_refusal=padding_refusal(node, tuple(w.shape[2:])),
        bias_source=None if bias is None else bias.value,
    )
