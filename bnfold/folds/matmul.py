"""MatMul with a constant 2-D weight (optionally followed by its bias Add) as producer and consumer.

Backward (BN after the MatMul, on its output features):
  Before:  y = BN(MatMul(A, W))             or   y = BN(Add(MatMul(A, W), c))
  After:   y = Gemm(A, W', b')              or   y = Add(MatMul(A, W'), c')
  Formula: W'[:, o] = s[o] W[:, o];  b' = s * c + t (c = 0 without the Add).
  Conditions: W is a constant 2-D (K, M) second operand (a constant first operand has no
  output features to scale); c a per-feature constant (last axis); the BN channel axis reaches
  the MatMul's feature axis (the last): on (B, T, M) activations BN normalises T, not M, and is
  refused (as onnxruntime's rule does). A bare MatMul gets its bias by becoming a Gemm, which
  only a rank-2 output allows, so the node count never grows.

Forward (BN before the MatMul, on A's last axis):
  Before:  y = MatMul(BN(A), W)             or   y = Add(MatMul(BN(A), W), c)
  After:   y = Gemm(A, W', t W)             or   y = Add(MatMul(A, W'), c + t W)
  Formula: W' = diag(s) W along W's axis 0. Exact (no padding). Conditions: A is input 0, the
  BN channels are A's last axis; a non-zero shift needs a bias: the bias Add, or a rank-2 A
  (the MatMul becomes a Gemm).

A MatMul's bias Add belongs to the MatMul here: it is the layer's bias, not an affine node.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from bnfold.arithmetic import WeightLayout
from bnfold.folds.common import ConstInput, const_input, float_weight, is_op, node_label
from bnfold.folds.context import FoldContext
from bnfold.folds.linear import BiasSlot, Consumer, Producer
from bnfold.folds.plan import Refusal
from bnfold.folds.trace import Use


def _weight(node: ir.Node, ctx: FoldContext) -> ConstInput | Refusal:
    if len(node.inputs) != 2:
        return Refusal("MatMul needs two inputs")
    weight = const_input(node, 1, "MatMul weight", ctx)
    if isinstance(weight, Refusal):
        if ctx.is_constant(node.inputs[0]):
            return Refusal(
                "the MatMul's constant is its first operand (no output features to scale)"
            )
        return weight
    if weight.array.ndim != 2:
        return Refusal(f"weight of shape {tuple(weight.array.shape)} is not 2-D (K, M)")
    return float_weight(weight.array, "MatMul") or weight


def bias_add(matmul: ir.Node, ctx: FoldContext) -> tuple[ir.Node, int, np.ndarray] | None:
    """The MatMul's bias Add: (Add node, index of its constant, the bias as (M,) float64)."""
    out = matmul.outputs[0]
    if out.is_graph_output() or len(out.uses()) != 1:
        return None
    add, index = next(iter(out.uses()))
    if not is_op(add, "Add") or len(add.inputs) != 2:
        return None
    other = add.inputs[1 - index]
    weight = ctx.constants.array(matmul.inputs[1]) if len(matmul.inputs) == 2 else None
    if other is None or weight is None or np.ndim(weight) != 2:
        return None
    c = ctx.const(other, "Add bias")
    if isinstance(c, Refusal):
        return None
    c = np.asarray(c)
    m = weight.shape[1]
    if c.size not in (1, m) or (c.size == m and c.ndim and c.shape[-1] != m) or c.dtype.kind != "f":
        return None
    rank = _rank(matmul, ctx)
    if c.ndim > (1 if rank is None else rank):  # the Add would raise the output's rank
        return None
    return add, 1 - index, np.broadcast_to(c.astype(np.float64).reshape(-1), (m,)).copy()


def owns(add: ir.Node, ctx: FoldContext) -> ir.Node | None:
    """The MatMul whose bias Add ``add`` is, if it is one."""
    for value in add.inputs:
        matmul = value.producer() if value is not None else None
        if is_op(matmul, "MatMul") and matmul is not None:
            found = bias_add(matmul, ctx)
            if found is not None and found[0] is add:
                return matmul
    return None


def _rank(node: ir.Node, ctx: FoldContext) -> int | None:
    rank = ctx.rank(node.outputs[0])
    if rank is None:
        a_rank = ctx.rank(node.inputs[0])  # B is 2-D: the output has A's rank (a vector A: 1)
        rank = None if a_rank is None else max(a_rank, 1)
    return rank


def producer(node: ir.Node, ctx: FoldContext) -> Producer | Refusal:
    weight = _weight(node, ctx)
    if isinstance(weight, Refusal):
        return weight
    rank = _rank(node, ctx)
    carrier = bias_add(node, ctx)
    if carrier is not None:
        add, index, c = carrier
        output, bias, source = add.outputs[0], c, add.inputs[index]
        slot: BiasSlot | None = BiasSlot(add, index)
    else:
        output, bias, source = node.outputs[0], None, None
        slot = BiasSlot(node, 2, becomes_gemm=True) if rank == 2 else None
    return Producer(
        kind="matmul",
        node=node,
        output=output,
        weight=weight.value,
        array=weight.array,
        layout=WeightLayout.AXIS1,
        groups=1,
        channels=int(weight.array.shape[1]),
        feature_axis=-1 if rank is None else rank - 1,
        rank=rank,
        bias=bias,
        slot=slot,
        bias_source=source,
    )


def consumer(use: Use, ctx: FoldContext) -> Consumer | Refusal:
    node = use.node
    if use.index != 0:
        return Refusal(f"its output is the MatMul '{node_label(node)}' weight, not its data")
    weight = _weight(node, ctx)
    if isinstance(weight, Refusal):
        return weight
    a_rank = ctx.rank(node.inputs[0])
    cmap = use.cmap.normalized(a_rank)
    if isinstance(cmap, Refusal):
        return cmap
    last = -1 if a_rank is None else a_rank - 1
    if cmap.axis is not None and cmap.axis != last:
        rank = "unknown" if a_rank is None else str(a_rank)
        return Refusal(
            f"the BN channels reach the MatMul '{node_label(node)}' on axis {cmap.axis}, but it "
            f"contracts the last axis (input rank {rank})"
        )
    index = cmap.features(int(weight.array.shape[0]), None)
    if isinstance(index, Refusal):
        return index
    carrier = bias_add(node, ctx)
    if carrier is not None:
        add, c_index, c = carrier
        slot: BiasSlot | None = BiasSlot(add, c_index)
        bias: np.ndarray | None = c
        source = add.inputs[c_index]
    else:
        slot = BiasSlot(node, 2, becomes_gemm=True) if a_rank == 2 else None
        bias, source = None, None
    return Consumer(
        kind="matmul",
        node=node,
        weight=weight.value,
        array=weight.array,
        layout=WeightLayout.AXIS0,
        groups=1,
        index=index,
        bias=bias,
        slot=slot,
        out_axis=1,
        bias_source=source,
    )
