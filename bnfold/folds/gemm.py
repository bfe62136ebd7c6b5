"""Gemm (Y = alpha * A' B' + beta * C; any alpha, beta, transB) as a producer and a consumer.

Backward (BN after the Gemm, on its output features):
  Before:  y = BN(Gemm(A, B, C; alpha, beta, transA, transB))      y: (N, M)
  After:   y = Gemm(A, B', C'; alpha=1, beta=1, transA, transB)
  Formula: B'[:, o] = alpha * s[o] * B[:, o] (transB=0: B is (K, M), scale axis 1; transB=1: B
  is (M, K), scale axis 0);  C' = s * (beta * C) + t.

Forward (BN before the Gemm, on A's features):
  Before:  y = Gemm(BN(A), B, C; alpha, beta, transA=0, transB)
  After:   y = Gemm(A, B', C'; alpha, beta=1, transB)
  Formula: B' = diag(s) B along B's input axis (transB=0: axis 0; transB=1: axis 1);
  C' = beta * C + alpha * (t B). Exact: a Gemm has no padding.

Conditions (both): B constant, 2-D, floating point; C absent, a scalar, (M,), (1, M) or (1, 1)
(it must not vary along the batch axis); forward: transA = 0 (with transA=1 the BN channel axis
becomes the rows of the output, which B cannot scale), A is read as input 0.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from bnfold.arithmetic import WeightLayout
from bnfold.folds.common import (
    ConstInput,
    const_input,
    float_attr,
    float_weight,
    input_at,
    int_attr,
    node_label,
)
from bnfold.folds.context import FoldContext
from bnfold.folds.linear import BiasSlot, Consumer, Producer
from bnfold.folds.plan import Refusal
from bnfold.folds.trace import Use


def _weight(node: ir.Node, ctx: FoldContext) -> ConstInput | Refusal:
    weight = const_input(node, 1, "Gemm B", ctx)
    if isinstance(weight, Refusal):
        return weight
    if weight.array.ndim != 2:
        return Refusal(f"weight of shape {tuple(weight.array.shape)} is not 2-D")
    return float_weight(weight.array, "Gemm") or weight


def _bias(node: ir.Node, outputs: int, ctx: FoldContext) -> np.ndarray | None | Refusal:
    """``beta * C`` as a float64 (outputs,) vector, None without C."""
    c_value = input_at(node, 2)
    if c_value is None:
        return None
    c = ctx.const(c_value, "Gemm C")
    if isinstance(c, Refusal):
        return c
    c = np.asarray(c)
    if c.ndim > 2 or (c.ndim == 2 and c.shape[0] != 1):
        return Refusal(f"Gemm C of shape {tuple(c.shape)} varies along the batch axis")
    flat = c.reshape(-1).astype(np.float64)
    if flat.size not in (1, outputs):
        return Refusal(f"the constant has {flat.size} values for {outputs} channels")
    return float_attr(node, "beta", 1.0) * np.broadcast_to(flat, (outputs,))


def producer(node: ir.Node, ctx: FoldContext) -> Producer | Refusal:
    weight = _weight(node, ctx)
    if isinstance(weight, Refusal):
        return weight
    trans_b = int_attr(node, "transB", 0)
    channels = int(weight.array.shape[0] if trans_b else weight.array.shape[1])
    bias = _bias(node, channels, ctx)
    if isinstance(bias, Refusal):
        return bias
    return Producer(
        kind="gemm",
        node=node,
        output=node.outputs[0],
        weight=weight.value,
        array=weight.array,
        layout=WeightLayout.AXIS0 if trans_b else WeightLayout.AXIS1,
        groups=1,
        channels=channels,
        feature_axis=1,
        rank=2,
        bias=bias,
        slot=BiasSlot(node, 2),
        multiplier=float_attr(node, "alpha", 1.0),
        after_weight=(ir.AttrFloat32("alpha", 1.0),),
        after_bias=(ir.AttrFloat32("beta", 1.0),),
        bias_source=input_at(node, 2),
    )


def consumer(use: Use, ctx: FoldContext) -> Consumer | Refusal:
    node = use.node
    if use.index != 0:
        return Refusal(f"its output is the Gemm '{node_label(node)}' B or C, not its A")
    if int_attr(node, "transA", 0):
        return Refusal(
            f"the Gemm '{node_label(node)}' has transA=1: the BN channels become its output "
            "rows, which B cannot scale"
        )
    weight = _weight(node, ctx)
    if isinstance(weight, Refusal):
        return weight
    cmap = use.cmap.normalized(2)
    if isinstance(cmap, Refusal):
        return cmap
    if cmap.axis not in (None, 1):
        return Refusal(f"the BN channels reach the Gemm on axis {cmap.axis}, not its features")
    trans_b = int_attr(node, "transB", 0)
    k, outputs = (weight.array.shape[1], weight.array.shape[0]) if trans_b else weight.array.shape
    index = cmap.features(int(k), None)
    if isinstance(index, Refusal):
        return index
    bias = _bias(node, int(outputs), ctx)
    if isinstance(bias, Refusal):
        return bias
    return Consumer(
        kind="gemm",
        node=node,
        weight=weight.value,
        array=weight.array,
        layout=WeightLayout.AXIS1 if trans_b else WeightLayout.AXIS0,
        groups=1,
        index=index,
        bias=bias,
        slot=BiasSlot(node, 2),
        out_axis=0 if trans_b else 1,
        multiplier=float_attr(node, "alpha", 1.0),
        after_bias=(ir.AttrFloat32("beta", 1.0),),
        bias_source=input_at(node, 2),
    )
