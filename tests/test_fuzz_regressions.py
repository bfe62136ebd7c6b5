"""Bugs the fuzzer (``benchmarks/fuzz.py``) found, each as the smallest model that showed it.

Before the fix each one escaped as a Python exception (a traceback, exit 1, which CI reads as
"verification failed") or printed more than one line; now each is a one-line exit-2 error.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import safety_models as sm
from onnx import TensorProto, helper

import bnfold
from bnfold.errors import BadInputError


def _refused(model: onnx.ModelProto, match: str) -> None:
    with pytest.raises(BadInputError, match=match):
        bnfold.fold(model)


def test_tensor_without_a_data_type_in_a_constant():
    """TypeError "Bitwidth not available for ONNX data type: UNDEFINED" (onnx-ir's protocol
    check read nbytes)."""
    model = sm.conv_bn()
    model.graph.node.insert(
        0, helper.make_node("Constant", [], ["k"], value=TensorProto(name="k", dims=[2]))
    )
    _refused(model, "tensor 'k' has no usable data type")


def test_initializer_without_a_data_type():
    model = sm.conv_bn()
    model.graph.initializer[2].data_type = TensorProto.UNDEFINED
    _refused(model, "tensor 'gamma' has no usable data type")


def test_attribute_of_the_wrong_type():
    """TypeError "Attribute 'epsilon' is not of type FLOAT. Actual type: INT" in the fold."""
    model = sm.conv_bn()
    model.graph.node[1].attribute.append(helper.make_attribute("epsilon", 1))
    _refused(model, "attribute 'epsilon' is INT, the operator wants FLOAT")


@pytest.mark.parametrize(
    "value, message",
    [([1, 2], "attribute 'group' is INTS, the operator wants INT"), (None, "'group' has no type")],
    ids=["INTS", "no type"],
)
def test_conv_group_of_the_wrong_type(value, message):
    """TypeError "Attribute 'group' is not of type INT. Actual type: INTS / UNDEFINED"."""
    model = sm.conv_bn()
    if value is None:
        model.graph.node[0].attribute.add(name="group")
    else:
        model.graph.node[0].attribute.append(helper.make_attribute("group", value))
    _refused(model, message)


def test_raw_data_longer_than_declared():
    """ValueError "cannot reshape array of size 32 into shape (16,)" reading a BN parameter."""
    model = sm.conv_bn()
    gamma = model.graph.initializer[2]
    gamma.raw_data = gamma.raw_data * 2
    _refused(model, r"tensor 'gamma' is declared 4 float32 \(16 bytes\) but holds 32 bytes")


def test_nul_byte_in_an_external_data_location(tmp_path):
    """ValueError "embedded null byte" from os.stat."""
    path = sm.external(tmp_path)
    model = onnx.load(path, load_external_data=False)
    model.graph.initializer[0].external_data[0].value = "m.onnx\0.data"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(BadInputError, match="is not a file name"):
        bnfold.fold(path)


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bnfold", *map(str, args)], capture_output=True, text=True
    )


def test_unknown_external_data_key_prints_one_line(tmp_path):
    """onnx-ir warned "Ignoring unknown external data key(s)" on stderr."""
    path = sm.external(tmp_path)
    model = onnx.load(path, load_external_data=False)
    model.graph.initializer[0].external_data.add(key="color", value="blue")
    for entry in model.graph.initializer[2].external_data:
        if entry.key == "offset":
            entry.value = "1000000"  # past the end of the file
    path.write_bytes(model.SerializeToString())
    proc = _cli("inspect", path)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "too short for tensor 'gamma'" in lines[0]


def test_model_that_fails_at_run_time_prints_one_line(tmp_path):
    """onnxruntime logged its own error line before bnfold's (a Conv whose group does not
    divide the input's channels fails only when it runs)."""
    model = sm.conv_bn()
    model.graph.node[0].attribute.append(helper.make_attribute("group", 3))
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    proc = _cli("check", path, path)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and "onnxruntime failed on input set" in lines[0], lines


def _with_invalid_utf8(model: onnx.ModelProto, placeholder: bytes, count: int = 1) -> bytes:
    """``model`` serialized with ``placeholder`` (a text it holds ``count`` times) made
    invalid UTF-8."""
    data = model.SerializeToString()
    assert data.count(placeholder) == count
    return data.replace(placeholder, placeholder[:-1] + b"\xff")


