"""Affine chains: runs of per-channel affine nodes that fold as one map.

An affine node computes ``y = s * x + t`` along one axis: an inference BatchNormalization (axis
1) or a Mul/Add/Sub/Div by a per-channel constant (:mod:`bnfold.folds.elementwise`). A chain is
a maximal run of them, each feeding only the next (Identity nodes in between are part of it),
on the same channel axis; its maps compose in float64, so a fold rounds each changed tensor
once however long the chain. Folds are matched on chains, at their first node.

Conditions for a node to join the chain before it (checked here):
- the value between them feeds only this node and is not a graph output;
- both act on the same axis (a scalar constant acts on any) with the same channel count;
- with ``affine`` off, Mul/Add/Sub/Div count only before a BatchNormalization (the bias Add
  that paddle2onnx writes between a Conv and its BN); a chain without a BN is then no chain;
- a MatMul's bias Add is the MatMul's (:func:`bnfold.folds.layers.is_layer_bias`), not a node.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from bnfold.arithmetic import Affine
from bnfold.folds import layers
from bnfold.folds.batchnorm import read_batchnorm
from bnfold.folds.common import input_at, is_op, node_label
from bnfold.folds.context import FoldContext
from bnfold.folds.elementwise import ELEMENTWISE_OPS, read_elementwise
from bnfold.folds.plan import Refusal, Refused, Remove


@dataclass(frozen=True, eq=False)
class AffineOp:
    """One node read as ``y = scale * data + shift`` along ``axis`` (None: any axis)."""

    node: ir.Node
    data: ir.Value
    axis: int | None
    scale: np.ndarray  # float64, 1 value (broadcast) or one per channel
    shift: np.ndarray
    is_batchnorm: bool

    @property
    def channels(self) -> int | None:
        if self.is_batchnorm or self.scale.size > 1:
            return int(self.scale.size)
        return None

    @property
    def kind(self) -> str:
        return "BN" if self.is_batchnorm else self.node.op_type


@dataclass(eq=False)
class AffineChain:
    """Affine nodes in data order; ``members`` are every node of the chain, with the Identity
    nodes before the first affine node and between affine nodes."""

    ops: list[AffineOp]
    members: list[ir.Node]

    @property
    def head(self) -> ir.Node:
        return self.ops[0].node

    @property
    def input(self) -> ir.Value:
        """The value the chain reads (before any leading Identity)."""
        first = self.members[0]
        if first is self.ops[0].node:
            return self.ops[0].data
        value = first.inputs[0]
        assert value is not None
        return value

    @property
    def output(self) -> ir.Value:
        return self.members[-1].outputs[0]

    @property
    def batchnorms(self) -> list[ir.Node]:
        return [op.node for op in self.ops if op.is_batchnorm]

    @property
    def has_batchnorm(self) -> bool:
        return any(op.is_batchnorm for op in self.ops)

    @property
    def axis(self) -> int | None:
        return next((op.axis for op in self.ops if op.axis is not None), None)

    @property
    def channels(self) -> int | None:
        return next((op.channels for op in self.ops if op.channels is not None), None)

    @property
    def label(self) -> str:
        """The first BatchNormalization's label (else the first node's): names new tensors."""
        bns = self.batchnorms
        return node_label(bns[0] if bns else self.head)

    def affine(self, channels: int) -> Affine | Refusal:
        """The composed map over ``channels`` channels, in float64."""
        total = Affine.identity(channels)
        for op in self.ops:
            if op.scale.size not in (1, channels):
                return Refusal(
                    f"{op.kind} parameters have {op.scale.size} values for {channels} channels"
                )
            total = total.then(
                Affine(
                    np.broadcast_to(op.scale, (channels,)).astype(np.float64),
                    np.broadcast_to(op.shift, (channels,)).astype(np.float64),
                )
            )
        return total

    def input_refusal(self, ctx: FoldContext) -> Refusal | None:
        """Why the chain's input may not have the chain's channels, for folds that keep the
        input as it is (forward, merge). A BatchNormalization first guarantees them (its input
        is checked at load); a Mul/Add first could broadcast a smaller input (scalars before
        it do not change the shape)."""
        first = next((op for op in self.ops if op.is_batchnorm or op.axis is not None), None)
        if first is None or first.is_batchnorm or first.axis is None:
            return None
        rank = ctx.rank(self.input)
        shape = ctx.shape(self.input)
        axis = first.axis if first.axis >= 0 or rank is None else first.axis + rank
        dim = shape[axis] if shape is not None and 0 <= axis < len(shape) else None
        if dim != self.channels:
            return Refusal(
                f"the {first.kind} input '{self.input.name}' has {dim if isinstance(dim, int) else 'an unknown number of'} "
                f"channels, not {self.channels}"
            )
        return None

    def removal(self, keep: ir.Value, rename: bool) -> list[Remove]:
        """Edits that remove every member, last first; readers of the output read ``keep``."""
        return [Remove(node, keep, rename) for node in reversed(self.members)]

    def parameters(self) -> list[ir.Value]:
        """Every input of the chain's nodes except the data it reads."""
        data = {id(op.data) for op in self.ops} | {id(n.outputs[0]) for n in self.members}
        data.add(id(self.input))
        return [
            v for node in self.members for v in node.inputs if v is not None and id(v) not in data
        ]


