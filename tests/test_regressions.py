"""One test per bug found while writing the fold tests. Each docstring says the bug."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx_helpers import bn_stats, check_fold, fold_bytes, make_model, reasons

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
            "-",
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


def test_bfloat16_weight_is_rounded_once():
    """Bug: ml_dtypes converts float64 to bfloat16 through float32, so a folded product just
    above a bfloat16 midpoint landed on it in float32 and then tied to even, downwards: the
    weight was rounded twice, not once as documented. Fixed in arithmetic.cast_to (round to
    odd in float32 first), used by _scale_into for ml_dtypes' types."""
    from bnfold.arithmetic import WeightLayout, cast_to, scale_weight

    bf16 = np.dtype(ml_dtypes.bfloat16)
    # bfloat16 has 1.0 and 1.0078125 around 1; 1.00390625 is the midpoint
    scale = np.array([1.00390625 + 2.0**-40, 1.00390625 - 2.0**-40, 1.00390625])
    w = np.ones((3, 1), dtype=bf16)
    got = scale_weight(w, scale, WeightLayout.AXIS0).astype(np.float64).reshape(-1)
    np.testing.assert_array_equal(got, [1.0078125, 1.0, 1.0])  # the exact tie goes to even
    # 2**-133 is bfloat16's smallest subnormal; 2**-134 + 2**-150 is just above half of it
    # (float32 would first round it to 2**-134 exactly, then that tie to 0)
    values = np.array([np.inf, -1e39, 0.0, 2.0**-133, 2.0**-134 + 2.0**-150, -(2.0**-149)])
    np.testing.assert_array_equal(
        cast_to(values, bf16).astype(np.float64), [np.inf, -np.inf, 0, 2.0**-133, 2.0**-133, 0]
    )
    assert np.isnan(cast_to(np.array([np.nan]), bf16).astype(np.float64)[0])


