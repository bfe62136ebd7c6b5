"""One test per bug found while writing the fold tests. Each docstring says the bug."""

from __future__ import annotations

import numpy as np
import onnx
from onnx_helpers import bn_stats, fold_bytes, make_model, reasons

import bnfold


def test_float64_weight_overflowing_in_float64_is_refused():
    """Bug: ``range_problem`` only counted values finite in float64 but above the dtype's max,
    so a float64 weight whose scaled value overflowed float64 itself (inf) passed the check and
    the fold wrote inf weights. Fixed in arithmetic.range_problem: a value that became
    infinite from a finite original counts as overflow."""
    rng = np.random.default_rng(0)
    stats = bn_stats(rng, 3, np.float64)
    stats["var"] = np.full(3, 1e-200)  # scale ~ 1e100
    weights = rng.normal(0, 1, (4, 3))
    weights[0, 0] = 1e300
    model = make_model(
        """<ir_version: 8, opset_import: ["" : 17]>
        g (double[2,4] a) => (double[2,3] y) {
          z = MatMul (a, W)
          y = BatchNormalization <epsilon=1e-300> (z, gamma, beta, mean, var)
        }""",
        {"W": weights, **stats},
    )
    folded, result = fold_bytes(model.SerializeToString())
    assert not result.report.folded
    assert "overflow" in reasons(result)
    for tensor in onnx.load_from_string(folded).graph.initializer:
        assert np.all(np.isfinite(onnx.numpy_helper.to_array(tensor)))


def test_function_body_fold_is_idempotent():
    """Bug: folding inside a model-local function gave the new Constant outputs a dtype and
    shape; onnx-ir writes those as main-graph value_info named "local::F/<value>" and does not
    read them back, so folding the output again dropped them: not idempotent (bytes changed).
    Fixed in engine._new_constant: function-body Constant outputs get no dtype/shape."""
    rng = np.random.default_rng(1)
    p = {"W": rng.normal(0, 0.5, (2, 1, 1, 1)).astype(np.float32), **bn_stats(rng, 2)}

    def const(name, a):
        dims = ",".join(map(str, a.shape))
        vals = ", ".join(repr(float(v)) for v in a.reshape(-1))
        return f"{name} = Constant <value = float[{dims}] {{{vals}}}> ()"

    body = "\n".join(const(k, v) for k, v in p.items())
    model = make_model(
        f"""<ir_version: 8, opset_import: ["" : 17, "local" : 1]>
        g (float[1,1,3,3] x) => (float[1,2,3,3] y) {{
          y = local.F (x)
        }}
        <domain: "local", opset_import: ["" : 17]>
        F (x) => (y) {{
          {body}
          z = Conv (x, W)
          y = BatchNormalization (z, gamma, beta, mean, var)
        }}"""
    )
    once, result = fold_bytes(model.SerializeToString())
    assert len(result.report.folded) == 1
    twice, _ = fold_bytes(once)
    assert twice == once
    assert not onnx.load_from_string(once).graph.value_info


def test_duplicate_bn_label_names_stay_unique():
    """Guard (no bug found): two unnamed BNs whose labels would collide still get distinct
    initializer names, and the folded names point back at their BN."""
    rng = np.random.default_rng(2)
    p = {"W": rng.normal(0, 0.5, (2, 1, 1, 1)).astype(np.float32), **bn_stats(rng, 2)}
    model = make_model(
        """<ir_version: 8, opset_import: ["" : 17]>
        g (float[1,1,3,3] x) => (float[1,2,3,3] y1, float[1,2,3,3] y2) {
          z1 = Conv (x, W)
          y1 = BatchNormalization (z1, gamma, beta, mean, var)
          z2 = Conv (x, W)
          y2 = BatchNormalization (z2, gamma, beta, mean, var)
        }""",
        p,
    )
    folded = onnx.load_from_string(fold_bytes(model.SerializeToString())[0])
    names = [t.name for t in folded.graph.initializer]
    assert len(names) == len(set(names)) == 4
    assert any("(y1)" in n for n in names) and any("(y2)" in n for n in names)
    assert bnfold.fold(model).report.bn_after == 0


