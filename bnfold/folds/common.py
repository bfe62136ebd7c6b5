"""What every fold shares: refusals, the matched linear layer, and the fold context."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from bnfold.arithmetic import WeightLayout
from bnfold.constants import ConstantResolver

# Folded weights larger than this are computed when written, one tensor at a time.
LAZY_BYTES = 1 << 20


@dataclass(frozen=True)
class Refusal:
    """Why a node was not folded (shown to the user)."""

    reason: str

    def __str__(self) -> str:
        return self.reason


@dataclass
class LinearLayer:
    """A linear producer matched for folding.

    ``output`` is the value the affine node consumes. ``feature_axis`` is where output channels
    live in ``output`` (1 for convolutions, -1 for Gemm/MatMul); ``out_rank`` is None if unknown.
    ``install(ctx, weight, bias)`` puts the new weight and bias values in place and returns the
    value that now carries the folded result.
    """

    fold: str
    node: ir.Node
    output: ir.Value
    weight_value: ir.Value
    weight: np.ndarray
    layout: WeightLayout
    groups: int
    bias: np.ndarray | None
    channels: int
    feature_axis: int
    out_rank: int | None
    install: Callable[..., ir.Value]
    replaced: list[ir.Value] = field(default_factory=list)  # values that may become unused
    weight_multiplier: float = 1.0  # Gemm's alpha, folded into the weight
    can_take_bias: bool = True  # False: a bias needs a node change (MatMul -> Gemm)

    @property
    def dtype(self) -> np.dtype:
        return self.weight.dtype


@dataclass
class FoldOptions:
    """User-facing switches."""

    allow_initializer_inputs: bool = True
    affine: bool = True  # also fold per-channel Mul/Add/Sub/Div into linear producers


class FoldContext:
    """State shared by the folds of one model: constants, names and notes."""

    def __init__(self, model: ir.Model, options: FoldOptions) -> None:
        self.model = model
        self.options = options
        self.constants = ConstantResolver()
        self.function_graphs = {id(f.graph) for f in model.functions.values()}
        self.notes: list[str] = []
        self.pre_folded: list = []  # Add/Sub nodes folded on the way to a BN
        self._names: set[str] = set()
        for graph in all_graphs(model):
            self._names.update(v.name for v in graph.inputs if v.name)
            self._names.update(graph.initializers.keys())
            for node in graph:
                self._names.update(v.name for v in node.outputs if v.name)

    @property
    def legacy_ir(self) -> bool:
        return self.model.ir_version < 4

    def unique_name(self, hint: str) -> str:
        name, i = hint, 1
        while name in self._names:
            name, i = f"{hint}_{i}", i + 1
        self._names.add(name)
        return name

    def is_function_graph(self, graph: ir.Graph | ir.Function | None) -> bool:
        return graph is not None and id(graph) in self.function_graphs

    def const(self, value: ir.Value | None, what: str) -> np.ndarray | Refusal:
        """The constant array behind ``value`` or a refusal naming ``what``."""
        if value is None:
            return Refusal(f"{what} is missing")
        const = self.constants.resolve(value)
        if const is None:
            return Refusal(f"{what} '{value.name}' is not a constant")
        if const.overridable:
            if not self.legacy_ir:
                return Refusal(
                    f"{what} '{value.name}' is a graph input and can be overridden at run time"
                )
            if not self.options.allow_initializer_inputs:
                return Refusal(
                    f"{what} '{value.name}' is an initializer that is also a graph input (IR "
                    f"{self.model.ir_version}); refused by --refuse-initializer-inputs"
                )
        return const.array


def all_graphs(model: ir.Model) -> list[ir.Graph]:
    """The main graph, every subgraph, and every model-local function body."""
    return [*model.graphs(), *(function.graph for function in model.functions.values())]


def int_attr(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return default if attr is None else int(attr.as_int())


def float_attr(node: ir.Node, name: str, default: float) -> float:
    attr = node.attributes.get(name)
    return default if attr is None else float(attr.as_float())


def rank_of(value: ir.Value | None) -> int | None:
    if value is None or value.shape is None:
        return None
    return len(value.shape)


def single_consumer_refusal(value: ir.Value, kind: str) -> Refusal | None:
    """Refuse when the producer's output is also used elsewhere or is a graph output."""
    if value.is_graph_output():
        return Refusal(f"the {kind} output '{value.name}' is also a graph output")
    uses = value.uses()
    if len(uses) != 1:
        return Refusal(f"the {kind} output '{value.name}' also feeds {len(uses) - 1} other node(s)")
    return None


def conv_weight_and_bias(
    node: ir.Node, ctx: FoldContext, layout: str
) -> tuple[np.ndarray, np.ndarray | None] | Refusal:
    """Constant weight (rank >= 3, ``layout`` names its axes) and optional bias of a (de)conv."""
    op = node.op_type
    if len(node.inputs) < 2:
        return Refusal(f"{op} has no weight input")
    weight = ctx.const(node.inputs[1], f"{op} weight")
    if isinstance(weight, Refusal):
        return weight
    refusal = check_weight_rank(weight, layout, weight.ndim >= 3)
    if refusal:
        return refusal
    bias_value = node.inputs[2] if len(node.inputs) > 2 else None
    if bias_value is None:
        return weight, None
    bias = ctx.const(bias_value, f"{op} bias")
    return bias if isinstance(bias, Refusal) else (weight, bias)


def check_weight_rank(w: np.ndarray, expected: str, ok: bool) -> Refusal | None:
    return None if ok else Refusal(f"weight of shape {tuple(w.shape)} is not {expected}")


def as_vector(array: np.ndarray, channels: int, what: str) -> np.ndarray | Refusal:
    """A per-channel parameter as float64 (C,), broadcasting a single value."""
    flat = np.asarray(array).reshape(-1)
    if flat.size == channels:
        return flat.astype(np.float64)
    if flat.size == 1:
        return np.full(channels, float(flat[0]), dtype=np.float64)
    return Refusal(f"{what} has {flat.size} values for {channels} channels")


def install_at(weight_index: int, bias_index: int) -> Callable[..., ir.Value]:
    """An ``install`` that sets the weight and bias inputs of the producer in place."""

    def install(
        ctx: FoldContext, layer: LinearLayer, weight: ir.Value, bias: ir.Value | None
    ) -> ir.Value:
        node = layer.node
        node.replace_input_with(weight_index, weight)
        if bias is not None:
            if len(node.inputs) <= bias_index:
                node.resize_inputs(bias_index + 1)
            node.replace_input_with(bias_index, bias)
        return layer.output

    return install
