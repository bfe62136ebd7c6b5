"""check_models on small seeded models with onnxruntime (no mocks)."""

import json

import numpy as np
import onnx
import pytest
from _verify_models import _model, conv_bn_pair, gemm_bn_pair, if_pair, int_bool_pair
from onnx import TensorProto, helper

from bnfold.errors import BadInputError, UsageError
from bnfold.verify import CheckOptions, check_models
from bnfold.verify.inputs import InputInfo, parse_shape, random_feed, resolve_shape


def test_correct_fold_passes_with_every_statistic():
    ref, cand = conv_bn_pair()
    result = check_models(ref, cand)
    assert result.passed
    (out,) = result.outputs
    assert out.name == "y" and len(result.input_sets) == 3
    assert out.stats.max_abs < 1e-4 and out.stats.cosine > 0.999999
    d = json.loads(json.dumps(result.to_dict()))
    for key in (
        "max_abs",
        "max_rel_range",
        "mean_abs",
        "p99_abs",
        "cosine",
        "min_atol",
        "min_rtol",
    ):
        assert key in d["outputs"][0]


@pytest.mark.parametrize("breakage", ["channel", "axis", "bias"])
def test_broken_folds_fail_and_locate_names_the_fold(breakage):
    ref, cand = conv_bn_pair(c_in=4, c_out=4, break_fold=breakage)
    result = check_models(ref, cand, CheckOptions(locate=True))
    assert not result.passed and result.failed_outputs == ["y"]
    div = result.divergence
    assert div is not None and div.tensor == "bn_out"
    assert div.candidate_node.name == "conv1" and div.candidate_node.fold == "conv+bn"
    assert div.candidate_node.source == "bn1"
    assert div.reference_node.op_type == "BatchNormalization"
    assert "conv+bn" in result.to_dict()["locate"]["message"]


def test_accepts_paths_bytes_and_protos(tmp_path):
    ref, cand = conv_bn_pair()
    onnx.save(ref, tmp_path / "ref.onnx")
    result = check_models(tmp_path / "ref.onnx", cand.SerializeToString())
    assert result.passed and result.reference.endswith("ref.onnx")


def test_opt_level_all_lets_ort_fold_bn_itself():
    ref, cand = conv_bn_pair()
    assert check_models(ref, cand, CheckOptions(opt_level="all", samples=1)).passed


def test_symbolic_dims_by_input_or_dim_name_and_unresolved_error():
    ref, cand = gemm_bn_pair(batch="N")
    by_input = check_models(ref, cand, CheckOptions(shapes={"x": (5, 16)}, samples=1))
    by_dim = check_models(ref, cand, CheckOptions(shapes={"N": (7,)}, samples=1))
    assert by_input.outputs[0].shapes == [(5, 8)] and by_dim.outputs[0].shapes == [(7, 8)]
    assert check_models(ref, cand, CheckOptions(batch=2, samples=1)).outputs[0].shapes == [(2, 8)]
    default = check_models(ref, cand)  # a symbolic batch dim runs at 1, and a note says so
    assert default.outputs[0].shapes == [(1, 8)] * 3
    assert any("batch dim 'N' of input 'x' run at 1" in n for n in default.notes)


def test_resolve_shape_checks_fixed_dims():
    info = InputInfo("x", "tensor(float)", ("N", 3))
    assert resolve_shape(info, {"x": (2, 3)}) == (2, 3)
    with pytest.raises(UsageError, match="fixed at 3"):
        resolve_shape(info, {"x": (2, 4)})
    assert parse_shape("x=1x3x224x224") == ("x", (1, 3, 224, 224))
    with pytest.raises(UsageError, match="NAME="):
        parse_shape("1x3")


def test_several_outputs_each_compared_with_its_own_tolerance():
    ref, cand = gemm_bn_pair(scale=1000.0)
    result = check_models(ref, cand, CheckOptions(shapes={"N": (4,)}, per_output={"y": (0.0, 0.0)}))
    by_name = {o.name: o for o in result.outputs}
    assert set(by_name) == {"y", "h"}
    assert by_name["h"].passed and not by_name["y"].passed  # y's error is not exactly 0
    assert by_name["y"].tolerance.atol == 0.0
    assert result.failed_outputs == ["y"]


def test_elementwise_mode_is_stricter_than_range_mode():
    ref, cand = gemm_bn_pair(scale=1000.0)
    rng_opts = CheckOptions(shapes={"N": (32,)}, atol=0.0, rtol=1e-6)
    elem = check_models(
        ref, cand, CheckOptions(shapes={"N": (32,)}, atol=0.0, rtol=1e-6, mode="elementwise")
    )
    y_range = next(o for o in check_models(ref, cand, rng_opts).outputs if o.name == "y")
    y_elem = next(o for o in elem.outputs if o.name == "y")
    assert y_elem.stats.min_rtol >= y_range.stats.min_rtol


def test_int_and_bool_inputs_drawn_in_range():
    ref, cand = int_bool_pair()
    result = check_models(ref, cand, CheckOptions(shapes={"K": (5,)}, int_range=(0, 10)))
    assert result.passed
    count = next(o for o in result.outputs if o.name == "count")
    assert count.dtype == "int64" and count.tolerance.atol == 0.0
    with pytest.raises(BadInputError, match="input set"):  # index 11 is out of range for 11 rows
        check_models(ref, cand, CheckOptions(shapes={"K": (50,)}, int_range=(11, 11)))


