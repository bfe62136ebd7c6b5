"""Through an activation: the BN's scale into the layer before it, its shift into the layers after.

Before:  y_i = Layer_i(BN(Act(Layer(x))))       Act: Relu, LeakyRelu or PRelu
After:   y_i = Layer_i'(Act(Layer'(x)))         Layer' = s * Layer;  Layer_i' = Layer_i(. + t)
Conditions (checked here; the layers' own in their op modules):
- every scale s = gamma / sqrt(var + eps) is >= 0: these activations are positively
  homogeneous, s * Act(z) = Act(s * z) for s >= 0 (LeakyRelu's and PRelu's slopes unchanged),
  but not for s < 0 (then the forward fold is tried instead);
- the activation's output feeds only the chain; the layer before it feeds only the activation;
- a non-zero shift goes forward as for the forward fold (no padding can see it), but only as a
  bias change: the consumers' weights are untouched. So this fold keeps the scale spread out of
  the consumers' input axis, which per-channel int8 quantisation cannot absorb.
Formula: W'[o] = m * s[o] * W[o],  b' = s * b;  b_i' = b_i + m_i * W_i t.
"""

from __future__ import annotations

import numpy as np

from bnfold.arithmetic import Affine, input_shift
from bnfold.folds.affine import AffineChain
from bnfold.folds.backward import find_producer, per_feature, suffix
from bnfold.folds.common import is_op, sole_use_refusal
from bnfold.folds.context import FoldContext
from bnfold.folds.edits import consumer_edits, producer_edits
from bnfold.folds.forward import readers
from bnfold.folds.plan import Edit, Plan, Refusal
from bnfold.folds.trace import ChannelMap

ACTIVATIONS = ("Relu", "LeakyRelu", "PRelu")


class ThroughActivation:
    name = "activation"
    direction = "through the activation"

    def enabled(self, ctx: FoldContext) -> bool:
        return ctx.options.forward != "off"

    def match(self, chain: AffineChain, ctx: FoldContext) -> Plan | Refusal | None:
        act = chain.input.producer()
        if not chain.has_batchnorm or act is None or not is_op(act, *ACTIVATIONS):
            return None
        refusal = sole_use_refusal(chain.input, act.op_type)
        if refusal:
            return refusal
        data = act.inputs[0]
        if data is None:
            return None
        found = find_producer(data, ChannelMap(chain.axis), ctx)
        if isinstance(found, Refusal):
            return found.within(f"before the {act.op_type}")
        source, producer = found
        feats = per_feature(chain, source, producer, "BN")
        if isinstance(feats, Refusal):
            return feats
        negative = int(np.count_nonzero(feats.scale < 0))
        if negative:
            return Refusal(
                f"{negative} channel(s) have a negative scale (gamma < 0): "
                f"s * {act.op_type}(z) = {act.op_type}(s * z) only for s >= 0"
            )
        bias = None if producer.bias is None else feats.scale * producer.bias
        edits: list[Edit] = [*chain.removal(chain.input, rename=True)]
        more = producer_edits(producer, feats.scale, bias)
        if isinstance(more, Refusal):
            return more
        edits.extend(more)
        stale = [*chain.parameters(), producer.weight]
        if producer.bias_source is not None:
            stale.append(producer.bias_source)
        into = [producer.node]
        label = f"{producer.kind}+{act.op_type.lower()}"
        channels = chain.channels
        assert channels is not None
        affine = chain.affine(channels)
        if isinstance(affine, Refusal):
            return affine
        if affine.has_shift:
            found_readers = readers(chain, channels, ctx)
            if isinstance(found_readers, Refusal):
                return found_readers.within("its shift")
            for use, consumer in found_readers:
                shift = Affine(affine.scale[consumer.index], affine.shift[consumer.index]).shift
                why = use.shift_refusal or consumer.shift_refusal
                if why:
                    return Refusal(why).within("its shift")
                total = input_shift(consumer.array, shift, consumer.layout, consumer.groups)
                bias_edits = consumer_edits(consumer, None, total)
                if isinstance(bias_edits, Refusal):
                    return bias_edits
                edits.extend(bias_edits)
                if consumer.bias_source is not None:
                    stale.append(consumer.bias_source)
                into.append(consumer.node)
            kinds = "+".join(dict.fromkeys(c.kind for _, c in found_readers))
            label_tail = f"+{kinds}"
        else:
            label_tail = ""
        return Plan(
            fold=label,
            direction=self.direction,
            folded=[
                (op.node, f"{label}+{suffix(op.node.op_type)}{label_tail}") for op in chain.ops
            ],
            into=into,
            edits=edits,
            stale=stale,
            label=chain.label,
        )


FOLD = ThroughActivation()
