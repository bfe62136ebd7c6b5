"""The fold pass: walk every graph, ask the registered folds about each affine chain, apply plans.

A pass in the onnx-ir sense: ``FoldPass(options)(model) -> FoldPassResult(model, modified,
report)``, with no state kept between calls. The engine knows no op types: what can be folded,
and how, is in :mod:`bnfold.folds`; the arithmetic in :mod:`bnfold.arithmetic`. It walks the
graphs until a walk folds nothing (so a second pass finds nothing: idempotent), and for each
plan it checks what no single fold can see: that every new tensor is representable in its dtype,
and that a function body does not grow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import onnx_ir as ir

from bnfold import folds
from bnfold.arithmetic import cast_to, range_problem, scale_weight, scaled_weight_problem
from bnfold.folded_weight import FoldedWeight
from bnfold.folds.common import LAZY_BYTES, is_default_domain, is_op, node_label
from bnfold.folds.context import FoldContext, FoldOptions, all_graphs
from bnfold.folds.plan import (
    NewTensor,
    NewValue,
    Operand,
    Plan,
    Refusal,
    Refused,
    Remove,
    ReplaceNode,
    ScaledWeight,
    SetAttribute,
    SetInput,
)
from bnfold.report import Folded, FoldReport, Skipped


def count_nodes(model: ir.Model) -> tuple[int, int]:
    """(nodes, BatchNormalization nodes) over all graphs and functions."""
    nodes = bns = 0
    for graph in all_graphs(model):
        for node in graph:
            nodes += 1
            bns += is_op(node, "BatchNormalization")
    return nodes, bns


def graph_label(graph: ir.Graph, model: ir.Model, ctx: FoldContext) -> str:
    if graph is model.graph:
        return "main"
    if ctx.is_function_graph(graph):
        return f"function {ctx.function_names[id(graph)]}"
    return graph.name or "subgraph"


@dataclass
class FoldPassResult(ir.passes.PassResult):
    """``PassResult`` with what was folded and what was not, and why."""

    report: FoldReport = field(default_factory=FoldReport)


class FoldPass(ir.passes.InPlacePass):
    """Fold BatchNormalization (and per-channel Mul/Add/Sub/Div) into neighbouring linear layers."""

    def __init__(self, options: FoldOptions | None = None) -> None:
        super().__init__()
        self.options = options or FoldOptions()

    def call(self, model: ir.Model) -> FoldPassResult:
        ctx = FoldContext(model, self.options)
        report = FoldReport()
        report.nodes_before, report.bn_before = count_nodes(model)
        changed = True
        while changed:  # until a walk folds nothing
            changed = False
            report.skipped = []
            for graph in all_graphs(model):
                where = graph_label(graph, model, ctx)
                for node in list(graph):
                    if node.graph is not graph:  # removed by an earlier fold
                        continue
                    outcome = _fold_at(node, ctx)
                    if isinstance(outcome, list):
                        for entry in outcome:
                            entry.graph = where
                        report.folded.extend(outcome)
                        changed = True
                    elif outcome is not None:
                        names, reason = outcome
                        report.skipped.extend(Skipped(n, reason, where) for n in names)
        report.nodes_after, report.bn_after = count_nodes(model)
        report.notes.extend(ctx.notes)
        return FoldPassResult(model, modified=bool(report.folded), report=report)


def _fold_at(node: ir.Node, ctx: FoldContext) -> list[Folded] | tuple[list[str], str] | None:
    """Fold the chain that starts at ``node``: its report entries, or (BN labels, why not)."""
    chain = folds.anchor(node, ctx)  # (reads each node through read_op, which catches Refused)
    if chain is None:
        return None
    if isinstance(chain, Refusal):
        return [node_label(node)], chain.reason
    refusals: list[tuple[str, str]] = []
    for fold in folds.REGISTRY:
        if not fold.enabled(ctx):
            continue
        try:
            result = fold.match(chain, ctx)
        except Refused as exc:
            result = exc.refusal
        if result is None:
            continue
        if isinstance(result, Plan):
            problem = _check(result, ctx)
            if problem is None:
                return _apply(result, ctx)
            result = problem
        refusals.append((fold.direction, result.reason))
    if not chain.has_batchnorm:
        return None
    if len(refusals) == 1:
        reason = refusals[0][1]
    else:
        reason = "; ".join(f"{direction}: {why}" for direction, why in refusals)
    return [node_label(bn) for bn in chain.batchnorms], reason


def _check(plan: Plan, ctx: FoldContext) -> Refusal | None:
    """What the engine refuses in any plan: new tensors that do not fit their dtype, a
    function body that would grow (its new tensors are Constant nodes), and a graph output
    taken over by a value from outside its graph."""
    for value in plan.new_values():
        if isinstance(value, ScaledWeight):
            problem = scaled_weight_problem(
                value.array, value.scale, value.layout, value.groups,
                scales_outputs=value.scales_outputs,
            )  # fmt: skip
            dtype = value.array.dtype
        else:
            problem = range_problem(value.original, value.values, value.dtype)
            dtype = value.dtype
        if problem is not None:
            return Refusal(f"the folded {dtype} weights would not be exact: {problem}")
    graph = plan.into[0].graph
    if ctx.is_function_graph(graph) and not _keeps_node_count(plan):
        return Refusal("in a function body the fold would add Constant nodes")
    for edit in plan.edits:
        if isinstance(edit, Remove) and (refusal := _output_refusal(edit)) is not None:
            return refusal
    return None


def _output_refusal(edit: Remove) -> Refusal | None:
    """A graph output may only be taken over by a value computed in that same graph: an outer
    value (or a graph input) returned directly is invalid in a subgraph and renames an output
    of the main graph."""
    out = edit.node.outputs[0]
    if not out.is_graph_output():
        return None
    producer = edit.keep.producer()
    if producer is not None and producer.graph is edit.node.graph:
        return None
    source = "a graph input" if producer is None else "computed in an enclosing graph"
    return Refusal(
        f"its output '{out.name}' is a graph output and the value that would take its place, "
        f"'{edit.keep.name}', is {source}"
    )


def _keeps_node_count(plan: Plan) -> bool:
    """New tensors become Constant nodes in a function body: as many nodes must go.

    Going: every removed node, and every Constant producing a value the plan stops reading
    whose every reader is removed or has that input replaced by the plan.
    """
    removed = {id(e.node) for e in plan.edits if isinstance(e, Remove)}
    replaced = {(id(e.node), e.index) for e in plan.edits if isinstance(e, SetInput)}
    for e in plan.edits:
        if isinstance(e, ReplaceNode):
            removed.add(id(e.node))
    freed = set()
    for value in plan.stale:
        producer = value.producer()
        if producer is None or not is_op(producer, "Constant"):
            continue
        if all(id(n) in removed or (id(n), i) in replaced for n, i in value.uses()):
            freed.add(id(producer))
    going = sum(isinstance(e, Remove) for e in plan.edits) + len(freed)
    return len(plan.new_values()) <= going


def _apply(plan: Plan, ctx: FoldContext) -> list[Folded]:
    """Apply ``plan``'s edits in order; return its report entries."""
    entries = [
        Folded(node_label(n), n.op_type, "", label, "", plan.direction, plan.details or None)
        for n, label in plan.folded
    ]
    graph = plan.into[0].graph
    assert graph is not None
    replacements: dict[int, ir.Node] = {}

    def operand(value: Operand, before: ir.Node) -> ir.Value | None:
        if isinstance(value, ScaledWeight | NewTensor):
            return _materialize(value, plan.label, before, ctx)
        return value

    for edit in plan.edits:
        if isinstance(edit, Remove):
            _remove(edit, ctx)
        elif isinstance(edit, SetInput):
            value = operand(edit.value, edit.node)
            if len(edit.node.inputs) <= edit.index:
                edit.node.resize_inputs(edit.index + 1)
            edit.node.replace_input_with(edit.index, value)
        elif isinstance(edit, SetAttribute):
            edit.node.attributes[edit.attr.name] = edit.attr
        else:
            replacements[id(edit.node)] = _replace(edit, operand, ctx)
    _drop_unused(plan.stale, ctx)
    into = [replacements.get(id(n), n) for n in plan.into]
    sources = ",".join(e.node for e in entries)
    for node in into:
        props = node.metadata_props
        props["bnfold.fold"] = ",".join(
            filter(None, [props.get("bnfold.fold"), *(e.fold for e in entries)])
        )
        props["bnfold.source"] = ",".join(filter(None, [props.get("bnfold.source"), sources]))
    labels = ", ".join(node_label(n) for n in into)
    for entry in entries:
        entry.into = labels
    return entries