def test_real_inputs_from_files_and_folders(tmp_path):
    ref, cand = gemm_bn_pair(batch="N")
    rng = np.random.default_rng(1)
    (tmp_path / "d").mkdir()
    for i in range(2):
        np.savez(tmp_path / "d" / f"s{i}.npz", x=rng.normal(size=(3, 16)).astype(np.float32))
    np.savez(tmp_path / "one.npz", x=rng.normal(size=(2, 16)))  # float64: cast to float32
    result = check_models(
        ref, cand, CheckOptions(samples=0, inputs=[tmp_path / "d", tmp_path / "one.npz"])
    )
    assert result.passed and len(result.input_sets) == 3
    assert result.outputs[0].shapes == [(3, 8), (3, 8), (2, 8)]
    np.savez(tmp_path / "bad.npz", y=np.zeros((2, 16), np.float32))
    with pytest.raises(
        BadInputError, match=r"bad\.npz: missing input\(s\) x; unknown array\(s\) y"
    ):
        check_models(ref, cand, CheckOptions(inputs=[tmp_path / "bad.npz"]))
    np.savez(tmp_path / "rank.npz", x=np.zeros(16, np.float32))
    with pytest.raises(BadInputError, match="rank 1"):
        check_models(ref, cand, CheckOptions(inputs=[tmp_path / "rank.npz"]))
    with pytest.raises(UsageError, match="no input sets"):
        check_models(ref, cand, CheckOptions(samples=0))


def test_if_subgraph_fold_checked_and_broken_branch_caught():
    ref, cand = if_pair()
    opts = CheckOptions(shapes={"N": (3,)}, samples=6)
    assert check_models(ref, cand, opts).passed
    ref, bad = if_pair(broken=True)
    assert not check_models(ref, bad, opts).passed


def test_calibrate_reports_error_as_noise_multiple():
    ref, cand = conv_bn_pair()
    good = check_models(ref, cand, CheckOptions(calibrate=True)).outputs[0].calibration
    assert good is not None and good.noise_floor > 0 and good.error_vs_noise < 100
    _, broken = conv_bn_pair(break_fold="bias")
    bad = check_models(ref, broken, CheckOptions(calibrate=True)).outputs[0].calibration
    assert bad.error_vs_noise > 1e3


def test_mismatched_models_and_unavailable_provider(tmp_path):
    ref, _ = conv_bn_pair()
    with pytest.raises(BadInputError, match="outputs differ: reference has y; candidate has y, h"):
        check_models(ref, gemm_bn_pair()[0])
    with pytest.raises(BadInputError, match="candidate input 'idx'"):
        check_models(ref, int_bool_pair()[0])
    with pytest.raises(BadInputError, match="no such file"):
        check_models(tmp_path / "missing.onnx", ref)
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(BadInputError, match="junk.onnx"):
        check_models(tmp_path / "junk.onnx", ref)
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(UsageError, match="CUDAExecutionProvider is not available"):
            check_models(ref, ref, CheckOptions(provider="cuda"))


@pytest.mark.gpu
def test_cuda_provider_checks_a_fold():
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("no CUDAExecutionProvider")
    ref, cand = conv_bn_pair()
    assert check_models(ref, cand, CheckOptions(provider="cuda")).passed


def test_bnfold_fold_output_passes_check():
    import onnx_ir as ir

    import bnfold

    ref, _ = conv_bn_pair(seed=3)
    folded = ir.to_proto(bnfold.fold(ref).model)
    assert not any(n.op_type == "BatchNormalization" for n in folded.graph.node)
    assert check_models(ref, folded, CheckOptions(calibrate=True)).passed


def _float_in(*nodes, out_type=TensorProto.FLOAT, extra_outputs=()):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", out_type, [2, 3])
    return _model(list(nodes), {}, [x], [y, *extra_outputs])


def test_output_dtype_change_fails():
    """Bug: only a string/number mismatch was a problem, so a candidate whose float32 output
    came back as float64 (or a bool as int) with equal values passed the check."""
    ref = _float_in(helper.make_node("Relu", ["x"], ["y"]))
    cand = _float_in(
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Cast", ["r"], ["y"], to=TensorProto.DOUBLE),
        out_type=TensorProto.DOUBLE,
    )
    result = check_models(ref, cand, CheckOptions(locate=True))
    assert not result.passed
    assert result.outputs[0].problem == "type differs: reference float32, candidate float64"
    assert result.divergence is not None and result.divergence.tensor == "y"


def test_locate_compares_string_tensors_for_equality():
    """Bug: --locate fed every shared tensor to the numeric comparison, which raised a
    ValueError (a traceback) on a string tensor such as a Constant's b"abc"."""
    t = helper.make_tensor_value_info("t", TensorProto.STRING, [1])
    const = helper.make_node(
        "Constant", [], ["t"], value=helper.make_tensor("v", TensorProto.STRING, [1], [b"abc"])
    )
    ref = _float_in(const, helper.make_node("Relu", ["x"], ["y"]), extra_outputs=[t])
    cand = _float_in(const, helper.make_node("Neg", ["x"], ["y"]), extra_outputs=[t])
    result = check_models(ref, cand, CheckOptions(locate=True))
    assert [o.passed for o in result.outputs] == [False, True]
    assert result.divergence is not None and result.divergence.tensor == "y"


def test_int_range_outside_what_can_be_drawn():
    """Bug: an --int-range with no value an unsigned input can hold, or a high end above int64,
    raised numpy's ValueError (a traceback, exit 1) instead of a usage error."""
    rng = np.random.default_rng(0)
    with pytest.raises(UsageError, match="no value fits input 'a'"):
        random_feed(InputInfo("a", "tensor(uint8)", (3,)), (3,), rng, (-5, -1))
    wide = random_feed(InputInfo("a", "tensor(uint64)", (3,)), (3,), rng, (0, 2**64 - 1))
    assert wide.dtype == np.uint64
