"""``bnfold.validate``: the graphs it refuses are exactly ones onnxruntime cannot run.

Each invalid model is shown to fail in real onnxruntime (at load or at run) and to be refused by
``bnfold.fold`` (in memory) and ``bnfold inspect`` (from a file) with exit 2; each valid edge case
runs in onnxruntime and is accepted.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
import safety_models as sm
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

import bnfold
from bnfold.cli import app
from bnfold.errors import BadInputError
from bnfold.validate import validate_graph


def ort_runs(model: onnx.ModelProto, channels: int = sm.C) -> bool:
    """Whether onnxruntime loads ``model`` and runs it on zeros (symbolic dims: 1, dim 1:
    ``channels``)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        feeds = {}
        for i in session.get_inputs():
            shape = [
                d if isinstance(d, int) else (channels if k == 1 else 1)
                for k, d in enumerate(i.shape)
            ]
            feeds[i.name] = np.zeros(shape, np.float32)
        session.run(None, feeds)
    except Exception:
        return False
    return True


def _bn_on_input(lengths, x_dims) -> onnx.ModelProto:
    """BN directly on a graph input (no producer to take the channels from)."""
    inits = [
        numpy_helper.from_array(np.full(n, 1.0 + i, np.float32), name)
        for i, (name, n) in enumerate(zip(("g", "b", "m", "v"), lengths, strict=True))
    ]
    graph = helper.make_graph(
        [helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["y"], name="bn")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _with_stale_value_info(dim1: int) -> onnx.ModelProto:
    """Conv (4 channels) -> Relu -> BN, the Relu output annotated with a wrong dim 1."""
    model = sm.conv_bn()
    nodes = list(model.graph.node)
    nodes[1].input[0] = "r"
    relu = helper.make_node("Relu", ["c"], ["r"], name="pre")
    del model.graph.node[:]
    model.graph.node.extend([nodes[0], relu, nodes[1], nodes[2]])
    model.graph.value_info.append(
        helper.make_tensor_value_info("r", TensorProto.FLOAT, [1, dim1, 8, 8])
    )
    return model


def _if_model(branch_bn_lengths=(sm.C,) * 4, branch_reads: str = "c") -> onnx.ModelProto:
    """Conv -> If(cond) whose branches hold BN over the Conv output (an outer value)."""
    model = sm.conv_bn()
    rng = np.random.default_rng(1)

    def branch(tag: str) -> onnx.GraphProto:
        inits = [
            numpy_helper.from_array(rng.uniform(0.5, 1.5, n).astype(np.float32), f"{tag}{p}")
            for p, n in zip(("g", "b", "m", "v"), branch_bn_lengths, strict=True)
        ]
        node = helper.make_node(
            "BatchNormalization",
            [branch_reads, f"{tag}g", f"{tag}b", f"{tag}m", f"{tag}v"],
            [f"{tag}y"],
            name=f"{tag}bn",
        )
        return helper.make_graph(
            [node],
            tag,
            [],
            [helper.make_tensor_value_info(f"{tag}y", TensorProto.FLOAT, None)],
            inits,
        )

    conv = model.graph.node[0]
    cond = helper.make_node(
        "Constant", [], ["cond"], value=helper.make_tensor("t", TensorProto.BOOL, [], [True])
    )
    if_node = helper.make_node(
        "If", ["cond"], ["y"], name="if", then_branch=branch("t_"), else_branch=branch("e_")
    )
    del model.graph.node[:]
    model.graph.node.extend([conv, cond, if_node])
    return model


def _function_model(body_reads: str = "fx") -> onnx.ModelProto:
    """A model-local function Double(fx) = Add(fx, fx) called on the Conv output."""
    function = onnx.helper.make_function(
        "local", "Double", ["fx"], ["fy"],
        [helper.make_node("Add", [body_reads, "fx"], ["fy"])],
        [helper.make_opsetid("", 17)],
    )  # fmt: skip
    model = sm.conv_bn()
    model.graph.node[2].CopyFrom(helper.make_node("Double", ["b"], ["y"], domain="local"))
    model.functions.append(function)
    model.opset_import.append(helper.make_opsetid("local", 1))
    return model


def _if_cycle() -> onnx.ModelProto:
    """Relu reads the If's output while the If's branch reads the Relu's output: a cycle through
    a subgraph."""
    model = _if_model(branch_reads="r")
    model.graph.node.append(helper.make_node("Relu", ["y"], ["r"], name="after"))
    model.graph.output[0].name = "r"
    return model


INVALID = {
    "scale (1,) for 4 channels": lambda: sm.conv_bn((1, sm.C, sm.C, sm.C)),
    "all parameters (1,)": lambda: sm.conv_bn((1, 1, 1, 1)),
    "scale of rank 2": lambda: sm.conv_bn(scale_shape=(1, sm.C)),
    "scale of rank 0": lambda: sm.conv_bn(scale_shape=()),
    "lengths disagree": lambda: sm.conv_bn((sm.C, sm.C, 3, sm.C)),
    "5 values for a 4-channel Conv": lambda: sm.conv_bn((5, 5, 5, 5)),
    "5 values for a 4-channel graph input": lambda: _bn_on_input((5,) * 4, [1, 4, 2, 2]),
    "lengths disagree on a symbolic input": lambda: _bn_on_input((1, 4, 4, 4), [1, "C", 2, 2]),
    "BN in an If branch with 5 values": lambda: _if_model((5,) * 4),
    "If branch reads an undefined value": lambda: _if_model(branch_reads="nowhere"),
    "cycle through an If branch": _if_cycle,
    "function body reads an undefined value": lambda: _function_model("nowhere"),
}

VALID = {
    "the plain model": sm.conv_bn,
    "stale value_info (dim 1 says 5, the Conv makes 4)": lambda: _with_stale_value_info(5),
    "symbolic channels, matching lengths": lambda: _bn_on_input((4,) * 4, [1, "C", 2, 2]),
    "BN in If branches over an outer value": _if_model,
    "a model-local function": _function_model,
}


@pytest.mark.parametrize("name", list(INVALID))
def test_invalid_graph_fails_in_onnxruntime_and_is_refused(tmp_path, name):
    model = INVALID[name]()
    assert not ort_runs(model), "onnxruntime runs it: bnfold must not refuse it"
    with pytest.raises(BadInputError):
        bnfold.fold(model)
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    result = CliRunner().invoke(app, ["inspect", str(path)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"bnfold: error: {path}: "), lines


@pytest.mark.parametrize("name", list(VALID))
def test_valid_edge_case_runs_in_onnxruntime_and_is_accepted(name):
    model = VALID[name]()
    assert ort_runs(model)
    validate_graph(ir.from_proto(model))
    bnfold.fold(model)


def test_spatial_zero_parameters_are_not_channel_vectors():
    """opset 7, spatial=0: parameters are (C, H, W); onnxruntime runs it, bnfold lets it through
    (and the fold refuses it with a reason)."""
    model = sm.conv_bn(opset=7)
    for init in model.graph.initializer[2:]:
        init.CopyFrom(numpy_helper.from_array(np.full((sm.C, 8, 8), 1.0, np.float32), init.name))
    bn = model.graph.node[1]
    bn.attribute.append(helper.make_attribute("spatial", 0))
    assert ort_runs(model)
    result = bnfold.fold(model)
    assert result.report.skipped and "spatial=0" in result.report.skipped[0].reason


def test_messages_name_the_node_and_the_numbers():
    cases = {
        "BatchNormalization 'bn': parameter lengths disagree (scale 1, B 4, mean 4, var 4)": sm.conv_bn(
            (1, 4, 4, 4)
        ),
        "BatchNormalization 'bn': scale has 5 value(s) but the Conv node 'conv' that produces "
        "its input has 4 channels": sm.conv_bn((5, 5, 5, 5)),
        "BatchNormalization 'bn': scale has shape (1, 4); onnxruntime needs a vector of one "
        "value per channel": sm.conv_bn(scale_shape=(1, 4)),
    }
    for message, model in cases.items():
        with pytest.raises(BadInputError) as err:
            validate_graph(ir.from_proto(model), "m.onnx")
        assert str(err.value) == f"m.onnx: {message}"


def test_in_memory_ir_models_are_checked_too():
    """An ir.Model built in code (a duplicate name, a cycle) never reaches the fold."""
    model = ir.from_proto(sm.conv_bn())
    relu = next(n for n in model.graph if n.op_type == "Relu")
    relu.outputs[0].name = "c"  # the Conv's output name
    with pytest.raises(BadInputError, match="the name 'c' is defined twice"):
        bnfold.fold(model)
    model = ir.from_proto(sm.conv_bn())
    conv = next(n for n in model.graph if n.op_type == "Conv")
    conv.replace_input_with(0, model.graph.outputs[0])
    with pytest.raises(BadInputError, match="cycle"):
        bnfold.fold(model)


def test_a_repeated_name_in_a_file_is_named(tmp_path):
    path = sm.duplicate_output(tmp_path)
    result = CliRunner().invoke(app, ["fold", str(path)])
    assert result.exit_code == 2
    assert "the name 'c' is defined twice (again as output of Relu node 'relu')" in result.stderr


def test_validation_reads_no_tensor_data(tmp_path):
    """Shapes only: loading (with every check) maps none of the external tensors."""
    from bnfold.model_io import load_model

    model = load_model(sm.external(tmp_path))
    assert all(
        isinstance(v.const_value, ir.ExternalTensor) and v.const_value.raw is None
        for v in model.graph.initializers.values()
    )