def _remove(edit: Remove, ctx: FoldContext) -> None:
    node, keep = edit.node, edit.keep
    out = node.outputs[0]
    carried = bool(out.uses()) or out.is_graph_output()
    name, type_, shape = out.name, out.type, out.shape
    out.replace_all_uses_with(keep, replace_graph_outputs=True)
    assert node.graph is not None
    node.graph.remove(node, safe=True)
    for value in node.outputs:
        ctx.constants.forget(value)
    renamable = keep.producer() is not None and not keep.is_graph_input()
    if edit.rename and carried and renamable:
        out.name = None
        keep.name = name
        if type_ is not None:
            keep.type = type_
        if shape is not None:
            keep.shape = shape


def _replace(
    edit: ReplaceNode, operand: Callable[[Operand, ir.Node], ir.Value | None], ctx: FoldContext
) -> ir.Node:
    old = edit.node
    graph = old.graph
    assert graph is not None
    inputs: list[ir.Value | None] = list(old.inputs)
    for index, value in edit.changes:
        inputs.extend([None] * (index + 1 - len(inputs)))
        inputs[index] = operand(value, old)
    new = ir.Node(
        "",
        edit.op_type,
        inputs=inputs,
        attributes=list(edit.attributes),
        num_outputs=len(old.outputs),
        name=ctx.unique_name(f"{old.name or old.op_type}_{edit.op_type.lower()}"),
        doc_string=old.doc_string,
        metadata_props=dict(old.metadata_props),
    )
    graph.insert_before(old, new)
    for before, after in zip(old.outputs, new.outputs, strict=True):
        name, type_, shape = before.name, before.type, before.shape
        ctx.carry_shape(before, after)
        before.replace_all_uses_with(after, replace_graph_outputs=True)
        before.name = None
        after.name = name
        after.type = type_
        after.shape = shape
    graph.remove(old, safe=True)
    return new


