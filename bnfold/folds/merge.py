"""Merge: a chain of several affine nodes with a BatchNormalization becomes that one BN.

Before:  y = Mul(BN2(BN1(x)), c)          (any run of BN and per-channel Mul/Add/Sub/Div)
After:   y = BN1'(x)                       gamma = s, beta = t, mean = 0, var = 1, epsilon = 0
Conditions: only when no fold removes the chain (the registry tries this last); the chain
holds at least two affine nodes, one a BN.
Formula: (s, t) is the chain's composed map in float64; with var + epsilon = 1 exactly, BN1'
computes 1 * (x - 0) * s + t: no rounding beyond storing s and t in the parameters' dtypes.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from bnfold.folds.affine import AffineChain
from bnfold.folds.backward import suffix
from bnfold.folds.context import FoldContext
from bnfold.folds.plan import Edit, NewTensor, Plan, Refusal, Remove, SetAttribute, SetInput


class Merge:
    name = "merge"
    direction = "merge"

    def enabled(self, ctx: FoldContext) -> bool:
        return True

    def match(self, chain: AffineChain, ctx: FoldContext) -> Plan | Refusal | None:
        if len(chain.ops) < 2 or not chain.has_batchnorm:
            return None
        refusal = chain.input_refusal(ctx)
        if refusal:
            return refusal
        bn = chain.batchnorms[0]
        channels = chain.channels
        assert channels is not None
        affine = chain.affine(channels)
        if isinstance(affine, Refusal):
            return affine
        at = chain.members.index(bn)
        after, before = chain.members[at + 1 :], chain.members[:at]
        edits: list[Edit] = [Remove(node, bn.outputs[0], rename=True) for node in reversed(after)]
        if before:
            edits.append(SetInput(bn, 0, chain.input))
            edits.extend(Remove(node, chain.input) for node in reversed(before))
        values = (affine.scale, affine.shift, np.zeros(channels), np.ones(channels))
        for index, new in enumerate(values, start=1):
            param = bn.inputs[index]
            dtype = _dtype(param, ctx)
            edits.append(SetInput(bn, index, NewTensor(new, dtype, hint=f"merged_{_NAMES[index]}")))
        edits.append(SetAttribute(bn, ir.AttrFloat32("epsilon", 0.0)))
        return Plan(
            fold="bn",
            direction=self.direction,
            folded=[
                (op.node, f"bn+{suffix(op.node.op_type)}") for op in chain.ops if op.node is not bn
            ],
            into=[bn],
            edits=edits,
            stale=chain.parameters(),
            label=chain.label,
        )


_NAMES = {1: "scale", 2: "B", 3: "mean", 4: "var"}


def _dtype(value: ir.Value | None, ctx: FoldContext) -> np.dtype:
    array = ctx.constants.array(value)
    return np.dtype(np.float32) if array is None else array.dtype


FOLD = Merge()
