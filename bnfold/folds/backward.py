"""Backward fold: an affine chain into the linear layer that produces its input.

Before:  y = Chain(Path(Layer(x)))     Chain: BN, per-channel Mul/Add/Sub/Div (composed: s, t)
                                        Path: shape-only ops (Identity, Reshape, Transpose, ...)
After:   y = Path(Layer'(x))           Layer'(x) = s * Layer(x) + t, per output channel
Conditions (checked here; the layer's own in its op module, the path's in trace.py):
- the chain's channels reach the layer's output feature axis through the path, each feature
  belonging to one channel (e.g. an NCHW Reshape keeps axis 1);
- the layer's output feeds only the path (or the chain) and is not a graph output, and the
  layer is in the chain's graph (not an outer scope a subgraph reads);
- a non-zero shift (or an existing bias) needs somewhere to go: the layer's bias, a MatMul's
  bias Add, or a rank-2 MatMul that becomes a Gemm.
Formula: W'[o] = m * s[f(o)] * W[o],  b'[o] = s[f(o)] * b[o] + t[f(o)]  (f: feature -> channel,
m: the layer's multiplier, Gemm's alpha). The chain's output name, type and shape move onto
the value that now carries the result.
"""

from __future__ import annotations

import onnx_ir as ir

from bnfold.arithmetic import Affine, fold_bias
from bnfold.folds import layers
from bnfold.folds.affine import AffineChain
from bnfold.folds.common import node_label, sole_use_refusal
from bnfold.folds.context import FoldContext
from bnfold.folds.edits import producer_edits
from bnfold.folds.linear import Producer
from bnfold.folds.plan import Plan, Refusal
from bnfold.folds.trace import ChannelMap, Source, trace_back


def find_producer(
    value: ir.Value, cmap: ChannelMap, ctx: FoldContext
) -> tuple[Source, Producer] | Refusal:
    """The linear layer behind ``value`` (through shape-only ops), or why there is none."""
    source = trace_back(value, cmap, ctx)
    if isinstance(source, Refusal):
        return source
    producer = layers.producer(source.node, ctx)
    if isinstance(producer, Refusal):
        return producer
    kind = producer.node.op_type if producer.output is producer.node.outputs[0] else "MatMul+Add"
    refusal = sole_use_refusal(source.value, kind)
    if refusal:
        return refusal
    user = next(iter(source.value.uses())).node
    if producer.node.graph is not user.graph:
        # a subgraph reading an outer-scope layer: folding would make the subgraph return (or
        # read) that outer value renamed, which onnxruntime and onnx.checker refuse
        return Refusal(f"the {kind} '{node_label(producer.node)}' is outside the BN's graph")
    return source, producer


def per_feature(
    chain: AffineChain, source: Source, producer: Producer, what: str
) -> Affine | Refusal:
    """The chain's map for each output feature of ``producer`` (where ``source`` starts)."""
    cmap = source.cmap.normalized(producer.rank)
    if isinstance(cmap, Refusal):
        return cmap
    name = producer.node.op_type
    if cmap.axis is None and chain.channels not in (None, 1):
        return Refusal(
            f"the {what} has {chain.channels} channels, but a single one reaches the {name}"
        )
    if cmap.axis is not None and cmap.axis != producer.feature_axis:
        rank = "unknown" if producer.rank is None else str(producer.rank)
        if not source.path and cmap.axis == 1:
            return Refusal(
                f"BN normalises axis 1 but the {name} features are on the last axis "
                f"(output rank {rank})"
            )
        return Refusal(
            f"the {what} channel axis maps to axis {cmap.axis} of the {name} output (rank "
            f"{rank}), not to its features"
        )
    channels = chain.channels or producer.channels
    index = cmap.features(producer.channels, channels)
    if isinstance(index, Refusal):
        return Refusal(f"the {what} has {channels} channels, the {name} {producer.channels}")
    affine = chain.affine(channels)
    if isinstance(affine, Refusal):
        return affine
    return Affine(affine.scale[index], affine.shift[index])


class Backward:
    name = "backward"
    direction = "backward"

    def enabled(self, ctx: FoldContext) -> bool:
        return True

    def match(self, chain: AffineChain, ctx: FoldContext) -> Plan | Refusal | None:
        found = find_producer(chain.input, ChannelMap(chain.axis), ctx)
        if isinstance(found, Refusal):
            return found
        source, producer = found
        what = "BN" if chain.has_batchnorm else chain.head.op_type
        feats = per_feature(chain, source, producer, what)
        if isinstance(feats, Refusal):
            return feats
        need_bias = producer.bias is not None or feats.has_shift
        bias = fold_bias(producer.bias, feats) if need_bias else None
        edits = producer_edits(producer, feats.scale, bias)
        if isinstance(edits, Refusal):
            return edits
        kind = producer.kind
        stale = [*chain.parameters(), producer.weight]
        if producer.bias_source is not None:
            stale.append(producer.bias_source)
        return Plan(
            fold=kind,
            direction=self.direction,
            folded=[(op.node, f"{kind}+{suffix(op.node.op_type)}") for op in chain.ops],
            into=[producer.node],
            edits=[*chain.removal(chain.input, rename=True), *edits],
            stale=stale,
            label=chain.label,
        )


def suffix(op_type: str) -> str:
    """How a folded node's op appears in a fold label: "bn", "mul", "add"."""
    return "bn" if op_type == "BatchNormalization" else op_type.lower()


FOLD = Backward()
