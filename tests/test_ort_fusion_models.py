"""The eleven onnxruntime fusion test models (tests/data/onnxruntime-fusion, see its README).

Where bnfold departs from onnxruntime's expectation it says why here:
- fuse-matmul-bn-only-reshape / -only-transpose: onnxruntime fuses them, but in both the BN's
  channel axis (axis 1) is a size-1 axis that maps back to the MatMul's *batch* axis, and the
  BN has 5 parameters for that 1 channel: the originals are invalid (onnxruntime cannot run
  them). bnfold folds through Reshape/Transpose only when the channel axis provably maps to the
  MatMul's feature axis, so it refuses these two, saying where the axis went.
- fuse-matmul-bn-non-ignorable-node: an Identity between MatMul and BN. onnxruntime's rule does
  not fold it; bnfold folds through an Identity that feeds only the BN (exact; the Identity goes
  with the BN), since the fold
  interface redesign (issue 7: paddle2onnx writes Conv -> Identity -> Add -> Identity -> BN).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx_helpers import assert_close, checker_ok, fold_bytes, node_count, op_types, reasons, run

import bnfold

FOLDED = {
    # file: (op types after the fold, number of folded nodes)
    "fuse-conv-bn-no-bias.onnx": (["Conv", "Flatten"], 1),
    "fuse-conv-bn-mul-add-unsqueeze.onnx": (["Sub", "Conv", "Flatten"], 3),
    "fuse-conv-bn-mul-add-unsqueeze.negative_axes.onnx": (["Sub", "Conv", "Flatten"], 3),
    "fuse-conv-bn-mul-add-unsqueeze-no-bias.onnx": (["Conv", "Flatten"], 3),
    "fuse-conv-bn-add-mul-float16.onnx": (["Conv", "Add", "Mul"], 1),
    "fuse-matmul-bn-directly.onnx": (["Gemm"], 1),
    "fuse-matmul-bn-with-reshape.onnx": (["Gemm", "Reshape", "Transpose", "Identity"], 1),
    "fuse-matmul-bn-non-ignorable-node.onnx": (["Gemm", "Identity"], 1),
}

REFUSED = {
    "fuse-matmul-bn-directly-dont-fuse.onnx": "BN normalises axis 1 but the MatMul features are "
    "on the last axis (output rank 3)",
    "fuse-matmul-bn-only-reshape.onnx": "the BN has 5 channels, but a single one reaches the "
    "MatMul",
    "fuse-matmul-bn-only-transpose.onnx": "the BN channel axis maps to axis 0 of the MatMul output",
}

TOL = {onnx.TensorProto.FLOAT: (3e-5, 1e-6), onnx.TensorProto.FLOAT16: (1e-2, 1e-3)}


def _feeds(model: onnx.ModelProto, rng) -> dict[str, np.ndarray]:
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        tt = inp.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
        shape = [d.dim_value for d in tt.shape.dim]
        feeds[inp.name] = rng.normal(0, 1, shape).astype(dtype)
    return feeds


def test_all_eleven_models_are_here(data_dir):
    folder = data_dir / "onnxruntime-fusion"
    assert sorted(p.name for p in folder.glob("*.onnx")) == sorted({**FOLDED, **REFUSED})
    assert (folder / "LICENSE").exists() and (folder / "README.md").exists()


@pytest.mark.parametrize("name", sorted(FOLDED))
def test_folded(data_dir, rng, name):
    path = data_dir / "onnxruntime-fusion" / name
    before = path.read_bytes()
    model = onnx.load(path)
    folded, result = fold_bytes(before)
    assert path.read_bytes() == before
    ops, count = FOLDED[name]
    assert op_types(folded) == ops, result.report.summary()
    assert len(result.report.folded) == count
    assert result.report.bn_after == 0
    folded_proto = onnx.load_from_string(folded)
    assert node_count(folded_proto) < node_count(model)
    # not worse: if the input passed the checker, so does the output
    if checker_ok(model):
        onnx.checker.check_model(folded_proto, full_check=True)
    # the graph outputs keep their names and types
    names = [o.name for o in model.graph.output]
    assert [o.name for o in folded_proto.graph.output] == names
    if len(set(names)) == len(names):
        assert list(folded_proto.graph.output) == list(model.graph.output)
    else:
        # the mul-add-unsqueeze files list 'fused_result' twice with two different shapes;
        # onnx-ir loads one value for both (the later shape wins), with or without a fold
        assert [o.type.tensor_type.elem_type for o in folded_proto.graph.output] == [
            o.type.tensor_type.elem_type for o in model.graph.output
        ]
    feeds = _feeds(model, rng)
    elem = model.graph.input[0].type.tensor_type.elem_type
    for ref, got in zip(run(model, feeds), run(folded, feeds), strict=True):
        assert got.dtype == ref.dtype
        assert_close(ref, got, *TOL[elem], what=name)
    again, again_result = fold_bytes(folded)
    assert again == folded and not again_result.report.folded


def test_no_bias_conv_takes_bn_output_name(data_dir):
    folded, _ = fold_bytes(
        (data_dir / "onnxruntime-fusion" / "fuse-conv-bn-no-bias.onnx").read_bytes()
    )
    conv = onnx.load_from_string(folded).graph.node[0]
    assert conv.op_type == "Conv" and conv.output[0] == "conv1/bn_1" and len(conv.input) == 3


def test_float16_stays_float16(data_dir):
    folded, _ = fold_bytes(
        (data_dir / "onnxruntime-fusion" / "fuse-conv-bn-add-mul-float16.onnx").read_bytes()
    )
    model = onnx.load_from_string(folded)
    assert {t.data_type for t in model.graph.initializer} == {onnx.TensorProto.FLOAT16}


def test_ir3_models_note_initializer_inputs(data_dir):
    """The two IR 3 files fail onnx.checker (initializers not listed as inputs); bnfold still
    folds them and does not make them worse."""
    path = data_dir / "onnxruntime-fusion" / "fuse-conv-bn-no-bias.onnx"
    model = onnx.load(path)
    assert model.ir_version == 3 and not checker_ok(model)
    result = bnfold.fold(path)
    assert len(result.report.folded) == 1


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused(data_dir, name):
    path = data_dir / "onnxruntime-fusion" / name
    data = path.read_bytes()
    folded, result = fold_bytes(data)
    assert not result.report.folded
    assert REFUSED[name] in reasons(result), reasons(result)
    assert op_types(folded) == op_types(data)
    assert result.report.bn_after == result.report.bn_before == 1