def test_constant_evaluation_of_legacy_op_forms():
    """Bug: the constant evaluator only knew the current forms of some ops: Reshape-1 (shape
    attribute) raised IndexError, Cast-1 (``to`` a string) TypeError, Concat-1 without its
    optional axis KeyError, crashing the fold; and Add/Sub/Mul/Div with ``broadcast=1``
    (opset < 7, B aligned at ``axis``) were broadcast numpy's way: wrong values or a crash.
    Fixed in constants.py (_numpy_eval, _align); an ill-formed constant subgraph now counts
    as not constant instead of raising."""
    import onnx_ir as ir
    from onnx import helper, numpy_helper

    from bnfold.constants import ConstantResolver

    def resolve(node, inits, opset):
        graph = helper.make_graph(
            [node], "g", [], [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
            [numpy_helper.from_array(v, k) for k, v in inits.items()],
        )  # fmt: skip
        model = ir.from_proto(
            helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        )
        return ConstantResolver().array(model.graph.outputs[0])

    a = np.arange(6, dtype=np.float32)
    got = resolve(helper.make_node("Reshape", ["a"], ["y"], shape=[2, 3]), {"a": a}, 4)
    np.testing.assert_array_equal(got, a.reshape(2, 3))
    got = resolve(helper.make_node("Cast", ["a"], ["y"], to="DOUBLE"), {"a": a}, 5)
    assert got.dtype == np.float64
    got = resolve(helper.make_node("Concat", ["b", "b"], ["y"]), {"b": a.reshape(2, 3)}, 3)
    assert got.shape == (2, 6)
    x, c = np.ones((1, 3, 2, 1), np.float32), np.array([10, 20, 30], np.float32)
    for op, fn in (("Add", np.add), ("Sub", np.subtract), ("Mul", np.multiply), ("Div", np.divide)):
        node = helper.make_node(op, ["x", "c"], ["y"], broadcast=1, axis=1)
        got = resolve(node, {"x": x, "c": c}, 6)
        np.testing.assert_allclose(got, fn(x, c.reshape(1, 3, 1, 1)))
    node = helper.make_node("Add", ["b", "c"], ["y"], broadcast=1, axis=0)
    got = resolve(node, {"b": a.reshape(2, 3), "c": np.array([10, 20], np.float32)}, 6)
    np.testing.assert_array_equal(got, a.reshape(2, 3) + [[10], [20]])
    bad = helper.make_node("Reshape", ["a", "s"], ["y"])
    assert resolve(bad, {"a": a, "s": np.array([4, 4], np.int64)}, 13) is None


def test_atomic_writes_get_the_usual_permissions(tmp_path):
    """Bug: atomic_path made its temporary with tempfile.mkstemp (mode 0600) and renamed it
    into place, so reports, plots and checkpoints were readable by their owner only, unlike
    the models bnfold writes. Fixed in atomic._create_temporary (0666 less the umask)."""
    import os

    from bnfold import atomic

    old = os.umask(0o022)
    try:
        atomic.write_text(tmp_path / "report.json", "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "report.json").stat().st_mode & 0o777 == 0o644


def test_inline_save_keeps_tensor_docs_and_reads_in_subgraph_external_data(tmp_path):
    """Bug: model_io.write_inline (``save(..., external_data=False)``) put placeholder tensors
    without the originals' doc_string and metadata_props, so those were lost; and it left
    external initializers of subgraphs (If branches) as references to the *input's* data
    file, relative to the output, which then did not load. Fixed in write_inline: the
    placeholders carry both, and subgraph external tensors are read in."""
    from onnx import helper, numpy_helper

    w = numpy_helper.from_array(np.full((4, 3, 3, 3), 0.1, np.float32), "W")
    w.doc_string = "conv weight"
    w.metadata_props.add(key="k", value="v")
    branches = []
    for tag, scale in (("then", 0.2), ("else", 0.3)):
        inner = numpy_helper.from_array(np.full((4, 3, 3, 3), scale, np.float32), f"W_{tag}")
        branches.append(
            helper.make_graph(
                [helper.make_node("Conv", ["x", f"W_{tag}"], [f"y_{tag}"], pads=[1] * 4)],
                tag,
                [],
                [helper.make_tensor_value_info(f"y_{tag}", 1, [1, 4, 8, 8])],
                [inner],
            )
        )
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "W"], ["c"], pads=[1] * 4),
            helper.make_node("If", ["cond"], ["y"], then_branch=branches[0], else_branch=branches[1]),
        ],
        "g",
        [
            helper.make_tensor_value_info("x", 1, [1, 3, 8, 8]),
            helper.make_tensor_value_info("cond", onnx.TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info(n, 1, [1, 4, 8, 8]) for n in ("c", "y")],
        [w],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    (tmp_path / "in").mkdir()
    src = tmp_path / "in" / "m.onnx"
    onnx.save_model(
        model, src, save_as_external_data=True, location="m.onnx.data", size_threshold=0
    )
    out = tmp_path / "out" / "m.onnx"
    bnfold.fold(src).save(out, external_data=False)
    saved = onnx.load(out, load_external_data=False)
    assert not [t.name for t in saved.graph.initializer if t.external_data]
    for branch in saved.graph.node[-1].attribute:
        assert not [t.name for t in branch.g.initializer if t.external_data], branch.name
    (tensor,) = [t for t in saved.graph.initializer if t.name == "W"]
    assert tensor.doc_string == "conv weight"
    assert {(p.key, p.value) for p in tensor.metadata_props} == {("k", "v")}
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    for cond in (True, False):
        feeds = {"x": x, "cond": np.array(cond)}
        ref = ort.InferenceSession(str(src)).run(None, feeds)
        got = ort.InferenceSession(str(out)).run(None, feeds)
        for a, b in zip(got, ref, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_bfloat16_bias_is_rounded_once():
    """Bug: the folded bias was cast with ``astype`` (ml_dtypes rounds float64 -> bfloat16
    through float32, twice), so a bias just above a bfloat16 midpoint came out one step low.
    gamma 1, var 1, eps 0, mean -2**-40, beta 2**-8 and a Conv bias of 1 fold to exactly
    1 + 2**-8 + 2**-40: nearest bfloat16 1.0078125, double rounding 1.0."""
    from onnx import helper, numpy_helper

    bf16 = np.dtype(ml_dtypes.bfloat16)

    def t(name, values):
        return numpy_helper.from_array(np.asarray(values, dtype=np.float64).astype(bf16), name)

    inits = [
        t("w", np.ones((1, 1, 1, 1))), t("b", [1.0]), t("g", [1.0]), t("beta", [2.0**-8]),
        t("m", [-(2.0**-40)]), t("v", [1.0]),
    ]  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"]),
        helper.make_node("BatchNormalization", ["c", "g", "beta", "m", "v"], ["y"], epsilon=0.0),
    ]
    bf = onnx.TensorProto.BFLOAT16
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", bf, [1, 1, 2, 2])],
        [helper.make_tensor_value_info("y", bf, [1, 1, 2, 2])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)])
    result = bnfold.fold(model)
    assert result.report.bn_folded == 1
    conv = next(n for n in result.model.graph if n.op_type == "Conv")
    bias = conv.inputs[2].const_value.numpy().astype(np.float64)
    np.testing.assert_array_equal(bias, [1.0078125])


