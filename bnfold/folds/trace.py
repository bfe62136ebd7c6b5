"""Follow a chain's channels through shape-only ops, back to a producer or on to consumers.

A :class:`ChannelMap` says where the channels of an affine chain are in a tensor: along
``axis``, feature ``f`` belongs to channel ``index[f]`` (``index`` None: feature f is channel
f), and every other axis is independent of the channel. Shape-only ops move that axis:

- Identity: unchanged. Transpose: the axis follows ``perm``. Squeeze/Unsqueeze: the axis shifts
  (squeezing the channel axis itself is refused).
- Reshape/Flatten: the dims before the channel axis that both shapes share (e.g. a symbolic
  batch) stay; the rest must be static. Element by element, the channel of each output element
  must then depend on ONE output axis (refused otherwise): an NCHW Flatten maps channel c to
  features c*H*W ... (c+1)*H*W - 1; a Reshape that makes channels rows, or spreads them over
  two axes, is refused.
- Forward only, pooling over spatial axes (axis 1 holds the channels): MaxPool and
  GlobalMaxPool commute with a per-channel scale s >= 0 and any shift; AveragePool and
  GlobalAveragePool with any scale, and with a shift unless padding enters the average
  (count_include_pad=1 with pads).

Every value on a path feeds only the next node and is not a graph output (forward paths may
branch: each branch ends at its own consumer).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import onnx_ir as ir

from bnfold.folds.common import input_at, int_attr, ints_attr, is_op, str_attr
from bnfold.folds.context import FoldContext
from bnfold.folds.plan import Refusal

SHAPE_OPS = ("Identity", "Transpose", "Squeeze", "Unsqueeze", "Reshape", "Flatten")
POOL_OPS = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool")
# Elements of a per-sample block mapped element by element (Reshape/Flatten)
_MAX_MAPPED = 1 << 24

Dim = int | str | None


@dataclass(frozen=True, eq=False)
class ChannelMap:
    """Channels along ``axis`` (>= 0, or < 0 counted from the end while the rank is unknown);
    ``axis`` None: one value for every element (a chain of scalars)."""

    axis: int | None
    index: np.ndarray | None = None

    def normalized(self, rank: int | None) -> ChannelMap | Refusal:
        if self.axis is None or self.axis >= 0:
            return self
        if rank is None:
            return Refusal("the tensor's rank is unknown")
        return replace(self, axis=self.axis + rank)

    def features(self, count: int, channels: int | None) -> np.ndarray | Refusal:
        """The chain channel of each of ``count`` features along the axis."""
        if self.axis is None:
            return np.zeros(count, dtype=np.int64)
        if self.index is None:
            if channels is not None and channels != count:
                return Refusal(f"{channels} channels meet {count} features")
            return np.arange(count)
        if self.index.size != count:
            return Refusal(f"{self.index.size} mapped features meet {count}")
        return self.index


def channel_axis_features(use: Use, rank: int, count: int, op: str) -> np.ndarray | Refusal:
    """For a layer whose input channels are axis 1 (Conv, ConvTranspose): the chain channel of
    each of its ``count`` input channels, or why the chain's channels reach another axis."""
    cmap = use.cmap.normalized(rank)
    if isinstance(cmap, Refusal):
        return cmap
    if cmap.axis not in (None, 1):
        return Refusal(f"the BN channels reach the {op} on axis {cmap.axis}, not its channel axis")
    return cmap.features(count, None)


@dataclass(frozen=True, eq=False)
class Source:
    """The node a chain's data comes from, with the path of shape-only ops in between."""

    node: ir.Node
    value: ir.Value  # the node's output the path starts from
    cmap: ChannelMap  # the chain's channels in ``value``
    path: tuple[ir.Node, ...]


@dataclass(frozen=True, eq=False)
class Use:
    """A node reading (through shape-only ops and pooling) what a chain writes."""

    node: ir.Node
    index: int
    value: ir.Value
    cmap: ChannelMap
    path: tuple[ir.Node, ...] = ()
    needs_nonnegative_scale: str | None = None  # the op on the path that needs s >= 0
    shift_refusal: str | None = None  # why the path cannot carry a shift


