"""Graph-level behaviour of the fold: where parameters come from, what is refused and why,
subgraphs and functions, names, metadata, legacy IR and opsets, dtypes and bad input."""

from __future__ import annotations

import re

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from onnx_helpers import (
    assert_close,
    bn_stats,
    check_fold,
    checker_ok,
    fold_bytes,
    initializer,
    make_model,
    node_count,
    op_types,
    reasons,
    run,
)

import bnfold

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'
X = "float[2,4,6,6] x"


def conv_params(rng, cout=6, cin=4, bias=True):
    p = {"W": rng.normal(0, 0.5, (cout, cin, 3, 3)).astype(np.float32)}
    if bias:
        p["B"] = rng.normal(0, 0.5, cout).astype(np.float32)
    p.update(bn_stats(rng, cout))
    return p


def feeds_x(rng, shape=(2, 4, 6, 6)):
    return {"x": rng.normal(0, 1, shape).astype(np.float32)}


@pytest.mark.parametrize("affine", [True, False])
def test_conv_add_bn_paddle_pattern(rng, affine):
    """Conv -> Add(per-channel constant) -> BN (Paddle exports the bias this way)."""
    p = conv_params(rng, bias=False)
    p["c"] = rng.normal(0, 1, (1, 6, 1, 1)).astype(np.float32)
    model = make_model(
        f"""{HEADER}
        g ({X}) => (float y) {{
          z = Conv <pads=[1,1,1,1]> (x, W)
          zb = Add (z, c)
          y = BatchNormalization (zb, gamma, beta, mean, var)
        }}""",
        p,
    )
    folded, result = check_fold(model, feeds_x(rng), affine=affine)
    assert op_types(folded) == ["Conv"]
    assert {f.op for f in result.report.folded} == {"Add", "BatchNormalization"}


def test_standalone_mul_folds_only_with_affine(rng):
    p = conv_params(rng)
    p["s"] = rng.uniform(0.5, 2, (6, 1, 1)).astype(np.float32)
    model = make_model(
        f"""{HEADER}
        g ({X}) => (float y) {{
          z = Conv (x, W, B)
          y = Mul (z, s)
        }}""",
        p,
    )
    folded, _ = check_fold(model, feeds_x(rng), expect_folded=1)
    assert op_types(folded) == ["Conv"]
    kept, result = fold_bytes(model.SerializeToString(), affine=False)
    assert op_types(kept) == ["Conv", "Mul"] and not result.report.folded


