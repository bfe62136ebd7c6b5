"""Read a Mul/Add/Sub/Div by a per-channel constant as an affine map along one axis.

Before:  y = z * c   (or z + c, z - c, c - z, z / c)
After:   folded like a BatchNormalization with (s, t) = (c, 0), (1, c), (1, -c), (-1, c), (1/c, 0)
Conditions (checked here):
- exactly one operand is constant; ``z / c`` only (``c / z`` is not affine);
- ``c`` is floating point, has at most ``z``'s rank and, along the axis it varies on, as many
  values as ``z`` has there (broadcasting must not grow the output), and varies along at most
  one axis (a scalar applies to every channel);
- ``z / c``: no zero in ``c`` (refused with that reason).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from bnfold.folds.common import is_float
from bnfold.folds.context import FoldContext
from bnfold.folds.plan import Refusal

ELEMENTWISE_OPS = ("Mul", "Add", "Sub", "Div")


@dataclass(frozen=True)
class Elementwise:
    """``y = scale * data + shift`` along ``axis`` (None: one value for every element)."""

    data_index: int
    axis: int | None  # >= 0 when the data's rank is known, -1 for "last" otherwise
    scale: np.ndarray
    shift: np.ndarray


def data_operand(node: ir.Node, ctx: FoldContext) -> tuple[int, ir.Value] | None:
    """(index, value) of the non-constant operand, when the other one is constant."""
    if len(node.inputs) != 2 or any(v is None for v in node.inputs):
        return None
    a, b = node.inputs
    assert a is not None and b is not None
    if ctx.is_constant(b) and not ctx.is_constant(a):
        return 0, a
    commutes = node.op_type in ("Mul", "Add", "Sub")  # Sub: c - z is (-1) * z + c
    if commutes and ctx.is_constant(a) and not ctx.is_constant(b):
        return 1, b
    return None


def constant_axis(c: np.ndarray, rank: int | None) -> int | None | Refusal:
    """The axis of the data along which ``c`` varies (None: a single value)."""
    if c.size == 1:
        if rank is not None and c.ndim > rank:
            return Refusal(
                f"a constant of rank {c.ndim} would broadcast the output to a higher rank"
            )
        if rank is None and c.ndim > 0:  # (1,) would raise a rank-0 input to rank 1
            return Refusal("the output rank is unknown, so the constant's axis cannot be checked")
        return None
    varying = [i for i, d in enumerate(c.shape) if d != 1]
    if len(varying) != 1:
        return Refusal(f"the constant of shape {tuple(c.shape)} varies along several axes")
    from_end = varying[0] - c.ndim
    if rank is None:
        if c.ndim == 1:
            return -1  # a 1-D constant broadcasts along the last axis, whatever the rank
        return Refusal("the output rank is unknown, so the constant's axis cannot be checked")
    if c.ndim > rank:
        return Refusal(f"a constant of rank {c.ndim} would broadcast the output to a higher rank")
    return rank + from_end


def read_elementwise(node: ir.Node, ctx: FoldContext) -> Elementwise | Refusal | None:
    """The node as an affine map, a refusal (division by zero, broadcasting), or None when it
    is not an op on one run-time value and one constant."""
    operand = data_operand(node, ctx)
    if operand is None:
        return None
    index, data = operand
    other = node.inputs[1 - index]
    const = ctx.const(other, f"{node.op_type} constant")
    if isinstance(const, Refusal):
        return None  # an overridable constant: a run-time value
    c = np.asarray(const)
    if not is_float(c.dtype):
        return None
    axis = constant_axis(c, ctx.rank(data))
    if isinstance(axis, Refusal):
        return axis
    if axis is not None and axis >= 0:
        shape = ctx.shape(data)
        dim = shape[axis] if shape is not None and axis < len(shape) else None
        if isinstance(dim, int) and dim != c.size:
            return None  # the constant broadcasts the data along that axis: not per-channel
    vec = c.astype(np.float64).reshape(-1)
    ones, zeros = np.ones(vec.size), np.zeros(vec.size)
    op = node.op_type
    if op == "Mul":
        return Elementwise(index, axis, vec, zeros)
    if op == "Add":
        return Elementwise(index, axis, ones, vec)
    if op == "Sub":
        if index == 0:
            return Elementwise(index, axis, ones, -vec)
        return Elementwise(index, axis, -ones, vec)
    # z / c (data_operand never gives c / z: it is not affine in z)
    if np.any(vec == 0):
        return Refusal("division by a constant with zeros")
    return Elementwise(index, axis, 1.0 / vec, zeros)