@pytest.mark.parametrize(
    ("body", "folded", "skipped"),
    [
        ("b = BatchNormalization (a, gamma, beta, mean, var)\n d = Mul (b, s)\n y = Mul (d, c)",
         ["conv+bn", "conv+mul"], []),
        ("b = Mul (a, c)\n d = Mul (b, s)\n y = BatchNormalization (d, gamma, beta, mean, var)",
         [], ["backward: its input comes from Mul, not a linear layer (Conv, ConvTranspose, Gemm, "
              "MatMul); forward: its output 'y' is a graph output"]),
    ],
    ids=["bn-scalar-axis3", "axis3-scalar-bn"],
)  # fmt: skip
def test_scalar_between_ops_on_different_axes_does_not_join_them(rng, body, folded, skipped):
    """Bug: a chain grew by comparing each node with the one before it only, so a scalar Mul
    between a BN (axis 1, 4 channels) and a Mul along axis 3 (4 values) joined all three, and
    the axis-3 scale was folded into the Conv's output channels: max error 4.3 on outputs of 8."""
    p = {
        "W": rng.normal(0, 0.5, (4, 3, 1, 1)).astype(np.float32),
        **bn_stats(rng, 4),
        "s": np.array(2.0, np.float32),
        "c": rng.uniform(0.5, 2.0, (1, 1, 1, 4)).astype(np.float32),
    }
    model = make_model(
        f"""<ir_version: 8, opset_import: ["" : 17]>
        g (float[2,3,4,4] x) => (float[2,4,4,4] y) {{
          a = Conv (x, W)
          {body}
        }}""",
        p,
    )
    out, result = check_fold(model, {"x": rng.normal(0, 1, (2, 3, 4, 4)).astype(np.float32)})
    assert [f.fold for f in result.report.folded] == folded
    assert [s.reason for s in result.report.skipped] == skipped
    assert [n.op_type for n in out.graph.node].count("Mul") == (1 if folded else 2)