def test_bn_params_as_constant_nodes_and_identity(rng):
    p = conv_params(rng)
    nodes = [
        helper.make_node("Constant", [], ["gamma_c"], value=numpy_helper.from_array(p["gamma"])),
        helper.make_node("Constant", [], ["beta_c"], value=numpy_helper.from_array(p["beta"])),
        helper.make_node("Identity", ["mean"], ["mean_i"]),
        helper.make_node("Identity", ["mean_i"], ["mean_ii"]),
        helper.make_node("Constant", [], ["w_c"], value=numpy_helper.from_array(p["W"])),
        helper.make_node("Conv", ["x", "w_c", "B"], ["z"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["z", "gamma_c", "beta_c", "mean_ii", "var"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 4, 6, 6])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 6, 6, 6])],
        [numpy_helper.from_array(p[k], k) for k in ("B", "mean", "var")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    folded, _ = check_fold(model, feeds_x(rng), expect_folded=1)
    # the Constant/Identity nodes that fed only the fold are gone
    assert op_types(folded) == ["Conv"]


def test_dynamo_zero_bias_shape_expand_castlike(rng):
    """torch's dynamo exporter (optimize=False) builds a zero Conv bias at run time."""
    p = conv_params(rng, bias=False)
    p["zero"] = np.array(0.0, np.float32)
    model = make_model(
        f"""{HEADER}
        g ({X}) => (float y) {{
          shp = Shape <start=0, end=1> (W)
          zb = Expand (zero, shp)
          b = CastLike (zb, x)
          z = Conv <pads=[1,1,1,1]> (x, W, b)
          y = BatchNormalization (z, gamma, beta, mean, var)
        }}""",
        p,
    )
    folded, _ = check_fold(model, feeds_x(rng), expect_folded=1)
    assert op_types(folded) == ["Conv"]


def test_shared_weight_two_convs(rng):
    """One weight initializer feeds two Conv -> BN chains and a third plain Conv: the original
    tensor is left unchanged, each fold gets its own new initializer, all outputs right."""
    p = conv_params(rng)
    p2 = bn_stats(rng, 6)
    p.update({f"{k}2": v for k, v in p2.items()})
    model = make_model(
        f"""{HEADER}
        g ({X}) => (float y1, float y2, float y3) {{
          z1 = Conv (x, W, B)
          y1 = BatchNormalization (z1, gamma, beta, mean, var)
          z2 = Conv (x, W)
          y2 = BatchNormalization (z2, gamma2, beta2, mean2, var2)
          y3 = Conv (x, W)
        }}""",
        p,
    )
    folded, _ = check_fold(model, feeds_x(rng), expect_folded=2)
    np.testing.assert_array_equal(initializer(folded, "W"), p["W"])
    weights = [n.input[1] for n in folded.graph.node]
    assert weights[2] == "W" and len(set(weights)) == 3
    for name in weights[:2]:
        assert not np.array_equal(initializer(folded, name), p["W"])


def test_shared_weight_both_folded_drops_original(rng):
    p = conv_params(rng)
    p.update({f"{k}2": v for k, v in bn_stats(rng, 6).items()})
    model = make_model(
        f"""{HEADER}
        g ({X}) => (float y1, float y2) {{
          z1 = Conv (x, W, B)
          y1 = BatchNormalization (z1, gamma, beta, mean, var)
          z2 = Conv (x, W, B)
          y2 = BatchNormalization (z2, gamma2, beta2, mean2, var2)
        }}""",
        p,
    )
    folded, _ = check_fold(model, feeds_x(rng), expect_folded=2)
    names = [t.name for t in folded.graph.initializer]
    assert "W" not in names and "B" not in names and len(names) == len(set(names)) == 4


def test_conv_output_with_second_consumer_is_refused(rng):
    p = conv_params(rng)
    model = make_model(
        f"""{HEADER}
        g ({X}) => (float y, float r) {{
          z = Conv (x, W, B)
          y = BatchNormalization (z, gamma, beta, mean, var)
          r = Relu (z)
        }}""",
        p,
    )
    result = bnfold.fold(model.SerializeToString())
    assert not result.report.folded
    assert "also feeds 1 other node(s)" in reasons(result)
    assert "'z'" in reasons(result)


def test_conv_output_that_is_a_graph_output_is_refused(rng):
    model = make_model(
        f"""{HEADER}
        g ({X}) => (float y, float z) {{
          z = Conv (x, W, B)
          y = BatchNormalization (z, gamma, beta, mean, var)
        }}""",
        conv_params(rng),
    )
    result = bnfold.fold(model.SerializeToString())
    assert not result.report.folded and "graph output" in reasons(result)


def test_training_mode_is_refused(rng):
    model = make_model(
        f"""{HEADER}
        g ({X}) => (float[2,6,4,4] y) {{
          z = Conv (x, W, B)
          y, rm, rv = BatchNormalization <training_mode=1> (z, gamma, beta, mean, var)
        }}""",
        conv_params(rng),
    )
    folded, result = fold_bytes(model.SerializeToString())
    assert "training_mode=1" in reasons(result)
    assert op_types(folded) == ["Conv", "BatchNormalization"]


def test_used_optional_outputs_are_refused(rng):
    model = make_model(
        """<ir_version: 8, opset_import: ["" : 9]>
        g (float[2,4,6,6] x) => (float[2,6,4,4] y, float[6] m) {
          z = Conv (x, W, B)
          y, m, v, sm, sv = BatchNormalization (z, gamma, beta, mean, var)
        }""",
        conv_params(rng),
    )
    result = bnfold.fold(model.SerializeToString())
    assert not result.report.folded
    assert "optional output 'm' is used" in reasons(result)


def test_unused_optional_outputs_fold(rng):
    model = make_model(
        """<ir_version: 8, opset_import: ["" : 9]>
        g (float[2,4,6,6] x) => (float[2,6,4,4] y) {
          z = Conv (x, W, B)
          y, m, v, sm, sv = BatchNormalization (z, gamma, beta, mean, var)
        }""",
        conv_params(rng),
    )
    folded, result = fold_bytes(model.SerializeToString())
    assert op_types(folded) == ["Conv"] and len(result.report.folded) == 1
    assert checker_ok(folded)


def _legacy_model(rng, opset, attrs):
    return make_model(
        f"""<ir_version: 3, opset_import: ["" : {opset}]>
        g (float[2,4,6,6] x, float[6,4,3,3] W, float[6] B, float[6] gamma, float[6] beta,
           float[6] mean, float[6] var) => (float y) {{
          z = Conv (x, W, B)
          y = BatchNormalization {attrs} (z, gamma, beta, mean, var)
        }}""",
        conv_params(rng),
    )  # IR 3: the initializers are also graph inputs (they are, by name)


@pytest.mark.parametrize("opset", [7, 8])
def test_old_opsets(rng, opset):
    """opset 7/8 BatchNormalization (spatial=1) folds; IR 3 initializer inputs are noted."""
    model = _legacy_model(rng, opset, "<spatial=1, epsilon=0.001>")
    folded, result = check_fold(model, feeds_x(rng), expect_folded=1)
    assert op_types(folded) == ["Conv"]
    assert result.report.notes


def test_opset6_is_test(rng):
    """opset 6 with is_test=1 folds. onnxruntime has no BatchNormalization-6: the reference is
    the same model at opset 7, which computes the same function."""
    model = _legacy_model(rng, 6, "<is_test=1, epsilon=0.001>")
    folded, result = fold_bytes(model.SerializeToString())
    assert op_types(folded) == ["Conv"] and len(result.report.folded) == 1
    onnx.checker.check_model(onnx.load_from_string(folded), full_check=True)
    same = _legacy_model(np.random.default_rng(0), 7, "<epsilon=0.001>")
    for t_same, t in zip(same.graph.initializer, model.graph.initializer, strict=True):
        t_same.CopyFrom(t)
    feeds = feeds_x(rng)
    assert_close(run(same, feeds)[0], run(folded, feeds)[0], 3e-5, 1e-6)


@pytest.mark.parametrize("opset", [7, 8])
def test_spatial_0_is_refused(rng, opset):
    p = conv_params(rng)
    model = make_model(
        f"""<ir_version: 4, opset_import: ["" : {opset}]>
        g (float[2,4,6,6] x) => (float y) {{
          z = Conv (x, W, B)
          y = BatchNormalization <spatial=0> (z, gamma, beta, mean, var)
        }}""",
        p,
        check=False,
    )
    result = bnfold.fold(model.SerializeToString())
    assert not result.report.folded and "spatial=0" in reasons(result)


def test_opset6_training_is_refused(rng):
    model = make_model(
        """<ir_version: 4, opset_import: ["" : 6]>
        g (float[2,4,6,6] x) => (float y, float[6] m) {
          z = Conv (x, W, B)
          y, m = BatchNormalization <is_test=0> (z, gamma, beta, mean, var)
        }""",
        conv_params(rng),
        check=False,
    )
    result = bnfold.fold(model.SerializeToString())
    assert not result.report.folded and "is_test=0" in reasons(result)


def test_bn_output_graph_output_keeps_name_type_shape(rng):
    p = conv_params(rng)
    model = make_model(
        f"""{HEADER}
        g ({X}) => (float[N,6,H,W] out_bn) {{
          z = Conv <pads=[1,1,1,1]> (x, W, B)
          out_bn = BatchNormalization (z, gamma, beta, mean, var)
        }}""",
        p,
    )
    folded, _ = check_fold(model, feeds_x(rng), expect_folded=1)
    assert folded.graph.output[0] == model.graph.output[0]  # name, elem type, symbolic shape
    assert folded.graph.node[0].output[0] == "out_bn"


def test_bn_output_feeding_two_nodes_and_graph_output(rng):
    p = conv_params(rng)
    model = make_model(
        f"""{HEADER}
        g ({X}) => (float y, float r) {{
          z = Conv (x, W, B)
          y = BatchNormalization (z, gamma, beta, mean, var)
          r = Relu (y)
        }}""",
        p,
    )
    folded, _ = check_fold(model, feeds_x(rng), expect_folded=1)
    assert op_types(folded) == ["Conv", "Relu"]


def test_if_branches(rng):
    p = conv_params(rng)
    p.update({f"{k}2": v for k, v in bn_stats(rng, 6).items()})
    model = make_model(
        f"""{HEADER}
        g ({X}, bool cond) => (float[2,6,4,4] y) {{
          y = If (cond) <
            then_branch = t () => (float[2,6,4,4] ty) {{
              tz = Conv (x, W, B)
              ty = BatchNormalization (tz, gamma, beta, mean, var)
            }},
            else_branch = e () => (float[2,6,4,4] ey) {{
              ez = Conv (x, W)
              ey = BatchNormalization (ez, gamma2, beta2, mean2, var2)
            }}
          >
        }}""",
        p,
    )
    for c in (True, False):
        feeds = {**feeds_x(rng), "cond": np.array(c)}
        folded, result = check_fold(model, feeds, expect_folded=2)
    assert {f.graph for f in result.report.folded} == {"t", "e"}
    assert op_types(folded) == ["If"]
    branches = {a.name: [n.op_type for n in a.g.node] for a in folded.graph.node[0].attribute}
    assert branches == {"then_branch": ["Conv"], "else_branch": ["Conv"]}
    # both branches read new weights of their own, so the main graph's parameters, read by
    # nobody any more, are removed
    assert [t.name for t in folded.graph.initializer] == []
    for attr in folded.graph.node[0].attribute:
        (conv,) = attr.g.node
        assert list(conv.input[1:]) == [t.name for t in attr.g.initializer]


def test_loop_body(rng):
    p = conv_params(rng, cout=4, cin=4)
    model = make_model(
        f"""{HEADER}
        g ({X}, int64 trip) => (float[2,4,6,6] y) {{
          cond = Constant <value = bool {{1}}> ()
          y = Loop (trip, cond, x) <
            body = b (int64 i, bool c_in, float[2,4,6,6] h) => (bool c_out, float[2,4,6,6] h2) {{
              c_out = Identity (c_in)
              z = Conv <pads=[1,1,1,1]> (h, W, B)
              h2 = BatchNormalization (z, gamma, beta, mean, var)
            }}
          >
        }}""",
        p,
    )
    feeds = {**feeds_x(rng), "trip": np.array(3, np.int64)}
    folded, result = check_fold(model, feeds, expect_folded=1)
    assert result.report.folded[0].graph == "b"
    body = folded.graph.node[-1].attribute[0].g
    assert [n.op_type for n in body.node] == ["Identity", "Conv"]


def test_scan_body(rng):
    """A Scan body reads the main graph's parameters; its Conv -> BN folds in the body."""
    p = conv_params(rng, cout=6, cin=4)
    model = make_model(
        f"""{HEADER}
        g (float[3,2,4,6,6] xs) => (float[3,2,6,4,4] ys) {{
          ys = Scan <num_scan_inputs=1, body = b (float[2,4,6,6] xi) => (float[2,6,4,4] yi) {{
              z = Conv (xi, W, B)
              yi = BatchNormalization (z, gamma, beta, mean, var)
            }}> (xs)
        }}""",
        p,
    )
    feeds = {"xs": rng.normal(0, 1, (3, 2, 4, 6, 6)).astype(np.float32)}
    folded, result = check_fold(model, feeds, expect_folded=1)
    assert [(f.graph, f.fold) for f in result.report.folded] == [("b", "conv+bn")]
    (body,) = [a.g for a in folded.graph.node[0].attribute if a.name == "body"]
    assert [n.op_type for n in body.node] == ["Conv"]


def test_model_whose_shape_inference_onnx_rejects(rng):
    """onnx's shape inference rejects the model (MatMul on (1,1,4) -> BN over axis 1, which
    onnxruntime refuses too): bnfold then has no inferred shapes, takes ranks from the ops
    (Gemm: 2) and shapes from the model's value_info (the BN output b, symbolic batch), folds
    what that proves and refuses the rest."""
    p = {**bn_stats(rng, 4), "B": rng.normal(0, 0.5, (36, 5)).astype(np.float32),
         "W2": rng.normal(0, 0.5, (3, 5)).astype(np.float32),
         "c": rng.uniform(0.5, 2, (1, 5)).astype(np.float32),
         "W3": rng.normal(0, 0.5, (4, 5)).astype(np.float32),
         "W4": rng.normal(0, 0.5, (3, 5)).astype(np.float32),
         "s4": np.array([2, 5], np.int64), "c4": rng.uniform(0.5, 2, (1, 5)).astype(np.float32),
         "W5": rng.normal(0, 0.5, (36, 5)).astype(np.float32),
         "s5": np.array([0, -1], np.int64), "W6": rng.normal(0, 0.5, (36, 5)).astype(np.float32),
         **{f"{k}5": v for k, v in bn_stats(rng, 5).items()}}  # fmt: skip
    model = make_model(
        f"""{HEADER}
        g (float[N,4,3,3] x, float[2,3] x2, float[1,1,4] x3, float[2,3] x4, float[2,4,3,3] x5,
           float[N,4,H,W] x6)
          => (float[N,5] y, float[2,5] y2, float[1,1,5] y3, float[2,5] y4, float[2,5] y5,
              float[N,5] y6) {{
          b = BatchNormalization (x, gamma, beta, mean, var)
          f = Flatten (b)
          y = Gemm (f, B)
          g2 = Gemm (x2, W2)
          y2 = Mul (g2, c)
          m3 = MatMul (x3, W3)
          y3 = BatchNormalization (m3, gamma5, beta5, mean5, var5)
          m4 = MatMul (x4, W4)
          r4 = Reshape (m4, s4)
          y4 = Mul (r4, c4)
          b5 = BatchNormalization (x5, gamma, beta, mean, var)
          r5 = Reshape (b5, s5)
          y5 = MatMul (r5, W5)
          b6 = BatchNormalization (x6, gamma, beta, mean, var)
          f6 = Flatten (b6)
          y6 = MatMul (f6, W6)
        }}""",
        p,
        check=False,
    )
    for name, dims in (("b", ["N", 4, 3, 3]), ("b5", [2, 4, 3, 3]), ("b6", ["N", 4, "H", "W"])):
        model.graph.value_info.append(
            helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, dims)
        )
    folded, result = fold_bytes(model.SerializeToString())
    # b5's Reshape target (0, -1) is read by bnfold itself: (2, 36)
    assert [(f.node, f.fold) for f in result.report.folded] == [
        ("BatchNormalization(b)", "bn+gemm"), ("Mul(y2)", "gemm+mul"),
        ("BatchNormalization(b5)", "bn+matmul"),
    ]  # fmt: skip
    assert [s.reason for s in result.report.skipped] == [
        "backward: BN normalises axis 1 but the MatMul features are on the last axis (output "
        "rank 3); forward: its output 'y3' is a graph output",
        "backward: its input 'x6' is a graph input, not a linear layer; forward: through "
        "Flatten: the Flatten of (N, 4, H, W) to (N, ?): the shapes are not static",
    ]
    # the Mul after the Reshape stays: without the MatMul's output shape, the Reshape's channel
    # map is unknown
    assert op_types(folded).count("Mul") == 1 and "Reshape" in op_types(folded)
    # onnxruntime runs what is left once the branch it refuses is cut off, in both models
    keep = {"x", "x2", "x4", "x5", "y", "y2", "y4", "y5"}
    feeds = {"x": rng.normal(0, 1, (3, 4, 3, 3)).astype(np.float32),
             "x2": rng.normal(0, 1, (2, 3)).astype(np.float32),
             "x4": rng.normal(0, 1, (2, 3)).astype(np.float32),
             "x5": rng.normal(0, 1, (2, 4, 3, 3)).astype(np.float32)}  # fmt: skip
    pruned = [_drop_branch(m, keep) for m in (model, onnx.load_from_string(folded))]
    for ref, got in zip(run(pruned[0], feeds), run(pruned[1], feeds), strict=True):
        assert_close(ref, got, 3e-5, 1e-6)


