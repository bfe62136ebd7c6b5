"""Fold a per-channel affine node into a preceding Gemm.

Before:  y = BN(Gemm(A, B, C; alpha, beta, transA, transB))      y: (N, M)
After:   y = Gemm(A, B', C'; alpha=1, beta=1, transA, transB)
Conditions:
- B and C (if present) are constants; C is absent, a scalar, (M,), (1, M) or (1, 1): it must
  not vary along the batch axis;
- the Gemm output feeds only the BN and is not a graph output; the BN has M channels.
Formula: Gemm computes alpha * A'B' + beta * C, so with s, t from the BN
B'[:, o] = alpha * s[o] * B[:, o] (transB=0: B is (K, M), scale axis 1; transB=1: B is (M, K),
scale axis 0) and C' = s * (beta * C) + t; alpha and beta are then 1.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from bnfold.arithmetic import WeightLayout
from bnfold.folds.common import (
    FoldContext,
    LinearLayer,
    Refusal,
    check_weight_rank,
    float_attr,
    install_at,
    int_attr,
)
from bnfold.folds.elementwise import channel_vector


def _install_gemm(
    ctx: FoldContext, layer: LinearLayer, weight: ir.Value, bias: ir.Value | None
) -> ir.Value:
    out = install_at(1, 2)(ctx, layer, weight, bias)
    layer.node.attributes["alpha"] = ir.AttrFloat32("alpha", 1.0)
    if bias is not None:
        layer.node.attributes["beta"] = ir.AttrFloat32("beta", 1.0)
    return out


def match_gemm(node: ir.Node, ctx: FoldContext) -> LinearLayer | Refusal:
    if len(node.inputs) < 2:
        return Refusal("Gemm has no B input")
    weight = ctx.const(node.inputs[1], "Gemm B")
    if isinstance(weight, Refusal):
        return weight
    refusal = check_weight_rank(weight, "2-D", weight.ndim == 2)
    if refusal:
        return refusal
    trans_b = int_attr(node, "transB", 0)
    layout = WeightLayout.AXIS0 if trans_b else WeightLayout.AXIS1
    channels = weight.shape[0] if trans_b else weight.shape[1]
    alpha, beta = float_attr(node, "alpha", 1.0), float_attr(node, "beta", 1.0)
    c_value = node.inputs[2] if len(node.inputs) > 2 else None
    bias = None
    if c_value is not None:
        c = ctx.const(c_value, "Gemm C")
        if isinstance(c, Refusal):
            return c
        if c.ndim == 2 and c.shape[0] != 1:
            return Refusal(f"Gemm C of shape {tuple(c.shape)} varies along the batch axis")
        vec = channel_vector(np.asarray(c), channels, -1, 2)
        if isinstance(vec, Refusal):
            return vec
        bias = beta * vec  # without C, beta does not matter
    return LinearLayer(
        fold="gemm",
        node=node,
        output=node.outputs[0],
        weight_value=node.inputs[1],
        weight=weight,
        layout=layout,
        groups=1,
        bias=bias,
        channels=channels,
        feature_axis=-1,
        out_rank=2,
        install=_install_gemm,
        replaced=[v for v in node.inputs[1:3] if v is not None],
        weight_multiplier=alpha,
    )
