"""The constant evaluator (bnfold.constants): what counts as a constant behind a value, against
numpy, and what does not (run-time data, ops it cannot evaluate, ill-formed subgraphs)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper, numpy_helper

from bnfold.constants import ConstantResolver

A = np.arange(6, dtype=np.float32).reshape(2, 3)


def _graph(nodes, inits, opset=17, inputs=()):
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in inputs],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))


def _resolve(nodes, inits=None, opset=17, inputs=()):
    model = _graph(nodes if isinstance(nodes, list) else [nodes], inits or {}, opset, inputs)
    return ConstantResolver().array(model.graph.outputs[0])


i64 = np.int64


@pytest.mark.parametrize(
    ("node", "inits", "opset", "expected"),
    [
        (helper.make_node("Constant", [], ["y"], value_float=2.5), {}, 17, np.float32(2.5)),
        (helper.make_node("Constant", [], ["y"], value_floats=[1.0, 2.0]), {}, 17,
         np.array([1, 2], np.float32)),
        (helper.make_node("Constant", [], ["y"], value_int=3), {}, 17, np.int64(3)),
        (helper.make_node("Constant", [], ["y"], value_ints=[3, 4]), {}, 17, np.array([3, 4])),
        (helper.make_node("Cast", ["a"], ["y"], to=onnx.TensorProto.DOUBLE), {"a": A}, 17,
         A.astype(np.float64)),
        (helper.make_node("Neg", ["a"], ["y"]), {"a": A}, 17, -A),
        (helper.make_node("Squeeze", ["a"], ["y"]), {"a": A.reshape(1, 2, 1, 3)}, 17, A),
        (helper.make_node("Squeeze", ["a", "ax"], ["y"]), {"a": A.reshape(1, 2, 3),
         "ax": np.array([0], i64)}, 17, A),
        (helper.make_node("Unsqueeze", ["a"], ["y"], axes=[0, 3]), {"a": A}, 11,
         A.reshape(1, 2, 3, 1)),
        (helper.make_node("Unsqueeze", ["a", "ax"], ["y"]), {"a": A, "ax": np.array([-1], i64)},
         17, A.reshape(2, 3, 1)),
        (helper.make_node("ConstantOfShape", ["s"], ["y"]), {"s": np.array([2, 2], i64)}, 17,
         np.zeros((2, 2), np.float32)),
        (helper.make_node("Expand", ["a", "s"], ["y"]), {"a": A[:1], "s": np.array([4, 3], i64)},
         17, np.broadcast_to(A[:1], (4, 3))),
        (helper.make_node("Sqrt", ["a"], ["y"]), {"a": A}, 17, np.sqrt(A)),  # reference evaluator
        (helper.make_node("Slice", ["a", "st", "en", "", "sp"], ["y"]),
         {"a": A, "st": np.array([0, 0], i64), "en": np.array([2, 3], i64),
          "sp": np.array([1, 2], i64)}, 17, A[:, ::2]),
    ],
    ids=["value_float", "value_floats", "value_int", "value_ints", "Cast", "Neg",
         "Squeeze", "Squeeze-axes", "Unsqueeze-11", "Unsqueeze-13", "ConstantOfShape", "Expand",
         "Sqrt", "Slice-no-axes"],
)  # fmt: skip
def test_constant_forms(node, inits, opset, expected):
    got = _resolve(node, inits, opset)
    assert got is not None and got.dtype == np.asarray(expected).dtype
    np.testing.assert_array_equal(got, expected)


def test_shape_of_a_static_value_and_its_slice():
    nodes = [helper.make_node("Shape", ["x"], ["y"], start=1, end=-1)]
    model = helper.make_model(
        helper.make_graph(
            nodes,
            "g",
            [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3, 4, 5])],
            [helper.make_tensor_value_info("y", onnx.TensorProto.INT64, None)],
        ),  # fmt: skip
        opset_imports=[helper.make_opsetid("", 17)],
    )
    got = ConstantResolver().array(ir.from_proto(model).graph.outputs[0])
    np.testing.assert_array_equal(got, [3, 4])


@pytest.mark.parametrize(
    ("nodes", "inits", "inputs"),
    [
        ([helper.make_node("Constant", [], ["y"], value_string="s")], {}, ()),
        ([helper.make_node("Add", ["x", "a"], ["y"])], {"a": A}, ("x",)),  # run-time data
        ([helper.make_node("Concat", ["", "a"], ["y"], axis=0)], {"a": A}, ()),  # missing input
        ([helper.make_node("Add", ["a", ""], ["y"])], {"a": A}, ()),
        ([helper.make_node("Gather", ["a", "i"], ["y"])],  # an index out of range
         {"a": A, "i": np.array([5], i64)}, ()),
        ([helper.make_node("Relu", ["a"], ["y"])], {"a": A}, ()),  # not evaluated
        ([helper.make_node("Identity", ["x"], ["y"])], {}, ("x",)),
    ],
    ids=["string", "run-time", "first-missing", "second-missing", "ill-formed", "Relu",
         "graph-input"],
)  # fmt: skip
def test_not_constant(nodes, inits, inputs):
    assert _resolve(nodes, inits, inputs=inputs) is None


def test_none_and_overridable_initializers():
    resolver = ConstantResolver()
    assert resolver.resolve(None) is None and resolver.array(None) is None
    model = _graph([helper.make_node("Identity", ["a"], ["y"])], {"a": A}, inputs=("a",))
    const = resolver.resolve(model.graph.outputs[0])
    assert const is not None and const.overridable  # an initializer that is also an input
    np.testing.assert_array_equal(const.array, A)