@pytest.mark.parametrize(
    ("body", "x", "y", "fold"),
    [
        ("b = BatchNormalization (x, gamma, beta, mean, var)\n f = Flatten (b)\n y = Gemm (f, W)",
         "float[2,1,3,3] x", "float[2,5] y", "bn+gemm"),
        ("g = Gemm (x, W)\n r = Reshape (g, s)\n y = BatchNormalization (r, gamma, beta, mean, var)",
         "float[2,4] x", "float[2,1,3,3] y", "gemm+bn"),
    ],
    ids=["forward-flatten", "backward-reshape"],
)  # fmt: skip
def test_one_channel_bn_through_a_reshape_folds(rng, body, x, y, fold):
    """Bug (found by the property tests): a one-channel BN through Flatten/Reshape was refused
    ("does not keep the BN channel axis whole"): its channel depends on no axis, and the check
    wanted exactly one. Every element is channel 0 there, and the fold is exact."""
    forward = fold.startswith("bn+")
    p = {"W": rng.normal(0, 0.5, (9, 5) if forward else (4, 9)).astype(np.float32),
         "s": np.array([2, 1, 3, 3], np.int64), **bn_stats(rng, 1)}  # fmt: skip
    model = make_model(
        f"""<ir_version: 8, opset_import: ["" : 17]>
        g ({x}) => ({y}) {{
          {body}
        }}""",
        p,
    )
    shape = (2, 1, 3, 3) if forward else (2, 4)
    _, result = check_fold(model, {"x": rng.normal(0, 1, shape).astype(np.float32)})
    assert [f.fold for f in result.report.folded] == [fold]


# ---------------------------------------------------------------- found by the final review


def test_mul_that_broadcasts_a_smaller_input_is_not_a_per_channel_node(rng):
    """Bug: x (1, 1, 4, 4) -> Mul c (1, 3, 1, 1) -> BN(3) -> Conv(3 -> 2): the Mul widens the
    channel axis, but it was read as a per-channel node, the chain [Mul, BN] folded forward and
    the Conv was left reading the 1-channel x (onnxruntime refused the output; a merge into
    one BN gave a 3-channel BN on a 1-channel input). Fixed in elementwise.read_elementwise (a
    constant with more values than the data has on that axis is not per-channel) and
    AffineChain.input_refusal (forward folds and merges check the chain's input channels)."""
    stats = bn_stats(rng, 3)
    inits = {"c": rng.normal(0, 1, (1, 3, 1, 1)).astype(np.float32),
             "W": rng.normal(0, 0.5, (2, 3, 1, 1)).astype(np.float32), **stats}  # fmt: skip
    feeds = {"x": rng.normal(0, 1, (1, 1, 4, 4)).astype(np.float32)}
    for tail, ops in (("y = Conv (b, W)", ["Mul", "Conv"]), ("y = Relu (b)", None)):
        model = make_model(
            f"""<ir_version: 8, opset_import: ["" : 17]>
            g (float[1,1,4,4] x) => (float y) {{
              m = Mul (x, c)
              b = BatchNormalization (m, gamma, beta, mean, var)
              {tail}
            }}""",
            inits,
        )
        folded, result = check_fold(model, feeds)
        if ops is not None:  # the BN alone folds forward; the Mul stays
            assert [n.op_type for n in folded.graph.node] == ops
        else:
            assert not result.report.folded


def test_ir3_fold_in_a_subgraph_keeps_the_model_valid(rng):
    """Bug: in an IR 3 model the new initializers of a fold inside an If branch stayed in the
    branch without being its inputs ("in initializer but not in graph input"). Fixed in
    engine._new_constant: with IR < 4 new tensors go into the main graph, as graph inputs,
    and the subgraph reads them from the outer scope."""
    from onnx import TensorProto, helper, numpy_helper

    def branch(tag):
        stats = bn_stats(rng, 3)
        inits = [
            numpy_helper.from_array(rng.normal(0, 0.5, (3, 2, 1, 1)).astype(np.float32), f"W{tag}")
        ]
        inits += [numpy_helper.from_array(v, f"{k}{tag}") for k, v in stats.items()]
        nodes = [
            helper.make_node("Conv", ["x", f"W{tag}"], [f"c{tag}"]),
            helper.make_node("BatchNormalization", [f"c{tag}", *(f"{k}{tag}" for k in stats)], [f"y{tag}"]),
        ]  # fmt: skip
        graph = helper.make_graph(
            nodes, f"b{tag}", [], [helper.make_tensor_value_info(f"y{tag}", TensorProto.FLOAT, None)], inits
        )  # fmt: skip
        graph.input.extend(
            helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits
        )  # IR 3: initializers listed as inputs, in subgraphs too
        return graph

    node = helper.make_node("If", ["cond"], ["y"], then_branch=branch("t"), else_branch=branch("e"))
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4]),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 8)], ir_version=3)
    onnx.checker.check_model(model, full_check=True)
    for cond in (True, False):
        feeds = {"x": rng.normal(0, 1, (1, 2, 4, 4)).astype(np.float32), "cond": np.array(cond)}
        check_fold(model, feeds, expect_folded=2)


