"""Fold a per-channel affine node into a preceding MatMul (or MatMul -> Add bias).

Before:  y = BN(MatMul(A, W))             or   y = BN(Add(MatMul(A, W), c))
After:   y = Gemm(A, W', b')              or   y = Add(MatMul(A, W'), c')
Conditions:
- W is a constant 2-D (K, M) second operand; c (if present) a per-feature constant;
- the BN channel axis (1) is the MatMul's feature axis: the output is (N, M), rank 2.
  (On (B, T, M) activations BN normalises T, not M: refused, as onnxruntime's rule does);
- for a Mul/Add/Sub/Div by a per-feature constant, any rank (the feature axis is the last);
- each intermediate output feeds only the next node and is not a graph output.
Formula: W'[:, o] = s[o] * W[:, o];  b' = s * c + t (c = 0 without the Add). A bare MatMul
gets its bias by becoming a Gemm (rank 2 only), so the node count never grows.
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
    rank_of,
    single_consumer_refusal,
)
from bnfold.folds.elementwise import channel_vector, data_operand


def _matmul_parts(node: ir.Node, ctx: FoldContext) -> tuple[np.ndarray, int | None] | Refusal:
    if len(node.inputs) != 2:
        return Refusal("MatMul needs two inputs")
    weight = ctx.const(node.inputs[1], "MatMul weight")
    if isinstance(weight, Refusal):
        if ctx.constants.resolve(node.inputs[0]) is not None:
            return Refusal(
                "the MatMul's constant is its first operand (no output features to scale)"
            )
        return weight
    refusal = check_weight_rank(weight, "2-D (K, M)", weight.ndim == 2)
    if refusal:
        return refusal
    rank = rank_of(node.outputs[0])
    if rank is None:
        a_rank = rank_of(node.inputs[0])
        rank = None if a_rank is None else max(a_rank, 2)
    return weight, rank


def _install_bare(
    ctx: FoldContext, layer: LinearLayer, weight: ir.Value, bias: ir.Value | None
) -> ir.Value:
    node = layer.node
    if bias is None:
        node.replace_input_with(1, weight)
        return layer.output
    gemm = ir.Node(
        "",
        "Gemm",
        inputs=[node.inputs[0], weight, bias],
        num_outputs=1,
        name=ctx.unique_name(f"{node.name or 'MatMul'}_gemm"),
    )
    graph = node.graph
    graph.insert_before(node, gemm)
    layer.output.replace_all_uses_with(gemm.outputs[0])
    gemm.outputs[0].dtype = layer.output.dtype
    gemm.outputs[0].shape = layer.output.shape
    graph.remove(node, safe=True)
    layer.node = gemm
    return gemm.outputs[0]


def match_matmul(node: ir.Node, ctx: FoldContext) -> LinearLayer | Refusal:
    parts = _matmul_parts(node, ctx)
    if isinstance(parts, Refusal):
        return parts
    weight, rank = parts
    return LinearLayer(
        fold="matmul",
        node=node,
        output=node.outputs[0],
        weight_value=node.inputs[1],
        weight=weight,
        layout=WeightLayout.AXIS1,
        groups=1,
        bias=None,
        channels=weight.shape[1],
        feature_axis=-1,
        out_rank=rank,
        install=_install_bare,
        replaced=[node.inputs[1]],
        can_take_bias=rank == 2,
    )


def match_matmul_add(add: ir.Node, ctx: FoldContext) -> LinearLayer | Refusal:
    """MatMul -> Add(constant bias): the Add carries the bias."""
    operand = data_operand(add, ctx)
    if operand is None:
        return Refusal("Add has no constant operand")
    index, data = operand
    matmul = data.producer()
    if matmul is None or matmul.op_type != "MatMul" or matmul.domain not in ("", "ai.onnx"):
        return Refusal("Add is not fed by a MatMul")
    refusal = single_consumer_refusal(data, "MatMul")
    if refusal:
        return refusal
    parts = _matmul_parts(matmul, ctx)
    if isinstance(parts, Refusal):
        return parts
    weight, rank = parts
    if rank is None:
        rank = rank_of(add.outputs[0])
    c_value = add.inputs[1 - index]
    c = ctx.const(c_value, "Add bias")
    if isinstance(c, Refusal):
        return c
    vec = channel_vector(np.asarray(c), weight.shape[1], -1, rank)
    if isinstance(vec, Refusal):
        return vec

    def install(
        ctx: FoldContext, layer: LinearLayer, w: ir.Value, bias: ir.Value | None
    ) -> ir.Value:
        matmul.replace_input_with(1, w)
        if bias is not None:
            add.replace_input_with(1 - index, bias)
        return add.outputs[0]

    return LinearLayer(
        fold="matmul_add",
        node=matmul,
        output=add.outputs[0],
        weight_value=matmul.inputs[1],
        weight=weight,
        layout=WeightLayout.AXIS1,
        groups=1,
        bias=vec,
        channels=weight.shape[1],
        feature_axis=-1,
        out_rank=rank,
        install=install,
        replaced=[matmul.inputs[1], c_value],
    )


# MatMul -> Reshape/Transpose ... -> BN (onnxruntime's FuseMatmulBN accepts this chain).
#
# Before:  y = BN(Transpose(Reshape(MatMul(A, W))))      e.g. (N, M) -> (N,1,1,M) -> (N,M,1,1)
# After:   y = Transpose(Reshape(Gemm(A, W', b')))
# Conditions: the MatMul output is rank 2 and static; every Reshape/Transpose in the chain has a
# static input shape, feeds only the next node and is not a graph output; following the BN's
# channel axis (1) back through the chain lands on the MatMul's feature axis (1). A Reshape
# keeps an axis when the product of the dimensions before it and its size are the same on
# both sides (row-major order then maps that index unchanged).
_RESHAPES = ("Reshape", "Transpose")


def _reshape_target(node: ir.Node, ctx: FoldContext, in_shape: list[int]) -> list[int] | None:
    shape = ctx.constants.array(node.inputs[1]) if len(node.inputs) > 1 else None
    if shape is None:
        return None
    allow_zero = node.attributes.get("allowzero")
    dims = [int(d) for d in np.asarray(shape).reshape(-1)]
    if not (allow_zero is not None and allow_zero.as_int()):
        dims = [in_shape[i] if d == 0 and i < len(in_shape) else d for i, d in enumerate(dims)]
    if dims.count(-1) > 1:
        return None
    if -1 in dims:
        known = int(np.prod([d for d in dims if d != -1]))
        if known == 0:
            return None
        dims[dims.index(-1)] = int(np.prod(in_shape)) // known
    return dims if int(np.prod(dims)) == int(np.prod(in_shape)) else None


def _axis_before(node: ir.Node, ctx: FoldContext, axis: int) -> int | Refusal:
    """The input axis of a Reshape/Transpose that becomes output ``axis`` unchanged."""
    data = node.inputs[0] if node.inputs else None
    shape = None if data is None or data.shape is None else data.shape
    if shape is None or not shape.is_static():
        return Refusal(f"the {node.op_type} input shape is not static")
    in_shape = [int(d) for d in shape]
    if node.op_type == "Transpose":
        perm_attr = node.attributes.get("perm")
        perm = (
            list(perm_attr.as_ints()) if perm_attr is not None else list(range(len(in_shape)))[::-1]
        )
        return perm[axis] if axis < len(perm) else Refusal("Transpose perm is too short")
    out_shape = _reshape_target(node, ctx, in_shape)
    if out_shape is None or axis >= len(out_shape):
        return Refusal("the Reshape target shape is not a known constant")
    before, size = int(np.prod(out_shape[:axis])), out_shape[axis]
    for i, d in enumerate(in_shape):
        if d == size and int(np.prod(in_shape[:i])) == before:
            return i
    return Refusal(f"the Reshape to {tuple(out_shape)} does not keep the BN channel axis whole")


def match_matmul_through_reshape(first: ir.Node, ctx: FoldContext) -> LinearLayer | Refusal:
    """BN fed by Reshape/Transpose nodes fed by a MatMul: fold if the channel axis is exact."""
    chain_output = first.outputs[0]
    node, axis = first, 1
    while node.op_type in _RESHAPES and node.domain in ("", "ai.onnx"):
        before = _axis_before(node, ctx, axis)
        if isinstance(before, Refusal):
            return Refusal(f"through {node.op_type}: {before.reason}")
        axis = before
        data = node.inputs[0]
        producer = data.producer()
        if producer is None:
            return Refusal(f"its input comes from {first.op_type}, not a linear layer")
        refusal = single_consumer_refusal(data, producer.op_type)
        if refusal:
            return refusal
        node = producer
    if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx"):
        return Refusal(f"its input comes from {first.op_type} fed by {node.op_type}, not a MatMul")
    layer = match_matmul(node, ctx)
    if isinstance(layer, Refusal):
        return layer
    if layer.out_rank != 2 or axis != 1:
        return Refusal(
            f"the BN channel axis maps to axis {axis} of the MatMul output (rank "
            f"{layer.out_rank}), not to its features"
        )
    chain_rank = rank_of(chain_output)
    matmul_output = layer.output

    def install(
        ctx: FoldContext, layer: LinearLayer, w: ir.Value, bias: ir.Value | None
    ) -> ir.Value:
        layer.output = matmul_output  # the MatMul (or its new Gemm) output feeds the chain
        _install_bare(ctx, layer, w, bias)
        layer.output = chain_output
        return chain_output

    layer.output = chain_output
    layer.feature_axis = 1
    layer.out_rank = chain_rank
    layer.install = install
    return layer
