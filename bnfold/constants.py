"""Find the constant value of an ``ir.Value``, evaluating small constant subgraphs.

Exporters hand BN parameters and biases over in many shapes: initializers, ``Constant`` nodes,
``Identity`` chains (the TorchScript exporter deduplicates equal tensors that way), and small
computations on constants (torch's dynamo exporter with ``optimize=False`` builds a zero Conv
bias as ``Shape -> Expand -> CastLike -> Expand``). The resolver sees through all of them
without changing the graph; the fold later drops whatever became unused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

# Ops evaluated on constant inputs (cheap, shape-like); the result must stay small.
_EVALUABLE = frozenset(
    {
        "Cast", "CastLike", "Concat", "ConstantOfShape", "Div", "Expand", "Flatten", "Gather",
        "Identity", "Mul", "Add", "Sub", "Neg", "Reshape", "Shape", "Slice", "Squeeze",
        "Unsqueeze", "Transpose", "Sqrt", "Reciprocal", "Range", "Size",
    }
)  # fmt: skip
_MAX_EVAL_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class Constant:
    """A resolved constant: its array and whether a caller may override it at run time."""

    array: np.ndarray
    overridable: bool  # an initializer that is also a graph input


class ConstantResolver:
    """Resolve values to numpy arrays, caching what was evaluated."""

    def __init__(self) -> None:
        # keyed by the value itself (not id(): ids are reused once removed values are freed)
        self._cache: dict[ir.Value, Constant | None] = {}

    def resolve(self, value: ir.Value | None) -> Constant | None:
        """The constant behind ``value``, or None when it depends on run-time data."""
        if value is None:
            return None
        key = value
        if key not in self._cache:
            self._cache[key] = None  # guards cycles
            self._cache[key] = self._resolve(value)
        return self._cache[key]

    def array(self, value: ir.Value | None) -> np.ndarray | None:
        const = self.resolve(value)
        return None if const is None else const.array

    def forget(self, value: ir.Value) -> None:
        self._cache.pop(value, None)

    def _resolve(self, value: ir.Value) -> Constant | None:
        tensor = value.const_value
        if tensor is not None and (value.is_initializer() or value.producer() is None):
            return Constant(tensor.numpy(), overridable=value.is_graph_input())
        node = value.producer()
        if node is None or node.domain not in ("", "ai.onnx"):
            return None
        if node.op_type == "Constant":
            array = _constant_node_value(node)
            return None if array is None else Constant(array, False)
        if node.op_type == "Identity":
            return self.resolve(node.inputs[0])
        if node.op_type == "Shape":
            return self._shape_of(node)
        if node.op_type not in _EVALUABLE or len(node.outputs) != 1:
            return None
        return self._evaluate(node)

    def _shape_of(self, node: ir.Node) -> Constant | None:
        shape = node.inputs[0].shape if node.inputs and node.inputs[0] is not None else None
        if shape is None or not shape.is_static():
            return None
        dims = np.array([d if isinstance(d, int) else 0 for d in shape], dtype=np.int64)
        rank = len(dims)
        start = node.attributes.get_int("start", 0)
        end = node.attributes.get_int("end", rank)
        start = max(0, min(rank, start + rank if start < 0 else start))
        end = max(0, min(rank, end + rank if end < 0 else end))
        return Constant(dims[start:end], False)

    def _evaluate(self, node: ir.Node) -> Constant | None:
        feeds: dict[str, np.ndarray] = {}
        names: list[str] = []
        overridable = False
        for i, inp in enumerate(node.inputs):
            name = f"in{i}"
            names.append(name if inp is not None else "")
            if inp is None:
                continue
            if node.op_type == "CastLike" and i == 1 and inp.dtype is not None:
                feeds[name] = np.zeros((), dtype=inp.dtype.numpy())
                continue
            const = self.resolve(inp)
            if const is None or const.array.size > _MAX_EVAL_ELEMENTS:
                return None
            overridable |= const.overridable
            feeds[name] = const.array
        try:
            if _legacy_broadcast(node, feeds):
                feeds["in1"] = _align(feeds["in1"], node, feeds["in0"].ndim)
            result = _numpy_eval(node, [feeds.get(n) if n else None for n in names])
        except Exception:  # an ill-formed constant subgraph is not a constant, not a crash
            return None
        if isinstance(result, _Unhandled):
            result = _run_single(node, names, feeds)
        if result is None or result.size > _MAX_EVAL_ELEMENTS:
            return None
        return Constant(result, overridable)


def _constant_node_value(node: ir.Node) -> np.ndarray | None:
    for key, attr in node.attributes.items():
        if attr.is_ref():  # `value_float = @x` in a function body: a value per call
            return None
        if key == "value":
            return attr.as_tensor().numpy()
        if key == "value_float":
            return np.array(attr.as_float(), dtype=np.float32)
        if key == "value_floats":
            return np.array(list(attr.as_floats()), dtype=np.float32)
        if key == "value_int":
            return np.array(attr.as_int(), dtype=np.int64)
        if key == "value_ints":
            return np.array(list(attr.as_ints()), dtype=np.int64)
    return None


def _legacy_broadcast(node: ir.Node, feeds: dict[str, np.ndarray]) -> bool:
    """Whether ``node`` is an opset < 7 binary op with ``broadcast=1`` on constant inputs."""
    flag = node.attributes.get("broadcast")
    return (
        node.op_type in ("Add", "Sub", "Mul", "Div")
        and flag is not None
        and flag.as_int() == 1
        and "in0" in feeds
        and "in1" in feeds
    )


def _align(b: np.ndarray, node: ir.Node, rank: int) -> np.ndarray:
    """B of a legacy broadcast, reshaped so that numpy broadcasting matches ONNX's.

    Before opset 7, ``broadcast=1`` matched B's dims to A's starting at ``axis`` (default: B's
    dims are A's last), where numpy always aligns the trailing dims.
    """
    axis = node.attributes.get_int("axis", rank - b.ndim)
    axis = axis + rank if axis < 0 else axis
    return b.reshape(b.shape + (1,) * (rank - axis - b.ndim))


Args = list[np.ndarray | None]


def _axes(node: ir.Node, args: Args) -> tuple[int, ...] | None:
    """Unsqueeze/Squeeze axes: an attribute before opset 13, the second input from 13."""
    attr = node.attributes.get("axes")
    if attr is not None:
        return tuple(attr.as_ints())
    if len(args) > 1 and args[1] is not None:
        return tuple(int(a) for a in args[1].reshape(-1))
    return None


def _small_shape(shape: tuple[int, ...]) -> bool:
    return all(d >= 0 for d in shape) and math.prod(shape) <= _MAX_EVAL_ELEMENTS


class _Unhandled:
    """What :func:`_numpy_eval` returns for an op it does not evaluate itself."""


UNHANDLED = _Unhandled()


def _numpy_eval(node: ir.Node, args: Args) -> np.ndarray | None | _Unhandled:
    """numpy implementations of the shape-like ops exporters wrap constants in.

    None when the result would be too large to be worth evaluating; UNHANDLED for an op not
    done here (onnx's reference evaluator runs it).
    """
    op = node.op_type
    if not args or args[0] is None:
        return UNHANDLED
    x = args[0]
    second = args[1] if len(args) > 1 else None
    attrs = node.attributes
    if op == "Unsqueeze":  # numpy, like ONNX, counts negative axes in the output's rank
        axes = _axes(node, args)
        return None if axes is None else np.expand_dims(x, axes)
    if op == "Squeeze":
        axes = _axes(node, args)
        return np.squeeze(x) if axes is None else np.squeeze(x, axes)
    if op == "Reshape":
        if second is not None:
            target = [int(d) for d in second.reshape(-1)]
        else:  # Reshape-1 (opset < 5): the shape is an attribute
            target = list(attrs["shape"].as_ints())
        allow_zero = attrs.get("allowzero")
        if not (allow_zero is not None and allow_zero.as_int()):
            target = [x.shape[i] if d == 0 else d for i, d in enumerate(target)]
        return x.reshape(target)
    if second is None and op in ("Expand", "CastLike", "Add", "Sub", "Mul"):
        return UNHANDLED
    if op == "Expand":
        assert second is not None
        shape = np.broadcast_shapes(x.shape, tuple(int(d) for d in second.reshape(-1)))
        return np.broadcast_to(x, shape).copy() if _small_shape(shape) else None
    if op == "CastLike":
        assert second is not None
        return x.astype(second.dtype)
    if op == "Cast":
        to = attrs["to"]
        if to.type == ir.AttributeType.STRING:  # Cast-1 (opset < 6): "FLOAT", "INT64", ...
            return x.astype(ir.DataType[to.as_string()].numpy())
        return x.astype(ir.DataType(to.as_int()).numpy())
    if op == "Concat":  # axis was optional (default 1) in Concat-1
        axis = attrs.get_int("axis", 1)
        return np.concatenate([a for a in args if a is not None], axis=axis)
    if op == "ConstantOfShape":
        fill = attrs.get("value")
        value = (
            fill.as_tensor().numpy().reshape(-1) if fill is not None else np.zeros(1, np.float32)
        )
        filled = tuple(int(d) for d in x.reshape(-1))
        return np.full(filled, value[0], dtype=value.dtype) if _small_shape(filled) else None
    if op in ("Add", "Sub", "Mul") and second is not None and x.dtype == second.dtype:
        return {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply}[op](x, second)
    if op == "Neg":
        return -x
    return UNHANDLED


def _run_single(node: ir.Node, names: list[str], feeds: dict[str, np.ndarray]) -> np.ndarray | None:
    """Run one node with onnx's reference evaluator at the node's opset; None if it cannot."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    graph = node.graph
    opset = node.version
    if opset is None and graph is not None:
        opset = graph.opset_imports.get("", graph.opset_imports.get("ai.onnx"))
    if opset is None:
        opset = onnx.defs.onnx_opset_version()
    proto = onnx.helper.make_node(node.op_type, names, ["out"])
    proto.attribute.extend(ir.serde.serialize_attribute(a) for a in node.attributes.values())
    inputs = [
        onnx.helper.make_tensor_value_info(
            n, onnx.helper.np_dtype_to_tensor_dtype(feeds[n].dtype), None
        )
        for n in names
        if n
    ]
    output = onnx.helper.make_tensor_value_info("out", onnx.TensorProto.UNDEFINED, None)
    model = onnx.helper.make_model(
        onnx.helper.make_graph([proto], "eval", inputs, [output]),
        opset_imports=[onnx.helper.make_opsetid("", opset)],
    )
    try:
        (out,) = ReferenceEvaluator(model).run(None, feeds)
    except Exception:
        return None
    return np.asarray(out)