def test_rejected_shape_inference_prints_no_traceback(tmp_path):
    """onnx-ir logged a full traceback on stderr when onnx's shape inference rejected a model
    (MatMul on [1,1,5] -> BN); the fold itself was right. The CLI must stay quiet and refuse."""
    import subprocess
    import sys
    from pathlib import Path

    model = (
        Path(__file__).parent
        / "data"
        / "onnxruntime-fusion"
        / "fuse-matmul-bn-directly-dont-fuse.onnx"
    )
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bnfold",
            "fold",
            str(model),
            "-o",
            str(tmp_path / "o.onnx"),
            "--json",
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    assert "features are on the last axis" in out.stdout


def test_add_before_a_refused_bn_is_left_alone():
    """Conv -> Add(per-channel) -> BN(training_mode=1) with affine=False (BN folds only): the
    Add used to be folded into the Conv on the BN's behalf before the BN was refused, changing
    the graph for nothing. (With the default affine=True the Add is a fold of its own.)"""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(7)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal((1, 4, 1, 1)).astype(np.float32), "c"),
    ]
    stats = bn_stats(rng, 4)
    for name, key in zip(("g", "b", "m", "v"), ("gamma", "beta", "mean", "var"), strict=True):
        inits.append(numpy_helper.from_array(stats[key], name))
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["conv", "c"], ["add"]),
        helper.make_node(
            "BatchNormalization", ["add", "g", "b", "m", "v"], ["y", "rm", "rv"], training_mode=1
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4, 8, 8])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    result = bnfold.fold(model, affine=False)
    assert [s.reason for s in result.report.skipped] == [
        "training_mode=1: the node normalises with batch statistics"
    ]
    assert result.report.folded == []
    assert [n.op_type for n in result.model.graph] == ["Conv", "Add", "BatchNormalization"]


def test_function_fold_counts_the_bn_parameters_it_frees():
    """In a function body the node-count guard ignored the BN's own Constant parameters, so a
    Conv whose weight Constant is shared (two Convs) was refused although folding removes the
    BN and its four parameter Constants and adds two: never more nodes, and exact."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(11)

    def const(name, array):
        return helper.make_node(
            "Constant", [], [name], value=numpy_helper.from_array(array.astype(np.float32), name)
        )

    stats = bn_stats(rng, 4)
    gamma, beta, mean, var = (stats[k] for k in ("gamma", "beta", "mean", "var"))
    body = [
        const("w", rng.standard_normal((4, 4, 3, 3)) * 0.3),
        const("g", gamma), const("b", beta), const("m", mean), const("v", var),
        helper.make_node("Conv", ["X", "w"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "g", "b", "m", "v"], ["bn"]),
        helper.make_node("Conv", ["bn", "w"], ["Y"], pads=[1, 1, 1, 1]),
    ]  # fmt: skip
    function = helper.make_function("local", "F", ["X"], ["Y"], body, [helper.make_opsetid("", 17)])
    graph = helper.make_graph(
        [helper.make_node("F", ["x"], ["y"], domain="local")],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4, 8, 8])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
        functions=[function],
    )
    before = sum(1 for _ in model.functions[0].node)
    result = bnfold.fold(model)
    assert result.report.bn_folded == 1, result.report.skipped
    function_nodes = list(next(iter(result.model.functions.values())))
    assert len(function_nodes) == before - 3  # -BN -4 params +weight +bias
    folded = onnx.load_from_string(fold_bytes(model.SerializeToString())[0])
    import onnxruntime as ort

    x = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ref = ort.InferenceSession(model.SerializeToString(), so).run(None, {"x": x})[0]
    got = ort.InferenceSession(folded.SerializeToString(), so).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))
