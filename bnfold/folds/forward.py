"""Forward fold: a chain with a BatchNormalization into every linear layer that reads it.

Before:  y_i = Layer_i(Path_i(Chain(x)))       for every reader i of the chain's output
After:   y_i = Layer_i'(Path_i(x))              Layer_i'(z) = Layer_i(s * z + t)
Conditions (checked here; each layer's own in its op module, the paths' in trace.py):
- every reader, past shape-only ops and pooling, is a layer that takes it (Conv, Gemm, MatMul;
  ConvTranspose for a shift-free chain) at its data input, with the chain's channels on the
  axis it contracts; a reader that is not is a refusal naming it;
- the chain's output (and every value on a path) is not a graph output;
- a non-zero shift reaches no padding: not through an AveragePool that counts pads, not into
  a padded Conv (its border outputs would see zeros where the BN gives t);
- a MaxPool on the path needs every scale >= 0 (a negative scale turns max into min);
- each reader gets its own new weight, so shared weights are cloned, never changed in place.
- with ``--forward int8-safe``: the fold does not make the reader's per-output-channel int8
  weights measurably worse (:func:`bnfold.int8.int8_forward_refusal`: a BN scale spread, e.g.
  dead ReLU channels with s ~ 316 against a median of 2-6, rounds most of each row to zero).
Formula: W_i' = W_i diag(s[f])  along the layer's input axis,  b_i' = b_i + m_i * W_i t[f]
(f: feature -> channel through the path; m_i: Gemm's alpha). Exact for Gemm/MatMul always.
The report gives the scale spread and, per reader, the int8 figures before and after.
"""

from __future__ import annotations

import numpy as np

from bnfold import int8
from bnfold.arithmetic import Affine, input_shift, scale_weight
from bnfold.folds import layers
from bnfold.folds.affine import AffineChain
from bnfold.folds.backward import suffix
from bnfold.folds.common import node_label
from bnfold.folds.context import FoldContext
from bnfold.folds.edits import consumer_edits
from bnfold.folds.linear import Consumer
from bnfold.folds.plan import Edit, Plan, Refusal
from bnfold.folds.trace import ChannelMap, Use, trace_forward


def readers(
    chain: AffineChain, channels: int, ctx: FoldContext
) -> list[tuple[Use, Consumer]] | Refusal:
    """Every layer that reads the chain's output, or the first reason one cannot take it."""
    uses = trace_forward(chain.output, ChannelMap(chain.axis), ctx)
    if isinstance(uses, Refusal):
        return uses
    found = []
    for use in uses:
        if use.cmap.axis is None and channels != 1:
            return Refusal(
                f"the BN has {channels} channels, but a single one reaches '{node_label(use.node)}'"
            )
        consumer = layers.consumer(use, ctx)
        if isinstance(consumer, Refusal):
            return consumer
        if use.cmap.index is None and use.cmap.axis is not None and consumer.index.size != channels:
            return Refusal(
                f"the BN has {channels} channels, '{node_label(use.node)}' takes "
                f"{consumer.index.size}"
            )
        found.append((use, consumer))
    return found


# In "exact" mode the int8 figures are reported for consumer weights up to this size.
INT8_REPORT_BYTES = 16 << 20


def int8_effect(consumer: Consumer, scale: np.ndarray, channels: int) -> int8.ForwardFoldEffect:
    """What scaling ``consumer``'s input channels by ``scale`` does to its per-channel int8
    weights (the folded weight is computed as the fold will)."""
    folded = scale_weight(consumer.array, scale, consumer.layout, consumer.groups)
    return int8.compare_folded(
        consumer.array, folded, consumer.out_axis, spread=int8.scale_spread(scale),
        channels=channels,
    )  # fmt: skip


class Forward:
    name = "forward"
    direction = "forward"

    def enabled(self, ctx: FoldContext) -> bool:
        return ctx.options.forward != "off"

    def match(self, chain: AffineChain, ctx: FoldContext) -> Plan | Refusal | None:
        if not chain.has_batchnorm:
            return None
        refusal = chain.input_refusal(ctx)
        if refusal:
            return refusal
        channels = chain.channels
        assert channels is not None  # a chain with a BN has its channel count
        affine = chain.affine(channels)
        if isinstance(affine, Refusal):
            return affine
        found = readers(chain, channels, ctx)
        if isinstance(found, Refusal):
            return found
        edits: list[Edit] = [*chain.removal(chain.input, rename=False)]
        stale = chain.parameters()
        int8_safe = ctx.options.forward == "int8-safe"
        effects = []
        for use, consumer in found:
            feats = Affine(affine.scale[consumer.index], affine.shift[consumer.index])
            if use.needs_nonnegative_scale and np.any(feats.scale < 0):
                negative = int(np.count_nonzero(affine.scale < 0))
                return Refusal(
                    f"{negative} channel(s) have a negative scale, which the "
                    f"{use.needs_nonnegative_scale} before '{node_label(use.node)}' does not "
                    "commute with"
                )
            shift_sum = None
            if feats.has_shift:
                why = use.shift_refusal or consumer.shift_refusal
                if why:
                    return Refusal(why)
                shift_sum = input_shift(
                    consumer.array, feats.shift, consumer.layout, consumer.groups
                )
            float_weight = consumer.array.dtype.kind == "f"
            if float_weight and (int8_safe or consumer.array.nbytes <= INT8_REPORT_BYTES):
                effect = int8_effect(consumer, feats.scale, channels)
                why = int8.int8_forward_refusal(effect) if int8_safe else None
                if why:
                    return Refusal(f"{why} ('{node_label(consumer.node)}'; --forward int8-safe)")
                effects.append({"consumer": node_label(consumer.node), **effect.to_dict()})
            more = consumer_edits(consumer, feats.scale, shift_sum)
            if isinstance(more, Refusal):
                return more
            edits.extend(more)
            stale.append(consumer.weight)
            if consumer.bias_source is not None:
                stale.append(consumer.bias_source)
        kinds = "+".join(dict.fromkeys(c.kind for _, c in found))
        return Plan(
            fold=kinds,
            direction=self.direction,
            folded=[(op.node, f"{suffix(op.node.op_type)}+{kinds}") for op in chain.ops],
            into=[c.node for _, c in found],
            edits=edits,
            stale=stale,
            label=chain.label,
            details={
                "consumers": len(found),
                "scale_spread": int8.scale_spread(affine.scale),
                "int8": effects,
            },
        )


FOLD = Forward()