def _drop_branch(model: onnx.ModelProto, keep: set[str]) -> onnx.ModelProto:
    """``model`` with only the graph inputs and outputs in ``keep`` and the nodes they need."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    needed = {o.name for o in graph.output if o.name in keep}
    nodes = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            nodes.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(nodes))
    for field in (graph.input, graph.output):
        kept = [v for v in field if v.name in keep]
        del field[:]
        field.extend(kept)
    return out


FUNCTION_MODEL = """<ir_version: 8, opset_import: ["" : 17, "local" : 1]>
g (float[2,4,6,6] x) => (float[2,6,6,6] y) {
  y = local.ConvBn (x)
}
<domain: "local", opset_import: ["" : 17]>
ConvBn (x) => (y) {
  W = Constant <value = float[6,4,3,3] {WVALS}> ()
  B = Constant <value = float[6] {BVALS}> ()
  gamma = Constant <value = float[6] {GVALS}> ()
  beta = Constant <value = float[6] {BEVALS}> ()
  mean = Constant <value = float[6] {MVALS}> ()
  var = Constant <value = float[6] {VVALS}> ()
  z = Conv <pads=[1,1,1,1]> (x, W, B)
  y = BatchNormalization (z, gamma, beta, mean, var)
}
"""


def _fmt(a):
    return ", ".join(repr(float(v)) for v in np.asarray(a).reshape(-1))


def test_function_body_folds_in_place(rng):
    p = conv_params(rng)
    text = FUNCTION_MODEL
    for key, name in [("WVALS", "W"), ("BVALS", "B"), ("GVALS", "gamma"), ("BEVALS", "beta"),
                      ("MVALS", "mean"), ("VVALS", "var")]:  # fmt: skip
        text = text.replace(key, _fmt(p[name]))
    model = make_model(text)
    folded, result = check_fold(model, feeds_x(rng), expect_folded=1)
    assert [f.name for f in folded.functions] == ["ConvBn"]
    body = [n.op_type for n in folded.functions[0].node]
    assert body.count("Conv") == 1 and "BatchNormalization" not in body
    assert [(n.domain, n.op_type) for n in folded.graph.node] == [("local", "ConvBn")]


def test_function_with_weight_inputs_is_refused(rng):
    p = conv_params(rng)
    model = make_model(
        """<ir_version: 8, opset_import: ["" : 17, "local" : 1]>
        g (float[2,4,6,6] x) => (float[2,6,6,6] y) {
          y = local.ConvBn (x, W, B, gamma, beta, mean, var)
        }
        <domain: "local", opset_import: ["" : 17]>
        ConvBn (x, W, B, gamma, beta, mean, var) => (y) {
          z = Conv <pads=[1,1,1,1]> (x, W, B)
          y = BatchNormalization (z, gamma, beta, mean, var)
        }""",
        p,
    )
    folded, result = fold_bytes(model.SerializeToString())
    assert not result.report.folded
    assert "not a constant" in reasons(result)
    assert node_count(onnx.load_from_string(folded)) == node_count(model)
    assert len(onnx.load_from_string(folded).functions) == 1


def _ir3_model(rng):
    p = conv_params(rng)
    model = make_model(
        """<ir_version: 3, opset_import: ["" : 7]>
        g (float[2,4,6,6] x, float[6,4,3,3] W, float[6] B, float[6] gamma, float[6] beta,
           float[6] mean, float[6] var) => (float y) {
          z = Conv (x, W, B)
          y = BatchNormalization (z, gamma, beta, mean, var)
        }""",
        p,
        check=False,
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def test_ir3_initializers_that_are_inputs(rng):
    model = _ir3_model(rng)
    folded, result = check_fold(model, feeds_x(rng), expect_folded=1)
    onnx.checker.check_model(folded, full_check=True)
    assert any("IR 3" in note for note in result.report.notes)
    inits = {t.name for t in folded.graph.initializer}
    inputs = {i.name for i in folded.graph.input}
    assert inits <= inputs  # IR 3: every initializer is a graph input


def test_ir3_refused_when_initializer_inputs_disallowed(rng):
    model = _ir3_model(rng)
    folded, result = fold_bytes(model.SerializeToString(), allow_initializer_inputs=False)
    assert not result.report.folded
    assert "refused by --refuse-initializer-inputs" in reasons(result)
    assert op_types(folded) == ["Conv", "BatchNormalization"]


def test_ir4_param_that_is_an_input_with_initializer_is_refused(rng):
    """IR >= 4: an initializer that is also a graph input is a default the caller can override."""
    p = conv_params(rng)
    model = make_model(
        f"""{HEADER}
        g ({X}, float[6] var) => (float y) {{
          z = Conv (x, W, B)
          y = BatchNormalization (z, gamma, beta, mean, var)
        }}""",
        p,
    )
    result = bnfold.fold(model.SerializeToString())
    assert not result.report.folded
    assert "'var' is a graph input and can be overridden at run time" in reasons(result)


def test_bf16_conv_folds_structurally_and_numerically(rng):
    """onnxruntime's CPU provider cannot run bfloat16 Conv: check the folded tensors with numpy."""
    bf16 = ml_dtypes.bfloat16
    p = {k: v.astype(bf16) for k, v in conv_params(rng).items()}
    model = make_model(
        """<ir_version: 10, opset_import: ["" : 22]>
        g (bfloat16[2,4,6,6] x) => (bfloat16[2,6,4,4] y) {
          z = Conv (x, W, B)
          y = BatchNormalization <epsilon=0.01> (z, gamma, beta, mean, var)
        }""",
        p,
    )
    folded, result = fold_bytes(model.SerializeToString())
    folded = onnx.load_from_string(folded)
    assert op_types(folded) == ["Conv"] and len(result.report.folded) == 1
    onnx.checker.check_model(folded, full_check=True)
    conv = folded.graph.node[0]
    w = initializer(folded, conv.input[1])
    b = initializer(folded, conv.input[2])
    assert w.dtype == bf16 and b.dtype == bf16
    g, be, m, v = (p[k].astype(np.float64) for k in ("gamma", "beta", "mean", "var"))
    s = g / np.sqrt(v + np.float64(np.float32(0.01)))
    exp_w = (p["W"].astype(np.float64) * s.reshape(-1, 1, 1, 1)).astype(bf16)
    exp_b = (s * (p["B"].astype(np.float64) - m) + be).astype(bf16)
    np.testing.assert_array_equal(w.astype(np.float64), exp_w.astype(np.float64))
    np.testing.assert_array_equal(b.astype(np.float64), exp_b.astype(np.float64))
    # and the folded layer computes BN(Conv(x)) (numpy in float64)
    x = rng.normal(0, 1, (2, 4, 6, 6))

    def conv2d(x, w, b):
        out = np.zeros((2, w.shape[0], 4, 4))
        for i in range(4):
            for j in range(4):
                out[:, :, i, j] = np.einsum("nckl,ockl->no", x[:, :, i : i + 3, j : j + 3], w)
        return out + b.reshape(1, -1, 1, 1)

    ref = conv2d(x, p["W"].astype(np.float64), p["B"].astype(np.float64))
    ref = s.reshape(1, -1, 1, 1) * (ref - m.reshape(1, -1, 1, 1)) + be.reshape(1, -1, 1, 1)
    got = conv2d(x, w.astype(np.float64), b.astype(np.float64))
    assert_close(ref, got, rtol=2e-2, atol=1e-2, what="bf16 fold")


