"""ConvTranspose (any group, strides, output_padding) as a producer and as a consumer.

Backward (BN after the ConvTranspose):
  Before:  y = BN(ConvTranspose(x, W, b))
  After:   y = ConvTranspose(x, W', b')
  Conditions: W (Cin, Cout/group, k...) and b (Cout,) constant floating point (b may be
  absent: it is created); Cin divisible by group.
  Formula: output channel o = g*(Cout/group) + j comes from W[g*Cin/group:(g+1)*Cin/group, j]:
  W' = W viewed as (group, Cin/group, Cout/group, k...) times s viewed as
  (group, 1, Cout/group, 1...);  b' = s (b - mean) + beta.

Forward (BN before the ConvTranspose): only a shift-free BN (t = 0): W'[c] = s[c] W[c] along
the input axis 0. A shift is refused: a ConvTranspose spreads a constant input unevenly over its
output (border positions and stride phases receive fewer kernel taps).
"""

from __future__ import annotations

import onnx_ir as ir

from bnfold.arithmetic import WeightLayout
from bnfold.folds.common import bias_vector, conv_weight_and_bias, int_attr, node_label
from bnfold.folds.context import FoldContext
from bnfold.folds.linear import BiasSlot, Consumer, Producer
from bnfold.folds.plan import Refusal
from bnfold.folds.trace import Use, channel_axis_features

_LAYOUT = "(Cin, Cout/group, k...)"


def producer(node: ir.Node, ctx: FoldContext) -> Producer | Refusal:
    parts = conv_weight_and_bias(node, ctx, _LAYOUT)
    if isinstance(parts, Refusal):
        return parts
    weight, bias = parts
    w = weight.array
    groups = int_attr(node, "group", 1)
    if groups < 1 or w.shape[0] % groups:
        return Refusal(f"weight dim 0 ({w.shape[0]}) is not divisible by group={groups}")
    return Producer(
        kind="conv_transpose",
        node=node,
        output=node.outputs[0],
        weight=weight.value,
        array=w,
        layout=WeightLayout.GROUPED_AXIS1,
        groups=groups,
        channels=int(w.shape[1]) * groups,
        feature_axis=1,
        rank=w.ndim,
        bias=bias_vector(bias),
        slot=BiasSlot(node, 2),
        bias_source=None if bias is None else bias.value,
    )


def consumer(use: Use, ctx: FoldContext) -> Consumer | Refusal:
    node = use.node
    if use.index != 0:
        return Refusal(
            f"its output is the ConvTranspose '{node_label(node)}' weight or bias, not its data"
        )
    parts = conv_weight_and_bias(node, ctx, _LAYOUT)
    if isinstance(parts, Refusal):
        return parts
    weight, bias = parts
    w = weight.array
    index = channel_axis_features(use, w.ndim, int(w.shape[0]), "ConvTranspose")
    if isinstance(index, Refusal):
        return index
    groups = int_attr(node, "group", 1)
    return Consumer(
        kind="conv_transpose",
        node=node,
        weight=weight.value,
        array=w,
        layout=WeightLayout.AXIS0,
        groups=groups,
        index=index,
        bias=bias_vector(bias),
        slot=BiasSlot(node, 2),
        out_axis=1,
        shift_refusal=(
            f"the ConvTranspose '{node_label(node)}' spreads a constant input unevenly over its "
            "output, so the BN shift cannot become its bias"
        ),
        bias_source=None if bias is None else bias.value,
    )