def read_op(node: ir.Node, ctx: FoldContext) -> AffineOp | Refusal | None:
    """``node`` as an affine node, a refusal (a BN that cannot fold), or None."""
    try:
        return _read_op(node, ctx)
    except Refused as exc:  # an attribute that refers to a function attribute
        return exc.refusal if is_op(node, "BatchNormalization") else None


def _read_op(node: ir.Node, ctx: FoldContext) -> AffineOp | Refusal | None:
    if is_op(node, "BatchNormalization"):
        bn = read_batchnorm(node, ctx)
        if isinstance(bn, Refusal):
            return bn
        data = node.inputs[0]
        assert data is not None
        return AffineOp(node, data, 1, bn[0], bn[1], True)
    if is_op(node, *ELEMENTWISE_OPS) and not layers.is_layer_bias(node, ctx):
        read = read_elementwise(node, ctx)
        if read is None or isinstance(read, Refusal):
            return read
        data = node.inputs[read.data_index]
        assert data is not None
        return AffineOp(node, data, read.axis, read.scale, read.shift, False)
    return None


def _compatible(a: AffineOp, b: AffineOp, ctx: FoldContext) -> bool:
    if a.channels is not None and b.channels is not None and a.channels != b.channels:
        return False
    if a.axis is None or b.axis is None or a.axis == b.axis:
        return True
    if (a.axis < 0) == (b.axis < 0):
        return False
    rank = ctx.rank(b.data)
    return rank is not None and a.axis % rank == b.axis % rank


def _joins(ops: list[AffineOp], op: AffineOp, ctx: FoldContext) -> bool:
    """Whether ``op`` can join the chain ``ops``: compatible with each of them (compatibility is
    not transitive: a scalar Mul between a BN on axis 1 and a Mul along axis 3 is compatible
    with both, which are not compatible with each other)."""
    return all(_compatible(other, op, ctx) for other in ops)


def _before(op: AffineOp, ctx: FoldContext) -> AffineOp | None:
    """The affine node whose output ``op`` reads as its data (past Identity nodes), if any."""
    _, before = _previous(op.data)
    prev = None if before is None else read_op(before, ctx)
    return prev if isinstance(prev, AffineOp) else None


def _starts_chain(first: AffineOp, ctx: FoldContext) -> bool:
    """Whether ``first`` starts a chain: the run of affine nodes that leads to it, split into
    chains from its start as :func:`chain_at` grows them, leaves ``first`` the first of one."""
    run, seen = [first], {id(first.node)}
    while (prev := _before(run[-1], ctx)) is not None and id(prev.node) not in seen:
        seen.add(id(prev.node))
        run.append(prev)
    chain: list[AffineOp] = []
    for op in reversed(run):
        chain = [*chain, op] if chain and _joins(chain, op, ctx) else [op]
    return chain == [first]


def _next(value: ir.Value) -> tuple[list[ir.Node], ir.Node | None, ir.Value]:
    """The single reader of ``value`` past Identity nodes: (identities, reader, value it reads)."""
    ids: list[ir.Node] = []
    while not value.is_graph_output() and len(value.uses()) == 1:
        node, _ = next(iter(value.uses()))
        producer = value.producer()
        if producer is not None and node.graph is not producer.graph:
            return ids, None, value  # read in a subgraph: a chain stays in one graph
        if not is_op(node, "Identity"):
            return ids, node, value
        ids.append(node)
        value = node.outputs[0]
    return ids, None, value


def _previous(value: ir.Value) -> tuple[list[ir.Node], ir.Node | None]:
    """The Identity nodes before ``value`` (in data order) whose outputs feed only the next
    node, and the node before them if ``value``'s path to it is all single-use."""
    ids: list[ir.Node] = []
    while not value.is_graph_output() and len(value.uses()) == 1:
        node = value.producer()
        reader, _ = next(iter(value.uses()))
        if node is not None and node.graph is not reader.graph:
            return ids[::-1], None  # made in an enclosing graph: a chain stays in one graph
        data = None if node is None else input_at(node, 0)
        if not is_op(node, "Identity") or node is None or data is None:
            return ids[::-1], node  # (an Identity without input is no part of a chain)
        ids.append(node)
        value = data
    return ids[::-1], None


def chain_at(node: ir.Node, ctx: FoldContext) -> AffineChain | Refusal | None:
    """The chain that starts at ``node``; a Refusal for a BatchNormalization that cannot fold
    at all (training mode, used statistics outputs, parameters not constant...); None when
    ``node`` starts no chain."""
    first = read_op(node, ctx)
    if first is None:
        return None
    if isinstance(first, Refusal):
        if is_op(node, "BatchNormalization"):
            return first
        if first.reason.startswith("division"):
            ctx.note(f"{node.op_type} '{node_label(node)}' is not folded: {first.reason}")
        return None
    if not _starts_chain(first, ctx):
        return None  # part of the chain that starts earlier
    leading, _ = _previous(first.data)
    ops, members = [first], [*leading, node]
    while True:
        ids, reader, value = _next(ops[-1].node.outputs[0])
        if reader is None:
            break
        op = read_op(reader, ctx)
        if not isinstance(op, AffineOp) or op.data is not value or not _joins(ops, op, ctx):
            break
        ops.append(op)
        members += [*ids, reader]
    if not ctx.options.affine:
        last_bn = max((i for i, op in enumerate(ops) if op.is_batchnorm), default=None)
        if last_bn is None:
            return None
        members = members[: members.index(ops[last_bn].node) + 1]
        ops = ops[: last_bn + 1]
    return AffineChain(ops, members)