@pytest.mark.parametrize(
    ("param", "value", "message"),
    [
        ("var", np.nan, "var has NaN or Inf"),
        ("var", -1.0, "var + epsilon <= 0 in 1 channel(s)"),
        ("mean", np.inf, "mean has NaN or Inf"),
    ],
)
def test_bad_statistics_raise_naming_the_node(rng, param, value, message):
    p = conv_params(rng)
    p[param][2] = value
    model = make_model(
        f"""{HEADER}
        g ({X}) => (float y) {{
          z = Conv (x, W, B)
          y = BatchNormalization (z, gamma, beta, mean, var)
        }}""",
        p,
    )
    model.graph.node[1].name = "stem_bn"
    pattern = "BatchNormalization 'stem_bn': .*" + re.escape(message)
    with pytest.raises(bnfold.BadInputError, match=pattern):
        bnfold.fold(model.SerializeToString())


def test_new_initializer_names_unique_and_traceable(rng):
    p = conv_params(rng)
    p["bn1/folded_weight"] = np.zeros(3, np.float32)  # the obvious name is taken
    p["bn1/folded_bias"] = np.zeros(3, np.float32)
    model = make_model(
        f"""{HEADER}
        g ({X}) => (float y, float[3] t) {{
          z = Conv (x, W, B)
          y = BatchNormalization (z, gamma, beta, mean, var)
          t = Add (bn1/folded_weight, bn1/folded_bias)
        }}""".replace("bn1/folded_weight", "fw").replace("bn1/folded_bias", "fb"),
        {
            **{k: v for k, v in p.items() if "/" not in k},
            "fw": p["bn1/folded_weight"],
            "fb": p["bn1/folded_bias"],
        },
        check=False,
    )
    # rename the two initializers to the names the fold would choose for node "bn1"
    for t in model.graph.initializer:
        if t.name in ("fw", "fb"):
            t.name = {"fw": "bn1/folded_weight", "fb": "bn1/folded_bias"}[t.name]
    add = model.graph.node[2]
    add.input[:] = ["bn1/folded_weight", "bn1/folded_bias"]
    model.graph.node[1].name = "bn1"
    onnx.checker.check_model(model, full_check=True)
    feeds = feeds_x(rng)
    folded, _ = check_fold(model, feeds, expect_folded=1)
    names = [t.name for t in folded.graph.initializer]
    assert len(names) == len(set(names))
    np.testing.assert_array_equal(initializer(folded, "bn1/folded_weight"), np.zeros(3))
    conv = folded.graph.node[0]
    assert conv.input[1].startswith("bn1/folded_weight") and conv.input[1] != "bn1/folded_weight"
    assert conv.input[2].startswith("bn1/folded_bias") and conv.input[2] != "bn1/folded_bias"
    props = {p.key: p.value for p in conv.metadata_props}
    assert props["bnfold.source"] == "bn1" and props["bnfold.fold"] == "conv+bn"


