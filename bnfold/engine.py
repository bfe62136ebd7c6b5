"""The fold pass: walk every graph, fold each foldable node into its linear producer.

A pass in the onnx-ir sense: ``FoldPass()(model) -> PassResult(model, modified)``. The graph
walk lives here; the arithmetic in :mod:`bnfold.arithmetic`; what each producer accepts in
:mod:`bnfold.folds`.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common

from bnfold.arithmetic import (
    Affine,
    cast_to,
    fold_bias,
    range_problem,
    scale_weight,
    scaled_weight_problem,
)
from bnfold.folded_weight import FoldedWeight
from bnfold.folds.batchnorm import batchnorm_affine_of, batchnorm_refusal
from bnfold.folds.common import (
    LAZY_BYTES,
    FoldContext,
    FoldOptions,
    LinearLayer,
    Refusal,
    all_graphs,
    single_consumer_refusal,
)
from bnfold.folds.conv import match_conv
from bnfold.folds.conv_transpose import match_conv_transpose
from bnfold.folds.elementwise import ELEMENTWISE_OPS, data_operand, elementwise_affine_of
from bnfold.folds.gemm import match_gemm
from bnfold.folds.matmul import match_matmul, match_matmul_add, match_matmul_through_reshape
from bnfold.report import Folded, FoldReport, Skipped

_MATCHERS = {
    "Conv": match_conv,
    "ConvTranspose": match_conv_transpose,
    "Gemm": match_gemm,
    "MatMul": match_matmul,
}
_LINEAR = ", ".join(_MATCHERS)


def is_default_domain(node: ir.Node) -> bool:
    return node.domain in ("", "ai.onnx")


def is_batchnorm(node: ir.Node) -> bool:
    return node.op_type == "BatchNormalization" and is_default_domain(node)


def count_nodes(model: ir.Model) -> tuple[int, int]:
    """(nodes, BatchNormalization nodes) over all graphs and functions."""
    nodes = bns = 0
    for graph in all_graphs(model):
        for node in graph:
            nodes += 1
            bns += is_batchnorm(node)
    return nodes, bns


def node_label(node: ir.Node) -> str:
    if node.name:
        return node.name
    out = node.outputs[0].name if node.outputs else None
    return f"{node.op_type}({out})" if out else node.op_type


def graph_label(graph: ir.Graph, model: ir.Model) -> str:
    if graph is model.graph:
        return "main"
    return graph.name or "subgraph"


class FoldPass(ir.passes.InPlacePass):
    """Fold BatchNormalization (and per-channel Mul/Add/Sub/Div) into linear producers."""

    def __init__(self, options: FoldOptions | None = None) -> None:
        super().__init__()
        self.options = options or FoldOptions()
        self.report = FoldReport()

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        ctx = FoldContext(model, self.options)
        report = self.report
        report.nodes_before, report.bn_before = count_nodes(model)
        _infer_shapes_if_needed(model, ctx)
        for graph in all_graphs(model):
            label = graph_label(graph, model)
            for node in list(graph):
                if node.graph is not graph:  # removed by an earlier fold
                    continue
                if is_batchnorm(node):
                    result = fold_node(node, ctx)
                    for pre in ctx.pre_folded:
                        pre.graph = label
                        report.folded.append(pre)
                    ctx.pre_folded.clear()
                    if isinstance(result, Refusal):
                        report.skipped.append(Skipped(node_label(node), result.reason, label))
                    else:
                        result.graph = label
                        report.folded.append(result)
                elif (
                    self.options.affine
                    and node.op_type in ELEMENTWISE_OPS
                    and is_default_domain(node)
                ):
                    result = fold_node(node, ctx)
                    if not isinstance(result, Refusal):
                        result.graph = label
                        report.folded.append(result)
        report.nodes_after, report.bn_after = count_nodes(model)
        report.notes.extend(dict.fromkeys(ctx.notes))
        return ir.passes.PassResult(model, modified=bool(report.folded))


def _match_producer(target: ir.Node, data: ir.Value, ctx: FoldContext) -> LinearLayer | Refusal:
    producer = data.producer()
    if producer is None:
        where = "a graph input" if data.is_graph_input() else "outside this graph"
        return Refusal(f"its input '{data.name}' is {where}, not a linear layer")
    if not is_default_domain(producer):
        return Refusal(f"its input comes from {producer.domain}::{producer.op_type}")
    op = producer.op_type
    if op in ("Add", "Sub") and target.op_type == "BatchNormalization":
        pre = _fold_pre_add(producer, ctx)
        if isinstance(pre, Refusal):
            return pre
        if isinstance(pre, LinearLayer):
            return pre
        # the Add was folded into its producer: match that producer again
        return _match_producer(target, target.inputs[0], ctx)
    if op in ("Reshape", "Transpose") and target.op_type == "BatchNormalization":
        return match_matmul_through_reshape(producer, ctx)
    if op in ("Mul", "Div") and target.op_type != "BatchNormalization":
        return Refusal("chain of elementwise nodes")
    if op == "Add" and target.op_type in ("Mul", "Div", "Sub", "Add"):
        return (
            match_matmul_add(producer, ctx)
            if target.op_type in ("Mul", "Div")
            else Refusal("Add after Add")
        )
    matcher = _MATCHERS.get(op)
    if matcher is None:
        return Refusal(f"its input comes from {op}, not a linear layer ({_LINEAR})")
    return matcher(producer, ctx)


def _fold_pre_add(add: ir.Node, ctx: FoldContext) -> LinearLayer | Refusal | None:
    """Linear -> Add/Sub(constant) -> BN: fold the Add first (None), or match MatMul+Add."""
    operand = data_operand(add, ctx)
    if operand is None:
        return Refusal(f"its input comes from a {add.op_type} of two run-time values")
    data = operand[1]
    inner = data.producer()
    if inner is not None and inner.op_type == "MatMul" and add.op_type == "Add":
        return match_matmul_add(add, ctx)
    result = fold_node(add, ctx)
    if isinstance(result, Refusal):
        return Refusal(f"cannot fold the {add.op_type} before it: {result.reason}")
    ctx.pre_folded.append(result)
    return None


def fold_node(target: ir.Node, ctx: FoldContext) -> Folded | Refusal:
    """Fold ``target`` (BN or elementwise) into its producer, or say why not."""
    is_bn = target.op_type == "BatchNormalization"
    if is_bn:
        data = target.inputs[0] if target.inputs else None
        if data is None:
            return Refusal("has no input")
        # the BN's own reasons first: nothing before it (an Add) is folded for a BN that stays
        refusal = batchnorm_refusal(target, ctx)
        if refusal:
            return refusal
    else:
        operand = data_operand(target, ctx)
        if operand is None:
            return Refusal("no constant operand")
        data = operand[1]
        producer = data.producer()
        if (
            producer is not None
            and producer.op_type == "MatMul"
            and target.op_type in ("Add", "Sub")
        ):
            return Refusal("a MatMul's bias Add is kept as is")
    layer = _match_producer(target, data, ctx)
    if isinstance(layer, Refusal):
        return layer
    kind = layer.node.op_type if layer.fold != "matmul_add" else "MatMul+Add"
    refusal = single_consumer_refusal(layer.output, kind)
    if refusal:
        return refusal
    if not _is_float(layer.dtype):
        return Refusal(f"the {kind} weight is {layer.dtype}, not floating point")
    if is_bn:
        if layer.feature_axis != 1 and layer.out_rank != 2:
            rank = "unknown" if layer.out_rank is None else str(layer.out_rank)
            return Refusal(
                f"BN normalises axis 1 but the {kind} features are on the last axis "
                f"(output rank {rank})"
            )
        affine = batchnorm_affine_of(target, ctx, layer.channels)
    else:
        affine = elementwise_affine_of(
            target, ctx, layer.channels, layer.feature_axis, layer.out_rank
        )
    if isinstance(affine, Refusal):
        return affine
    return _apply(target, layer, affine, ctx)


def _is_float(dtype: np.dtype) -> bool:
    return np.issubdtype(dtype, np.floating) or str(dtype) == "bfloat16"


def _apply(
    target: ir.Node, layer: LinearLayer, affine: Affine, ctx: FoldContext
) -> Folded | Refusal:
    graph = layer.node.graph
    in_function = ctx.is_function_graph(graph)
    w_scale = affine.scale * layer.weight_multiplier
    need_bias = layer.bias is not None or bool(np.any(affine.shift != 0))
    if need_bias and not layer.can_take_bias:
        return Refusal("the MatMul has no bias to take the shift (its output is not rank 2)")
    problem = scaled_weight_problem(layer.weight, w_scale, layer.layout, layer.groups)
    bias64 = fold_bias(layer.bias, affine) if need_bias else None
    if problem is None and bias64 is not None:
        problem = range_problem(layer.bias, bias64, layer.dtype)
    if problem is not None:
        return Refusal(f"the folded {layer.dtype} weights would not be exact: {problem}")
    stale = [v for v in target.inputs if v is not None] + list(layer.replaced)
    if in_function and not _function_fold_keeps_count(stale, need_bias):
        return Refusal("in a function body the fold would add Constant nodes")

    label = node_label(target)
    src_value = layer.weight_value
    weight = _weight_tensor(layer, w_scale)
    w_value = _new_constant(ctx, graph, f"{label}/folded_weight", weight, layer.node, src_value)
    b_value = None
    if bias64 is not None:
        bias_tensor = ir.tensor(cast_to(bias64, layer.dtype))
        b_value = _new_constant(
            ctx, graph, f"{label}/folded_bias", bias_tensor, layer.node, src_value
        )
    carrier = layer.install(ctx, layer, w_value, b_value)

    out = target.outputs[0]
    name, dtype, shape = out.name, out.type, out.shape
    out.replace_all_uses_with(carrier, replace_graph_outputs=True)
    target.graph.remove(target, safe=True)
    out.name = None
    carrier.name = name
    if dtype is not None:
        carrier.type = dtype
    if shape is not None:
        carrier.shape = shape
    _drop_unused(stale, ctx)
    fold = f"{layer.fold.replace('_add', '')}+{'bn' if target.op_type == 'BatchNormalization' else target.op_type.lower()}"
    props = layer.node.metadata_props
    props["bnfold.fold"] = ",".join(filter(None, [props.get("bnfold.fold"), fold]))
    props["bnfold.source"] = ",".join(filter(None, [props.get("bnfold.source"), label]))
    return Folded(node=label, op=target.op_type, into=node_label(layer.node), fold=fold, graph="")


def _weight_tensor(layer: LinearLayer, scale: np.ndarray) -> ir.TensorProtocol:
    """The scaled weight, computed now if small, else when it is written."""
    source = layer.weight
    layout, groups = layer.layout, layer.groups
    if source.nbytes <= LAZY_BYTES:
        return ir.tensor(scale_weight(source, scale, layout, groups))
    # computed when saved, and written to external data chunk by chunk
    return FoldedWeight(source, scale, layout, groups)


def _new_constant(
    ctx: FoldContext,
    graph: ir.Graph,
    hint: str,
    tensor: ir.TensorProtocol,
    before: ir.Node,
    source: ir.Value,
) -> ir.Value:
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
        shape=ir.Shape(tensor.shape),
        type=ir.TensorType(tensor.dtype),
    )
    graph.register_initializer(value)
    if ctx.legacy_ir and source.is_graph_input() and graph is ctx.model.graph:
        graph.inputs.append(value)
        ctx.notes.append(
            f"IR {ctx.model.ir_version}: initializers that are also graph inputs were folded as "
            "constants (as exporters of that era meant); the folded ones are new graph inputs "
            "and the originals stay as inputs the graph no longer reads"
        )
    return value


def _function_fold_keeps_count(stale: list[ir.Value], need_bias: bool) -> bool:
    """In a function body new weights are Constant nodes: fold only if as many go away.

    ``stale`` are the inputs the fold stops reading (BN parameters, old weight and bias); each
    produced by a Constant that nothing else reads is removed with the folded node.
    """
    freed = {
        id(value.producer())
        for value in stale
        if value.producer() is not None
        and value.producer().op_type == "Constant"
        and len(value.uses()) == 1
    }
    added = 1 + int(need_bias)
    return added <= len(freed) + 1  # the folded node itself goes too


def _drop_unused(values: list[ir.Value], ctx: FoldContext) -> None:
    """Remove initializers and constant-producing nodes that the fold left unused."""
    pending = list(values)
    while pending:
        value = pending.pop()
        if value is None or value.uses() or value.is_graph_output():
            continue
        graph = value.graph
        if value.is_initializer():
            if not value.is_graph_input() and graph is not None:
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


def _infer_shapes_if_needed(model: ir.Model, ctx: FoldContext) -> None:
    """MatMul folds need the output rank; infer shapes only when some is unknown."""
    for graph in all_graphs(model):
        for node in graph:
            if (
                node.op_type == "MatMul"
                and is_default_domain(node)
                and node.outputs[0].shape is None
            ):
                # onnx-ir logs a traceback when onnx's inference rejects the model (and leaves
                # it unchanged): silence it, the refusal reasons say what stayed unknown
                log = logging.getLogger("onnx_ir.passes.common.shape_inference")
                disabled, log.disabled = log.disabled, True
                try:
                    ir.passes.common.ShapeInferencePass()(model)
                except Exception as exc:  # shape inference is a help, not a requirement
                    ctx.notes.append(
                        f"shape inference failed ({type(exc).__name__}); ranks may be unknown"
                    )
                finally:
                    log.disabled = disabled
                return