def dims(shape: ir.Shape | None) -> list[Dim] | None:
    if shape is None:
        return None
    out: list[Dim] = []
    for d in shape:
        if isinstance(d, int):
            out.append(d)
        else:
            name = getattr(d, "value", None)
            out.append(name if isinstance(name, str) and name else None)
    return out


def static(ds: Sequence[Dim]) -> list[int] | None:
    """The dims as ints, or None if any is symbolic or unknown."""
    out = [d for d in ds if isinstance(d, int)]
    return out if len(out) == len(ds) else None


def _fmt(shape: Sequence[Dim]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def remap(
    src: Sequence[Dim], dst: Sequence[Dim], cmap: ChannelMap, op: str
) -> ChannelMap | Refusal:
    """The channel map after reshaping ``src`` to ``dst`` (same elements, row-major); ``op``
    describes the node for messages."""
    if cmap.axis is None:
        return cmap
    a = cmap.axis
    k = 0
    while k < min(a, len(dst)) and src[k] is not None and src[k] == dst[k]:
        k += 1
    tail_src, tail_dst = list(src[k:]), list(dst[k:])
    if static(src[k:a]) is None:
        return Refusal(f"{op} mixes the channel axis with a batch or symbolic axis")
    static_src, static_dst = static(tail_src), static(tail_dst)
    if static_src is None or static_dst is None:
        return Refusal(f"{op}: the shapes are not static")
    size = math.prod(static_src)
    if size == 0:
        return Refusal(f"{op}: the tensor is empty")
    if size != math.prod(static_dst) or size > _MAX_MAPPED:
        return Refusal(f"{op} does not keep the BN channel axis whole")
    channels = static_src[a - k]
    index = cmap.index if cmap.index is not None else np.arange(channels)
    if index.size != channels:
        return Refusal(f"{op}: {channels} features on the channel axis, not {index.size}")
    view = [1] * len(static_src)
    view[a - k] = channels
    grid = np.broadcast_to(index.reshape(view), static_src).reshape(static_dst)
    varying = [j for j in range(grid.ndim) if not np.all(grid == np.take(grid, [0], axis=j))]
    if not varying and not index.any():
        # a channel axis of one: every element is channel 0 (the folds check that the chain
        # has one channel, too)
        return ChannelMap(None)
    if len(varying) != 1:
        return Refusal(f"{op} does not keep the BN channel axis whole")
    j = varying[0]
    pick: list[int | slice] = [0] * grid.ndim
    pick[j] = slice(None)
    new = np.ascontiguousarray(grid[tuple(pick)])
    plain = new.size == index.max(initial=-1) + 1 and np.array_equal(new, np.arange(new.size))
    return ChannelMap(k + j, None if plain else new)


def _axes(node: ir.Node, ctx: FoldContext) -> list[int] | None:
    """Squeeze/Unsqueeze axes: an attribute before opset 13, the second input from 13."""
    attr = ints_attr(node, "axes")
    if attr is not None:
        return attr
    value = input_at(node, 1)
    if value is None:
        return None
    array = ctx.constants.array(value)
    return None if array is None else [int(a) for a in np.asarray(array).reshape(-1)]


def _reshape_dims(node: ir.Node, out: bool, ctx: FoldContext) -> list[Dim] | None:
    """The input (``out`` False) or output dims of a Reshape/Flatten."""
    data = input_at(node, 0)
    if not out:
        return dims(ctx.shape(data))
    known = dims(ctx.shape(node.outputs[0]))
    if known is not None and all(d is not None for d in known):
        return known
    src = dims(ctx.shape(data))
    if src is None:
        return known
    if node.op_type == "Flatten":
        axis = int_attr(node, "axis", 1)
        axis = axis + len(src) if axis < 0 else axis
        return [_product(src[:axis]), _product(src[axis:])]
    target = ctx.constants.array(input_at(node, 1))
    if target is None:
        return known
    shape = [int(d) for d in np.asarray(target).reshape(-1)]
    allow_zero = int_attr(node, "allowzero", 0)
    result: list[Dim] = [
        src[i] if d == 0 and not allow_zero and i < len(src) else d for i, d in enumerate(shape)
    ]
    if -1 in result:
        whole, rest = static(src), static([d for d in result if d != -1])
        if result.count(-1) > 1 or whole is None or rest is None or math.prod(rest) == 0:
            return known
        result[result.index(-1)] = math.prod(whole) // math.prod(rest)
    return result


def _product(ds: Sequence[Dim]) -> Dim:
    known = static(ds)
    if known is not None:
        return math.prod(known)
    if len(ds) == 1:
        return ds[0]
    return None


def through(
    node: ir.Node, cmap: ChannelMap, forward: bool, ctx: FoldContext
) -> ChannelMap | Refusal:
    """The channel map on the other side of shape-only ``node`` (input -> output if ``forward``)."""
    op = node.op_type
    if op == "Identity" or cmap.axis is None:
        return cmap
    data_in, data_out = input_at(node, 0), node.outputs[0]
    here = data_in if forward else data_out
    norm = cmap.normalized(ctx.rank(here))
    if isinstance(norm, Refusal):
        return norm
    assert norm.axis is not None
    a = norm.axis
    if op == "Transpose":
        perm = ints_attr(node, "perm")
        if perm is None:
            rank = ctx.rank(data_in)
            if rank is None:
                return Refusal("the Transpose input rank is unknown")
            perm = list(range(rank))[::-1]
        if a >= len(perm):
            return Refusal("Transpose perm is too short")
        return replace(norm, axis=perm.index(a) if forward else perm[a])
    if op in ("Squeeze", "Unsqueeze"):
        axes = _axes(node, ctx)
        in_rank = ctx.rank(data_in)
        if op == "Squeeze" and axes is None:
            shape = dims(ctx.shape(data_in))
            if shape is None or any(not isinstance(d, int) for d in shape):
                return Refusal("the Squeeze input shape is not static")
            axes = [i for i, d in enumerate(shape) if d == 1]
        if axes is None or in_rank is None:
            return Refusal(f"the {op} axes or input rank are unknown")
        out_rank = in_rank + len(axes) if op == "Unsqueeze" else in_rank - len(axes)
        full = out_rank if op == "Unsqueeze" else in_rank
        marked = sorted({x + full if x < 0 else x for x in axes})
        kept = [i for i in range(full) if i not in marked]
        # Unsqueeze: input axis i is output axis kept[i]; Squeeze: output axis i is input kept[i]
        if op == "Unsqueeze":
            if forward:
                return replace(norm, axis=kept[a])
            if a in marked:
                return Refusal("the BN channel axis is an axis the Unsqueeze inserts")
            return replace(norm, axis=kept.index(a))
        if forward:
            if a in marked:
                return Refusal("the Squeeze removes the channel axis")
            return replace(norm, axis=kept.index(a))
        return replace(norm, axis=kept[a])
    # Reshape / Flatten
    shape_in, shape_out = _reshape_dims(node, False, ctx), _reshape_dims(node, True, ctx)
    if shape_in is None or shape_out is None:
        return Refusal(f"the {op} shapes are unknown")
    what = f"the {op} of {_fmt(shape_in)} to {_fmt(shape_out)}"
    if forward:
        return remap(shape_in, shape_out, norm, what)
    return remap(shape_out, shape_in, norm, what)


def trace_back(value: ir.Value, cmap: ChannelMap, ctx: FoldContext) -> Source | Refusal:
    """Walk from ``value`` up through shape-only ops to the node that computes the data."""
    path: list[ir.Node] = []
    while True:
        producer = value.producer()
        if producer is None:
            if value.is_graph_input():
                where = "a graph input"
            elif value.is_initializer() or value.const_value is not None:
                where = "a constant"
            else:
                where = "outside this graph"
            return Refusal(f"its input '{value.name}' is {where}, not a linear layer")
        if not is_op(producer, *SHAPE_OPS):
            return Source(producer, value, cmap, tuple(reversed(path)))
        if value.is_graph_output() or len(value.uses()) != 1:
            return Refusal(
                f"the {producer.op_type} output '{value.name}' also feeds other nodes or is a "
                "graph output"
            )
        mapped = through(producer, cmap, False, ctx)
        if isinstance(mapped, Refusal):
            return mapped.within(f"through {producer.op_type}")
        path.append(producer)
        cmap = mapped
        data = input_at(producer, 0)
        if data is None:
            return Refusal(f"the {producer.op_type} has no data input")
        value = data


def _pool(
    node: ir.Node, cmap: ChannelMap, ctx: FoldContext
) -> tuple[str | None, str | None] | Refusal:
    """(needs s >= 0, shift refusal) for a pooling node on the channel map's tensor."""
    norm = cmap.normalized(ctx.rank(node.inputs[0]))
    if isinstance(norm, Refusal):
        return norm
    if norm.axis not in (None, 1):
        return Refusal(f"the {node.op_type} pools the channel axis")
    if len(node.outputs) > 1 and any(
        o is not None and (o.uses() or o.is_graph_output()) for o in node.outputs[1:]
    ):
        return Refusal(f"the {node.op_type} indices output is used")
    op = node.op_type
    if op in ("MaxPool", "GlobalMaxPool"):
        return op, None
    if op == "AveragePool" and int_attr(node, "count_include_pad", 0):
        pads = ints_attr(node, "pads") or []
        auto_pad = str_attr(node, "auto_pad", "NOTSET")
        if any(pads) or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            return None, "the AveragePool counts padding into its averages"
        if _kernel_past_input(node, ctx):
            # onnxruntime then averages over the whole kernel, past the input (its output is
            # empty by the spec), so the shift would not pass unchanged
            return None, "the AveragePool counts padding and its kernel is larger than its input"
    return None, None


def _kernel_past_input(node: ir.Node, ctx: FoldContext) -> bool:
    """Whether the (dilated) kernel is larger than a known spatial dim. A ceil_mode window
    that overhangs the input counts no padding (onnxruntime, as torch), and with spatial dims
    unknown the shift passes on every input the spec gives an output for."""
    kernel = ints_attr(node, "kernel_shape") or []
    dilations = ints_attr(node, "dilations") or [1] * len(kernel)
    shape = ctx.shape(node.inputs[0])
    if shape is None or len(shape) != len(kernel) + 2:
        return False
    return any(
        isinstance(d, int) and (k - 1) * dl + 1 > d
        for d, k, dl in zip(list(shape)[2:], kernel, dilations, strict=False)
    )


def trace_forward(value: ir.Value, cmap: ChannelMap, ctx: FoldContext) -> list[Use] | Refusal:
    """Every node that reads ``value``, looking through shape-only ops and pooling."""
    if value.is_graph_output():
        return Refusal(f"its output '{value.name}' is a graph output")
    uses = list(value.uses())
    if not uses:
        return Refusal(f"nothing reads its output '{value.name}'")
    found: list[Use] = []
    for node, index in uses:
        if index == 0 and is_op(node, *SHAPE_OPS, *POOL_OPS):
            nonneg: str | None = None
            shift: str | None = None
            if is_op(node, *POOL_OPS):
                effect = _pool(node, cmap, ctx)
                if isinstance(effect, Refusal):
                    return effect
                nonneg, shift = effect
                mapped: ChannelMap | Refusal = cmap
            else:
                mapped = through(node, cmap, True, ctx)
            if isinstance(mapped, Refusal):
                return mapped.within(f"through {node.op_type}")
            sub = trace_forward(node.outputs[0], mapped, ctx)
            if isinstance(sub, Refusal):
                return sub
            for use in sub:
                found.append(
                    replace(
                        use,
                        path=(node, *use.path),
                        needs_nonnegative_scale=use.needs_nonnegative_scale or nonneg,
                        shift_refusal=use.shift_refusal or shift,
                    )
                )
        else:
            found.append(Use(node, index, value, cmap))
    return found
