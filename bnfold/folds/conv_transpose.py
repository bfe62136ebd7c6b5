"""Fold a per-channel affine node into a preceding ConvTranspose.

Before:  y = BN(ConvTranspose(x, W, b))           (any group, strides, output_padding)
After:   y = ConvTranspose(x, W', b')
Conditions:
- W (Cin, Cout/group, k...) and b (Cout,) are constants (b may be absent: it is created);
- the ConvTranspose output feeds only the BN and is not a graph output;
- the BN has Cout = group * W.shape[1] channels.
Formula: output channel o = g * (Cout/group) + j comes from W[g*Cin/group:(g+1)*Cin/group, j];
W' = W viewed as (group, Cin/group, Cout/group, k...) times s viewed as (group, 1, Cout/group, 1...);
b' = s * (b - mean) + beta. (Scaling axis 1 by s[:Cout/group] alone is wrong for group > 1.)
"""

from __future__ import annotations

import onnx_ir as ir

from bnfold.arithmetic import WeightLayout
from bnfold.folds.common import (
    FoldContext,
    LinearLayer,
    Refusal,
    conv_weight_and_bias,
    install_at,
    int_attr,
)


def match_conv_transpose(node: ir.Node, ctx: FoldContext) -> LinearLayer | Refusal:
    parts = conv_weight_and_bias(node, ctx, "(Cin, Cout/group, k...)")
    if isinstance(parts, Refusal):
        return parts
    weight, bias = parts
    groups = int_attr(node, "group", 1)
    if groups < 1 or weight.shape[0] % groups:
        return Refusal(f"weight dim 0 ({weight.shape[0]}) is not divisible by group={groups}")
    return LinearLayer(
        fold="conv_transpose",
        node=node,
        output=node.outputs[0],
        weight_value=node.inputs[1],
        weight=weight,
        layout=WeightLayout.CONV_TRANSPOSE,
        groups=groups,
        bias=bias,
        channels=weight.shape[1] * groups,
        feature_axis=1,
        out_rank=weight.ndim,
        install=install_at(1, 2),
        replaced=[v for v in node.inputs[1:3] if v is not None],
    )