@pytest.mark.parametrize(
    "where, placeholder, field",
    [
        ("node name", b"conv", "model.graph.node[0].name"),
        ("producer", b"bnfold-test", "model.producer_name"),
        ("op type", b"Relu", "model.graph.node[2].op_type"),
    ],
)
def test_text_that_is_not_utf8(tmp_path, where, placeholder, field):
    """onnx-ir handed such names over as bytes: rendering the table, the JSON report or writing
    the model raised (TypeError, NotRenderableError, SerdeError)."""
    model = sm.conv_bn()
    model.producer_name = "bnfold-test"
    path = tmp_path / "m.onnx"
    path.write_bytes(_with_invalid_utf8(model, placeholder))
    proc = _cli("fold", path)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert f"{field} is not valid UTF-8 text" in lines[0]
    with pytest.raises(BadInputError, match="not valid UTF-8"):
        bnfold.fold(onnx.load_from_string(path.read_bytes()))


def test_external_data_location_that_is_not_utf8(tmp_path):
    path = sm.external(tmp_path)
    model = onnx.load(path, load_external_data=False)
    path.write_bytes(_with_invalid_utf8(model, b"m.onnx.data", count=6))
    with pytest.raises(BadInputError, match=r"external_data.'location' is not valid UTF-8"):
        bnfold.fold(path)


def test_conv_bias_that_is_not_a_vector():
    """ValueError "operands could not be broadcast together with shapes (16,) (16,1,3,3)" in
    the fold; onnxruntime refuses it when it runs."""
    from test_safety_validate import ort_runs

    model = sm.conv_bn()
    model.graph.initializer[1].CopyFrom(
        onnx.numpy_helper.from_array(np.zeros((sm.C, 1, 1, 1), np.float32), "Bc")
    )
    assert not ort_runs(model)
    _refused(model, r"Conv node 'conv': bias has shape \(4, 1, 1, 1\), onnxruntime needs \(4,\)")


def test_node_with_too_few_inputs():
    """IndexError in the constant resolver (an Identity with no input feeding BN var)."""
    model = sm.conv_bn()
    model.graph.node.insert(0, helper.make_node("Identity", [], ["v2"], name="id"))
    model.graph.node[2].input[4] = "v2"
    _refused(model, "Identity node 'id': has 0 inputs, Identity takes 1")


def test_node_with_no_outputs():
    """IndexError in the fold (a BN with no output left to rewire)."""
    model = sm.conv_bn()
    del model.graph.node[1].output[:]
    model.graph.node[2].input[0] = "c"
    _refused(model, "BatchNormalization node 'bn': has 0 outputs, BatchNormalization makes 1 to 3")


def test_string_tensor_without_its_strings():
    """ValueError "cannot reshape array of size 0 into shape (8,)": a BN scale typed STRING
    whose bytes sit in raw_data."""
    model = sm.conv_bn()
    model.graph.initializer[2].data_type = TensorProto.STRING
    _refused(model, "tensor 'gamma' is declared 4 string but holds 0 strings")


def test_function_importing_an_impossible_opset(tmp_path):
    """TypeError from onnx.defs.get_schema (an opset of 10^12 does not fit its int)."""
    model = onnx.load(Path(__file__).resolve().parent.parent / "models" / "local_function.onnx")
    model.functions[0].opset_import[0].version = 10**12
    _refused(model, "function 'ConvBn' imports default-domain opset 1000000000000")


def test_value_with_an_untyped_tensor_type():
    """SerdeError writing the folded model ("serialize_type_into with: Tensor(None)");
    onnxruntime: "Invalid tensor data type 0"."""
    from test_safety_validate import ort_runs

    model = sm.conv_bn()
    model.graph.value_info.append(helper.make_tensor_value_info("c", TensorProto.UNDEFINED, None))
    assert not ort_runs(model)
    _refused(model, "value 'c' has a tensor type with no element type")


