"""Untrusted tensor data (``bnfold.tensor_data``): declared sizes and external-data locations
are checked before anything is read, wherever the tensor sits (initializers of subgraphs,
Constant nodes, functions), in files and in memory."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import safety_models as sm
from onnx import TensorProto, helper, numpy_helper

import bnfold
from bnfold.errors import BadInputError
from bnfold.model_io import load_model
from bnfold.tensor_data import check_tensors


def _constant_model(tensor: TensorProto) -> onnx.ModelProto:
    """x + Constant(tensor)."""
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["k"], value=tensor, name="const"),
            helper.make_node("Add", ["x", "k"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_constant_node_declaring_a_trillion_elements_is_refused_in_memory():
    tensor = TensorProto(name="k", data_type=TensorProto.FLOAT, dims=[10**12], raw_data=b"\0" * 8)
    with pytest.raises(
        BadInputError,
        match=r"tensor 'k' is declared 1000000000000 float32 \(4000000000000 bytes\) but holds 8 bytes",
    ):
        bnfold.fold(_constant_model(tensor))


@pytest.mark.parametrize(
    "field, values",
    [("float_data", [1.0]), ("int32_data", [1]), ("int64_data", [1]), ("double_data", [1.0])],
)
def test_typed_fields_that_hold_too_few_values(field, values):
    dtype = {
        "float_data": TensorProto.FLOAT, "int32_data": TensorProto.INT32,
        "int64_data": TensorProto.INT64, "double_data": TensorProto.DOUBLE,
    }[field]  # fmt: skip
    tensor = TensorProto(name="k", data_type=dtype, dims=[3])
    getattr(tensor, field).extend(values)
    with pytest.raises(BadInputError, match="holds 1 values"):
        check_tensors(ir.from_proto(_constant_model(tensor)))


def test_complete_tensors_of_every_kind_pass():
    tensors = [
        numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "a"),
        helper.make_tensor("b", TensorProto.FLOAT16, [3], [1.0, 2.0, 3.0]),
        helper.make_tensor("c", TensorProto.INT4, [3], [1, 2, 3]),
        helper.make_tensor("d", TensorProto.COMPLEX64, [2], [1 + 2j, 3 + 4j]),
        helper.make_tensor("e", TensorProto.STRING, [2], [b"x", b"y"]),
        helper.make_tensor("f", TensorProto.BOOL, [0], []),
        helper.make_tensor("g", TensorProto.BFLOAT16, [2], [1.0, 2.0]),
    ]
    for tensor in tensors:
        check_tensors(ir.from_proto(_constant_model(tensor)))


def test_negative_dimension_is_refused():
    tensor = TensorProto(name="k", data_type=TensorProto.FLOAT, dims=[-4], raw_data=b"")
    with pytest.raises(BadInputError, match="negative dimension"):
        check_tensors(ir.from_proto(_constant_model(tensor)))


def _if_model_with_branch_initializer(tmp_path, external: bool):
    """An If whose then-branch adds an initializer (saved externally when asked)."""
    w = numpy_helper.from_array(np.arange(256, dtype=np.float32), "branch_w")
    then = helper.make_graph(
        [helper.make_node("Add", ["x", "branch_w"], ["t"])], "then", [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [256])], [w],
    )  # fmt: skip
    other = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["e"])], "else", [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, [256])],
    )  # fmt: skip
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["c"], value=helper.make_tensor("v", TensorProto.BOOL, [], [True])),
            helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [256])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "if.onnx"
    if external:
        onnx.save(model, path, save_as_external_data=True, location="if.data", size_threshold=0)
    else:
        onnx.save(model, path)
    return path


def test_short_external_data_of_a_subgraph_initializer_names_file_and_tensor(tmp_path):
    path = _if_model_with_branch_initializer(tmp_path, external=True)
    load_model(path)  # complete: loads
    with open(tmp_path / "if.data", "r+b") as f:
        f.truncate(512)
    with pytest.raises(BadInputError) as err:
        load_model(path)
    assert str(err.value) == (
        f"{tmp_path}/if.data: file is too short for tensor 'branch_w': 256 float32 needs 1024 "
        "bytes at offset 0, the file holds 512"
    )


def test_external_length_shorter_than_declared(tmp_path):
    path = sm.external(tmp_path)
    model = onnx.load(path, load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "length":
            entry.value = "16"
    onnx.save(model, path)
    with pytest.raises(BadInputError, match="external data length is 16"):
        load_model(path)


def test_offset_past_the_end(tmp_path):
    path = sm.external(tmp_path)
    model = onnx.load(path, load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "offset":
            entry.value = str(1 << 40)
    onnx.save(model, path)
    with pytest.raises(BadInputError, match="too short for tensor 'W'"):
        load_model(path)


def test_data_file_that_is_a_folder(tmp_path):
    path = sm.data_missing(tmp_path)
    (tmp_path / "m.onnx.data").mkdir()
    with pytest.raises(BadInputError, match="not a regular file"):
        load_model(path)


def test_symlink_inside_the_folder_is_allowed(tmp_path):
    """A data file reached through a symlink that stays in the model's folder loads."""
    path = sm.external(tmp_path)
    os.rename(tmp_path / "m.onnx.data", tmp_path / "real.data")
    os.symlink("real.data", tmp_path / "m.onnx.data")
    assert bnfold.fold(path).report.bn_after == 0


def test_checks_read_no_data(tmp_path):
    """A 10^12-element external tensor backed by a sparse file of the right size is accepted
    without reading it (the check is on sizes; nothing is mapped)."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["big"], ["y"])], "g", [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )  # fmt: skip
    big = TensorProto(
        name="big", data_type=TensorProto.FLOAT, dims=[10**9], data_location=TensorProto.EXTERNAL
    )
    for key, value in (("location", "big.data"), ("offset", "0"), ("length", str(4 * 10**9))):
        big.external_data.add(key=key, value=value)
    graph.initializer.append(big)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "big.onnx"
    path.write_bytes(model.SerializeToString())
    with open(tmp_path / "big.data", "wb") as f:
        f.truncate(4 * 10**9)  # sparse: no blocks
    loaded = load_model(path)
    assert loaded.graph.initializers["big"].const_value.raw is None
