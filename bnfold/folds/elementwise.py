"""Read a Mul/Add/Sub/Div by a per-channel constant as an affine map.

Before:  z = Linear(x);  y = z * c   (or z + c, z - c, c - z, z / c)
After:   y = Linear'(x)
Conditions:
- ``c`` is a constant whose broadcast shape leaves the output shape unchanged (its rank is at
  most the output's) and that varies only along the producer's channel axis;
- ``z`` is the other operand and comes from the linear producer.
Formula: ``y = s * z + t`` with (s, t) = (c, 0), (1, c), (1, -c), (-1, c), (1/c, 0).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from bnfold.arithmetic import Affine
from bnfold.folds.common import FoldContext, Refusal

ELEMENTWISE_OPS = frozenset({"Mul", "Add", "Sub", "Div"})


def data_operand(node: ir.Node, ctx: FoldContext) -> tuple[int, ir.Value] | None:
    """(index, value) of the non-constant operand, when the other one is constant."""
    if len(node.inputs) != 2 or any(v is None for v in node.inputs):
        return None
    a, b = node.inputs
    if ctx.constants.resolve(b) is not None and ctx.constants.resolve(a) is None:
        return 0, a
    commutes = node.op_type in ("Mul", "Add", "Sub")  # Sub: c - z is (-1) * z + c
    if commutes and ctx.constants.resolve(a) is not None and ctx.constants.resolve(b) is None:
        return 1, b
    return None


def channel_vector(
    c: np.ndarray, channels: int, feature_axis: int, out_rank: int | None
) -> np.ndarray | Refusal:
    """``c`` as a float64 (C,) vector if it is per-channel on ``feature_axis``."""
    if c.ndim == 0 or c.size == 1 and c.ndim <= 1:
        return np.full(channels, float(c.reshape(-1)[0]), dtype=np.float64)
    if out_rank is None:
        if feature_axis == -1 and c.ndim == 1:
            out_rank = 1  # a 1-D constant broadcasts along the last axis, whatever the rank
        else:
            return Refusal("the output rank is unknown, so the constant's axis cannot be checked")
    if c.ndim > out_rank:
        return Refusal(f"a constant of rank {c.ndim} would broadcast the output to a higher rank")
    axis = feature_axis % out_rank
    full = (1,) * (out_rank - c.ndim) + tuple(c.shape)
    for i, dim in enumerate(full):
        if i != axis and dim != 1:
            return Refusal(f"the constant of shape {tuple(c.shape)} varies off the channel axis")
    if full[axis] not in (1, channels):
        return Refusal(f"the constant has {full[axis]} values for {channels} channels")
    vec = np.asarray(c, dtype=np.float64).reshape(-1)
    return np.broadcast_to(vec, (channels,)).copy()


def elementwise_affine_of(
    node: ir.Node, ctx: FoldContext, channels: int, feature_axis: int, out_rank: int | None
) -> Affine | Refusal:
    """The node's (s, t) over the producer's channels."""
    operand = data_operand(node, ctx)
    if operand is None:
        return Refusal(f"{node.op_type} has no constant operand")
    index, _ = operand
    const = ctx.const(node.inputs[1 - index], f"{node.op_type} constant")
    if isinstance(const, Refusal):
        return const
    vec = channel_vector(np.asarray(const), channels, feature_axis, out_rank)
    if isinstance(vec, Refusal):
        return vec
    ones, zeros = np.ones(channels), np.zeros(channels)
    op = node.op_type
    if op == "Mul":
        return Affine(vec, zeros)
    if op == "Add":
        return Affine(ones, vec)
    if op == "Sub":
        return Affine(ones, -vec) if index == 0 else Affine(-ones, vec)
    if np.any(vec == 0):
        return Refusal("division by a constant with zeros")
    return Affine(1.0 / vec, zeros)