def test_matmul_whose_operands_cannot_multiply():
    """SerdeError writing the model: MatMul((8,), (32, 16)) -> BN was folded into a Gemm whose
    output had no type; onnxruntime refuses the input at load."""
    from test_safety_validate import ort_runs

    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["v", "w"], ["mm"], name="fc"),
            helper.make_node("BatchNormalization", ["mm", "g", "b", "m", "var"], ["y"], name="bn"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [
            onnx.numpy_helper.from_array(rng.random(8).astype(np.float32), "v"),
            onnx.numpy_helper.from_array(rng.random((32, 16)).astype(np.float32), "w"),
            *(onnx.numpy_helper.from_array(np.ones(16, np.float32), n) for n in "gbm"),
            onnx.numpy_helper.from_array(np.ones(16, np.float32), "var"),
        ],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert not ort_runs(model)
    _refused(model, r"operands of shapes \(8,\) and \(32, 16\) cannot multiply")


def test_function_using_onnx_operators_without_importing_an_opset():
    """IndexError labelling a BatchNormalization with no outputs in a function of a model that
    imports no default-domain opset: the schema check (which counts outputs) was skipped."""
    model = onnx.load(Path(__file__).resolve().parent.parent / "models" / "local_function.onnx")
    for imports in (model.opset_import, model.functions[0].opset_import):
        kept = [o for o in imports if o.domain not in ("", "ai.onnx")]
        del imports[:]
        imports.extend(kept)
    _refused(model, "is an ONNX operator but no default-domain opset is imported")


def test_custom_node_with_an_untyped_attribute_or_no_operator():
    """SerdeError writing the model: "Unsupported attribute type: UNDEFINED"."""
    model = sm.conv_bn()
    model.opset_import.append(helper.make_opsetid("custom", 1))
    model.graph.node.append(helper.make_node("Tag", ["y"], ["t"], domain="custom", name="tag"))
    model.graph.node[-1].attribute.add(name="colour")
    _refused(model, "Tag node 'tag': attribute 'colour' has no type")
    model.graph.node[-1].ClearField("attribute")
    model.graph.node[-1].op_type = ""
    _refused(model, "a node named 'tag' has no operator type")


@pytest.mark.parametrize("x_dims", [[16], None], ids=["graph input", "MatMul of a vector"])
def test_batchnorm_on_a_rank_1_input(x_dims):
    """SerdeError writing the model: BN after MatMul((32,), (32, 16)) was folded into a Gemm
    whose output had no type; onnxruntime refuses the input at load."""
    from test_safety_validate import ort_runs

    rng = np.random.default_rng(0)
    params = [onnx.numpy_helper.from_array(np.ones(16, np.float32), n) for n in "gbmv"]
    if x_dims is None:
        nodes = [helper.make_node("MatMul", ["a", "w"], ["mm"], name="fc")]
        params += [
            onnx.numpy_helper.from_array(rng.random(32).astype(np.float32), "a"),
            onnx.numpy_helper.from_array(rng.random((32, 16)).astype(np.float32), "w"),
        ]
        source, x_dims = "mm", [1]
    else:
        nodes, source = [], "x"
    nodes.append(helper.make_node("BatchNormalization", [source, *"gbmv"], ["y"], name="bn"))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], params,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert not ort_runs(model)
    _refused(model, "BatchNormalization 'bn': its input has rank 1")


def test_initializer_defined_twice():
    """Verification failure (exit 1) on a valid-looking decoder: two initializers named
    'up2.weight'; onnx-ir kept one and onnxruntime ran the other, so the fold of one was checked
    against the other. Now refused at load (exit 2), in the main graph and in subgraphs."""
    model = sm.conv_bn()
    duplicate = onnx.TensorProto()
    duplicate.CopyFrom(model.graph.initializer[0])
    model.graph.initializer.append(duplicate)
    _refused(model, f"main graph: initializer '{duplicate.name}' is defined twice")


def test_initializer_defined_twice_in_a_subgraph():
    inner = helper.make_graph(
        [helper.make_node("Add", ["k", "k"], ["out"])],
        "branch",
        [],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1])],
        [helper.make_tensor("k", TensorProto.FLOAT, [1], [1.0])] * 2,
    )
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=inner, else_branch=inner, name="if")],
        "g",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    _refused(model, "subgraph 'branch' of 'if': initializer 'k' is defined twice")


def test_node_with_two_attributes_of_one_name():
    """Verification failure of a correct fold in a function body: a Constant weight with two
    'value' tensors; onnx-ir kept one, onnxruntime used the other. Refused at load now."""
    model = onnx.load(Path(__file__).resolve().parent.parent / "models" / "local_function.onnx")
    constant = model.functions[0].node[0]
    extra = onnx.AttributeProto()
    extra.CopyFrom(constant.attribute[0])
    constant.attribute.append(extra)
    _refused(model, "function 'ConvBn': node 'Constant' has two attributes 'value'")
