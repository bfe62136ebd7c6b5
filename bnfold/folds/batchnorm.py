"""Read a BatchNormalization node as a per-channel affine map, or say why not.

Inference BatchNormalization is ``y = s * x + t`` on axis 1 with
``s = scale / sqrt(var + epsilon)`` and ``t = B - s * mean``.

Conditions (every opset, 6 to current), all checked here:
- inference only: ``training_mode`` (opset 14+) is 0; opset 6's ``is_test`` is 1 or the node
  has a single output (opset 6 with is_test=0 and one output is inference in practice: onnx
  removed the attribute in opset 7 because only the output count matters);
- no optional output (running/saved mean and var) is used or is a graph output;
- ``spatial`` (opset 6 to 8) is 1: spatial=0 means per-activation parameters, refused;
- all four parameters are constants of C values each, finite, and
  ``var + epsilon > 0``. Non-finite or non-positive ``var + epsilon`` is bad input, not a refusal.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from bnfold.arithmetic import batchnorm_affine
from bnfold.errors import BadInputError
from bnfold.folds.common import float_attr, int_attr, node_label
from bnfold.folds.context import FoldContext
from bnfold.folds.plan import Refusal

PARAM_NAMES = ("scale", "B", "mean", "var")


def bn_opset(node: ir.Node, ctx: FoldContext) -> int:
    if node.version is not None:
        return node.version
    graph = node.graph
    imports = graph.opset_imports if graph is not None else ctx.model.opset_imports
    return imports.get("", imports.get("ai.onnx", ctx.model.opset_imports.get("", 0)))


def batchnorm_refusal(node: ir.Node, ctx: FoldContext) -> Refusal | None:
    """Structural reasons not to fold this BN (mode, outputs, attributes)."""
    opset = bn_opset(node, ctx)
    if opset < 6:
        return Refusal(f"BatchNormalization-{opset} (consumed_inputs era) is not supported")
    if int_attr(node, "training_mode", 0) != 0:
        return Refusal("training_mode=1: the node normalises with batch statistics")
    if opset < 7 and int_attr(node, "is_test", 0) == 0 and len(node.outputs) > 1:
        return Refusal("is_test=0 with statistics outputs: a training-mode node")
    if opset < 9 and int_attr(node, "spatial", 1) != 1:
        return Refusal("spatial=0: per-activation statistics cannot fold into a channel")
    for out in node.outputs[1:]:
        if out is not None and (out.uses() or out.is_graph_output()):
            return Refusal(f"optional output '{out.name}' is used")
    if len(node.inputs) < 5 or node.inputs[0] is None:
        return Refusal(f"has {len(node.inputs)} inputs, expected 5")
    return None


def read_batchnorm(node: ir.Node, ctx: FoldContext) -> tuple[np.ndarray, np.ndarray] | Refusal:
    """The BN's ``(s, t)`` in float64, each of C values (every parameter has C)."""
    refusal = batchnorm_refusal(node, ctx)
    if refusal:
        return refusal
    arrays: list[np.ndarray] = []
    for name, value in zip(PARAM_NAMES, node.inputs[1:5], strict=True):
        array = ctx.const(value, f"BN {name}")
        if isinstance(array, Refusal):
            return array
        arrays.append(np.asarray(array).reshape(-1))
    channels = arrays[0].size
    for name, a in zip(PARAM_NAMES, arrays, strict=True):
        if a.size != channels:  # onnxruntime refuses such a model too (no broadcasting)
            return Refusal(f"BN {name} has {a.size} values, BN scale {channels}")
    gamma, beta, mean, var = (a.astype(np.float64) for a in arrays)
    eps = float_attr(node, "epsilon", 1e-5)
    label = node_label(node)
    for name, vec in zip(PARAM_NAMES, (gamma, beta, mean, var), strict=True):
        if not np.all(np.isfinite(vec)):
            raise BadInputError(None, f"BatchNormalization '{label}': {name} has NaN or Inf values")
    if np.any(var + eps <= 0):
        bad = int(np.count_nonzero(var + eps <= 0))
        raise BadInputError(
            None, f"BatchNormalization '{label}': var + epsilon <= 0 in {bad} channel(s)"
        )
    affine = batchnorm_affine(gamma, beta, mean, var, eps)
    return affine.scale, affine.shift