def test_backward_fold_across_graphs_is_refused(rng):
    """Bug: a main-graph Conv read by a BN inside an If branch whose output is the BN's: the fold
    pointed the branch output at the main-graph value ("Subgraph output is an outer scope value
    being returned directly"). Fixed in backward.find_producer: a layer outside the chain's
    graph is refused."""
    from onnx import TensorProto, helper, numpy_helper

    stats = bn_stats(rng, 3)
    inner = helper.make_graph(
        [helper.make_node("BatchNormalization", ["c", *stats], ["yt"])], "then", [],
        [helper.make_tensor_value_info("yt", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in stats.items()],
    )  # fmt: skip
    zeros = numpy_helper.from_array(np.zeros((1, 3, 4, 4), np.float32), "z")
    other = helper.make_graph(
        [helper.make_node("Constant", [], ["ye"], value=zeros)], "else", [],
        [helper.make_tensor_value_info("ye", TensorProto.FLOAT, None)],
    )  # fmt: skip
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "W"], ["c"], name="conv"),
         helper.make_node("If", ["cond"], ["y"], then_branch=inner, else_branch=other)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4]),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])],
        [numpy_helper.from_array(rng.normal(0, 0.5, (3, 2, 1, 1)).astype(np.float32), "W")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    result = bnfold.fold(model)
    assert not result.report.folded
    assert "backward: the Conv 'conv' is outside the BN's graph" in reasons(result)


def test_bn_in_an_if_inside_a_function_is_folded(rng):
    """Bug: all_graphs left out the subgraphs inside function bodies: a Conv -> BN in an If
    branch inside a model-local function was neither folded nor counted."""
    from onnx import TensorProto, helper, numpy_helper

    stats = bn_stats(rng, 3)

    def const(name, array):
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(array, name))

    def branch(tag, fold):
        body = [
            const(f"w{tag}", rng.normal(0, 0.5, (3, 2, 1, 1)).astype(np.float32)),
            helper.make_node("Conv", ["X", f"w{tag}"], [f"c{tag}"]),
        ]
        out = f"c{tag}"
        if fold:
            body += [const(f"{k}{tag}", v) for k, v in stats.items()]
            body.append(helper.make_node("BatchNormalization", [f"c{tag}", *(f"{k}{tag}" for k in stats)], [f"b{tag}"]))  # fmt: skip
            out = f"b{tag}"
        body.append(helper.make_node("Identity", [out], [f"y{tag}"]))
        return helper.make_graph(body, f"g{tag}", [], [helper.make_tensor_value_info(f"y{tag}", TensorProto.FLOAT, None)])  # fmt: skip

    function = helper.make_function(
        "local", "F", ["X", "C"], ["Y"],
        [helper.make_node("If", ["C"], ["Y"], then_branch=branch("t", True), else_branch=branch("e", False))],
        [helper.make_opsetid("", 17)],
    )  # fmt: skip
    graph = helper.make_graph(
        [helper.make_node("F", ["x", "cond"], ["y"], domain="local")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4]),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])],
    )  # fmt: skip
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
        functions=[function],
    )  # fmt: skip
    for cond in (True, False):
        feeds = {"x": rng.normal(0, 1, (1, 2, 4, 4)).astype(np.float32), "cond": np.array(cond)}
        folded, result = check_fold(model, feeds, expect_folded=1)
    assert result.report.bn_before == 1 and result.report.bn_after == 0
    assert result.report.folded[0].graph == "function F"