def _materialize(value: NewValue, label: str, before: ir.Node, ctx: FoldContext) -> ir.Value:
    """The new tensor as an initializer (a Constant node in a function body)."""
    if isinstance(value, ScaledWeight):
        tensor: ir.TensorProtocol
        if value.array.nbytes <= LAZY_BYTES:
            tensor = ir.tensor(scale_weight(value.array, value.scale, value.layout, value.groups))
        else:  # computed when saved, and written to external data chunk by chunk
            tensor = FoldedWeight(value.array, value.scale, value.layout, value.groups)
        source: ir.Value | None = value.source
    else:
        tensor = ir.tensor(cast_to(value.values, value.dtype))
        source = None
    return _new_constant(ctx, f"{label}/{value.hint}", tensor, before, source)


def _new_constant(
    ctx: FoldContext, hint: str, tensor: ir.TensorProtocol, before: ir.Node, source: ir.Value | None
) -> ir.Value:
    graph = before.graph
    assert graph is not None
    name = ctx.unique_name(hint)
    if ctx.is_function_graph(graph):
        node = ir.Node(
            "",
            "Constant",
            inputs=[],
            attributes=[ir.AttrTensor("value", tensor)],
            num_outputs=1,
            name=ctx.unique_name(f"{name}_constant"),
        )
        node.outputs[0].name = name
        # no dtype/shape on function values: onnx-ir writes them as main-graph value_info
        # ("domain::Function/name") that it does not read back, so a second fold would differ
        graph.insert_before(before, node)
        return node.outputs[0]
    tensor.name = name
    value = ir.Value(
        name=name,
        const_value=tensor,
        shape=ir.Shape(tensor.shape.numpy()),
        type=ir.TensorType(tensor.dtype),
    )
    if ctx.legacy_ir:
        # IR 3: every initializer is a graph input. A subgraph's inputs are positional (a Loop
        # body's) or none at all (an If branch's), so the tensor goes into the main graph, as
        # an outer-scope value the subgraph reads.
        graph = ctx.model.graph
        graph.register_initializer(value)
        graph.inputs.append(value)
        if source is not None and source.is_graph_input():
            ctx.note(
                f"IR {ctx.model.ir_version}: initializers that are also graph inputs were folded "
                "as constants (as exporters of that era meant); the folded ones are new graph "
                "inputs and the originals stay as inputs the graph no longer reads"
            )
    else:
        graph.register_initializer(value)
    return value


def _drop_unused(values: list[ir.Value], ctx: FoldContext) -> None:
    """Remove initializers and constant-producing nodes that the fold left unused."""
    pending = list(values)
    while pending:
        value = pending.pop()
        if value is None or value.uses() or value.is_graph_output():
            continue
        graph = value.graph
        if value.is_initializer():
            if not value.is_graph_input() and graph is not None and value.name is not None:
                graph.initializers.pop(value.name, None)
            continue
        node = value.producer()
        if node is None or node.graph is None or not is_default_domain(node):
            continue
        if any(out.uses() or out.is_graph_output() for out in node.outputs):
            continue
        inputs = [v for v in node.inputs if v is not None]
        node.graph.remove(node, safe=True)
        for out in node.outputs:
            ctx.constants.forget(out)
        pending.extend(inputs)


__all__ = ["FoldPass", "FoldPassResult", "count_nodes", "graph_label"]
