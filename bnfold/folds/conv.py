"""Fold a per-channel affine node (BatchNormalization, Mul, Add, ...) into a preceding Conv.

Before:  y = BN(Conv(x, W, b))                     (1-D, 2-D, 3-D; any group, pads, strides)
After:   y = Conv(x, W', b')                      (the Conv output takes the BN output's name)
Conditions:
- W (Cout, Cin/group, k...) and b (Cout,) are constants (b may be absent: it is created);
- the Conv output feeds only the BN and is not a graph output;
- the BN has Cout channels.
Formula: s = gamma / sqrt(var + eps);  W'[o] = s[o] * W[o];  b' = s * (b - mean) + beta.
Padding does not matter here: the affine map acts on the Conv's output.
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


def match_conv(node: ir.Node, ctx: FoldContext) -> LinearLayer | Refusal:
    parts = conv_weight_and_bias(node, ctx, "(Cout, Cin/group, k...)")
    if isinstance(parts, Refusal):
        return parts
    weight, bias = parts
    return LinearLayer(
        fold="conv",
        node=node,
        output=node.outputs[0],
        weight_value=node.inputs[1],
        weight=weight,
        layout=WeightLayout.AXIS0,
        groups=int_attr(node, "group", 1),
        bias=bias,
        channels=weight.shape[0],
        feature_axis=1,
        out_rank=weight.ndim,
        install=install_at(1, 2),
        replaced=[v for v in node.inputs[1:3] if v is not None],
    )
