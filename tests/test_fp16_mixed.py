"""fp16 models as users make them: onnxconverter-common's convert_float_to_float16 with
keep_io_types=True (fp16 weights and arithmetic inside, fp32 inputs and outputs). Every BN
folds and the default verification passes, with fp16 tolerances because the model computes in
fp16; a broken fold still fails it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from onnx_helpers import bn_stats
from onnxconverter_common import float16

import bnfold
from bnfold.verify import CheckOptions, check_models
from bnfold.verify.precision import compute_precision

ZOO = Path(__file__).resolve().parent.parent / "models" / "zoo"


def _mixed(tmp_path: Path, name: str) -> Path:
    model = float16.convert_float_to_float16(onnx.load(ZOO / f"{name}.onnx"), keep_io_types=True)
    path = tmp_path / f"{name}.fp16.onnx"
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("name", ["digits_cnn", "mlp", "mlp_bn_after_act", "resnet", "mobilenet"])
def test_mixed_fp16_zoo_folds_every_bn_and_verifies_by_default(tmp_path, name):
    path = _mixed(tmp_path, name)
    assert onnx.load(path).graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    out = tmp_path / "folded.onnx"
    result = bnfold.fold_file(path, out, verify=CheckOptions(batch=4))
    assert result.report.bn_after == 0 and result.report.bn_folded == result.report.bn_before
    verify = result.report.verify
    assert verify is not None and verify["passed"] and verify["precision"] == "float16"
    (output,) = verify["outputs"]
    assert output["dtype"] == "float32"
    assert output["tolerance_rule"].startswith("float16 defaults: the model computes in float16")
    assert output["tolerance"]["rtol"] == 1e-2


def test_broken_fold_in_an_fp16_model_still_fails_the_default_check(tmp_path):
    path = _mixed(tmp_path, "digits_cnn")
    folded = bnfold.fold(path)
    good = tmp_path / "good.onnx"
    folded.save(good)
    model = onnx.load(good)
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    for tensor in model.graph.initializer:
        if tensor.name == conv.input[1]:  # one Conv weight 5% off
            w = numpy_helper.to_array(tensor)
            tensor.CopyFrom(numpy_helper.from_array((w * 1.05).astype(w.dtype), tensor.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(model, broken)
    assert check_models(path, good, CheckOptions(batch=4)).passed
    result = check_models(path, broken, CheckOptions(batch=4))
    assert not result.passed
    assert result.outputs[0].stats.max_rel_range > result.outputs[0].tolerance.rtol


def test_explicit_casts_count_as_fp16_compute(rng):
    """Built by hand: fp32 input -> Cast fp16 -> fp16 Conv + BN -> Cast fp32."""
    stats = {k: v.astype(np.float16) for k, v in bn_stats(rng, 4).items()}
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float16), "W")]
    inits += [numpy_helper.from_array(stats[k], k) for k in ("gamma", "beta", "mean", "var")]
    to16, to32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["x"], ["x16"], to=to16),
            helper.make_node("Conv", ["x16", "W"], ["z"]),
            helper.make_node("BatchNormalization", ["z", "gamma", "beta", "mean", "var"], ["b"]),
            helper.make_node("Cast", ["b"], ["y"], to=to32),
        ],
        "g",
        [helper.make_tensor_value_info("x", to32, [2, 3, 6, 6])],
        [helper.make_tensor_value_info("y", to32, [2, 4, 4, 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    precision = compute_precision(model)
    assert precision.dtype == "float16"
    assert precision.evidence == {"Casts to float16": 1, "float16 initializers": 5}
    result = bnfold.fold(model)
    assert result.report.bn_after == 0
    check = check_models(model, onnx_ir_proto(result), CheckOptions())
    assert check.passed and check.outputs[0].rule.startswith("float16 defaults")


def onnx_ir_proto(result) -> onnx.ModelProto:
    import onnx_ir as ir

    return ir.to_proto(result.model)


def test_bf16_weights_set_bf16_tolerances():
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])],
        [helper.make_tensor("w", onnx.TensorProto.BFLOAT16, [1], [1.0])],
    )
    precision = compute_precision(helper.make_model(graph))
    assert precision.dtype == "bfloat16" and precision.lowest("float32") == "bfloat16"
    tol, rule = CheckOptions().tolerance_rule("y", "float32", precision)
    assert (tol.atol, tol.rtol) == (1e-2, 5e-2) and rule.startswith("bfloat16 defaults")
    tol, rule = CheckOptions(atol=0.0, rtol=0.0).tolerance_rule("y", "float32", precision)
    assert (tol.atol, tol.rtol) == (0.0, 0.0) and rule == "--atol/--rtol"