def test_metadata_producer_doc_strings_kept(rng):
    model = make_model(
        f"""{HEADER}
        g ({X}) => (float y) {{
          z = Conv (x, W, B)
          y = BatchNormalization (z, gamma, beta, mean, var)
        }}""",
        conv_params(rng),
    )
    model.producer_name, model.producer_version = "unit-test", "9.9"
    model.doc_string = "model doc"
    model.graph.doc_string = "graph doc"
    model.model_version = 42
    model.domain = "org.example"
    model.graph.node[0].doc_string = "conv doc"
    helper.set_model_props(model, {"author": "me", "license": "MIT"})
    folded, _ = check_fold(model, feeds_x(rng), expect_folded=1)
    assert (folded.producer_name, folded.producer_version) == ("unit-test", "9.9")
    assert folded.doc_string == "model doc" and folded.graph.doc_string == "graph doc"
    assert folded.model_version == 42 and folded.domain == "org.example"
    assert folded.graph.node[0].doc_string == "conv doc"
    assert {p.key: p.value for p in folded.metadata_props} == {"author": "me", "license": "MIT"}
    assert folded.ir_version == model.ir_version
    assert list(folded.opset_import) == list(model.opset_import)


def test_input_file_bytes_never_change_and_save_is_deterministic(rng, tmp_path):
    model = make_model(
        f"""{HEADER}
        g ({X}) => (float y) {{
          z = Conv (x, W, B)
          y = BatchNormalization (z, gamma, beta, mean, var)
        }}""",
        conv_params(rng),
    )
    src = tmp_path / "m.onnx"
    onnx.save(model, src)
    before = src.read_bytes()
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    bnfold.fold(src).save(a)
    bnfold.fold(src).save(b)
    assert src.read_bytes() == before
    assert a.read_bytes() == b.read_bytes()
    bnfold.fold(a).save(tmp_path / "c.onnx")
    assert (tmp_path / "c.onnx").read_bytes() == a.read_bytes()
    feeds = feeds_x(rng)
    assert_close(run(model, feeds)[0], run(a.read_bytes(), feeds)[0], 3e-5, 1e-6)
    assert checker_ok(a.read_bytes())


def test_model_proto_input_is_not_modified(rng):
    model = make_model(
        f"""{HEADER}
        g ({X}) => (float y) {{
          z = Conv (x, W, B)
          y = BatchNormalization (z, gamma, beta, mean, var)
        }}""",
        conv_params(rng),
    )
    before = model.SerializeToString()
    bnfold.fold(model)
    assert model.SerializeToString() == before
