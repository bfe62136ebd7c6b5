"""The state one fold pass shares between folds: options, constants, names, shapes, notes.

A new context is made for every ``FoldPass.call``; nothing outlives the call.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common

from bnfold.constants import ConstantResolver
from bnfold.folds.plan import Refusal

FORWARD_MODES = ("off", "exact", "int8-safe")


@dataclass
class FoldOptions:
    """User-facing switches.

    ``forward``: "off" folds only backward (into the producer); "exact" also folds forward into
    the consumers and through activations wherever that is exact; "int8-safe" skips a forward
    fold that would make the consumer's per-channel int8 weights measurably worse.
    """

    allow_initializer_inputs: bool = True
    affine: bool = True  # also fold per-channel Mul/Add/Sub/Div into linear producers
    forward: str = "exact"

    def __post_init__(self) -> None:
        if self.forward not in FORWARD_MODES:
            raise ValueError(
                f"forward must be one of {', '.join(FORWARD_MODES)}, not {self.forward!r}"
            )


def all_graphs(model: ir.Model) -> list[ir.Graph]:
    """The main graph, every subgraph, every model-local function body and its subgraphs."""
    graphs = list(model.graphs())
    for function in model.functions.values():
        graphs += [function.graph, *function.graph.subgraphs()]
    return graphs


class FoldContext:
    """Constants, unique names, inferred shapes and notes for the folds of one model."""

    def __init__(self, model: ir.Model, options: FoldOptions) -> None:
        self.model = model
        self.options = options
        self.constants = ConstantResolver()
        # a function body and the subgraphs inside it -> the function's name
        self.function_names = {
            id(g): f.name for f in model.functions.values() for g in (f.graph, *f.graph.subgraphs())
        }
        self.notes: list[str] = []
        self._names: set[str] = set()
        self._inferred: dict[ir.Value, ir.Shape] | None = None
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
        return graph is not None and id(graph) in self.function_names

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

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

    def is_constant(self, value: ir.Value | None) -> bool:
        return self.constants.resolve(value) is not None

    # shapes ------------------------------------------------------------------------------

    def shape(self, value: ir.Value | None) -> ir.Shape | None:
        """``value.shape``, or the shape onnx's inference gives it (run once, lazily, on a
        snapshot: the model's own shapes are never changed by it)."""
        if value is None:
            return None
        if value.shape is not None:
            return value.shape
        if value.const_value is not None:
            return ir.Shape(value.const_value.shape.numpy())
        if self._inferred is None:
            self._inferred = self._infer()
        return self._inferred.get(value)

    def carry_shape(self, old: ir.Value, new: ir.Value) -> None:
        """``new`` takes the place of ``old`` (a replaced node's output): it has the shape
        inference gave ``old``, so later folds in this walk see it too."""
        if self._inferred is not None and old in self._inferred:
            self._inferred[new] = self._inferred[old]

    def rank(self, value: ir.Value | None) -> int | None:
        """The rank of ``value``: from its (inferred) shape, else from the ops before it."""
        shape = self.shape(value)
        if shape is not None:
            return len(shape)
        return None if value is None else self._structural_rank(value, depth=0)

    def _structural_rank(self, value: ir.Value, depth: int) -> int | None:
        """Rank by what the producing op does, when shape inference could not tell (onnx's
        inference rejects some real models outright)."""
        node = value.producer()
        if node is None or depth > 64 or node.domain not in ("", "ai.onnx"):
            return None
        op = node.op_type

        def rank_of(v: ir.Value | None) -> int | None:
            if v is None:
                return None
            shape = self.shape(v)
            return len(shape) if shape is not None else self._structural_rank(v, depth + 1)

        if op in ("Conv", "ConvTranspose"):
            weight = self.constants.array(node.inputs[1]) if len(node.inputs) > 1 else None
            return weight.ndim if weight is not None else rank_of(node.inputs[0])
        if op in ("Gemm", "Flatten"):
            return 2
        if op in _RANK_KEEPING:
            return rank_of(node.inputs[0])
        if op in ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Where"):
            ranks = [rank_of(v) for v in node.inputs]
            return None if any(r is None for r in ranks) else max(r for r in ranks if r is not None)
        if op == "Reshape" and len(node.inputs) > 1:
            target = self.constants.array(node.inputs[1])
            return None if target is None else int(np.asarray(target).size)
        return None

    def _infer(self) -> dict[ir.Value, ir.Shape]:
        values = [v for graph in self.model.graphs() for v in _graph_values(graph)]
        saved = [(v, v.shape, v.type) for v in values]
        # onnx-ir logs a traceback when onnx's inference rejects the model (and leaves it
        # unchanged): silence it, the refusal reasons say what stayed unknown
        log = logging.getLogger("onnx_ir.passes.common.shape_inference")
        disabled, log.disabled = log.disabled, True
        inferred: dict[ir.Value, ir.Shape] = {}
        try:
            onnx_ir.passes.common.ShapeInferencePass()(self.model)
            inferred = {
                v: v.shape for v, shape, _ in saved if shape is None and v.shape is not None
            }
        except Exception as exc:  # shape inference is a help, not a requirement
            self.note(f"shape inference failed ({type(exc).__name__}); ranks may be unknown")
        finally:
            log.disabled = disabled
            for v, shape, type_ in saved:
                v.shape, v.type = shape, type_
        return inferred


# ops whose output has the rank of their first input
_RANK_KEEPING = frozenset(
    {
        "BatchNormalization", "Relu", "LeakyRelu", "PRelu", "Sigmoid", "Tanh", "Identity",
        "Clip", "Dropout", "Neg", "Abs", "Cast", "CastLike", "Softmax", "LogSoftmax", "Elu",
        "Selu", "HardSigmoid", "HardSwish", "Mish", "Softplus", "Exp", "Log", "Sqrt", "Erf",
        "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpNormalization",
        "InstanceNormalization", "LRN", "Gelu",
    }
)  # fmt: skip


def _graph_values(graph: ir.Graph) -> list[ir.Value]:
    values = [*graph.inputs, *graph.initializers.values()]
    for node in graph:
        values.extend(node.outputs)
    return values
