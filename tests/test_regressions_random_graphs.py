"""One test per bug found by differential testing on about 29,000 random graphs (original and
folded model run by onnxruntime with optimisations off). Each docstring says the bug; every
model here is valid (onnx.checker with full_check) and runs in onnxruntime as it is."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx_helpers import bn_stats, check_fold, reasons

import bnfold

FLOAT = TensorProto.FLOAT


def _const(name: str, array: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(array, name))


def _bn(prefix: str, data: str, out: str, stats: dict[str, np.ndarray]) -> list[onnx.NodeProto]:
    nodes = [_const(f"{prefix}_{k}", v) for k, v in stats.items()]
    return [*nodes, helper.make_node("BatchNormalization", [data, *(f"{prefix}_{k}" for k in stats)], [out])]  # fmt: skip


def _model(
    nodes, inputs, outputs, inits=(), functions=(), domains=(), check=True
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, FLOAT, s) for n, s in outputs],
        [numpy_helper.from_array(v, k) for k, v in dict(inits).items()],
    )  # fmt: skip
    opsets = [helper.make_opsetid("", 17), *(helper.make_opsetid(d, 1) for d in domains)]
    model = helper.make_model(graph, opset_imports=opsets, functions=list(functions))
    if check:
        onnx.checker.check_model(model, full_check=True)
    return model


def _branch_model(rng, main: list[onnx.NodeProto], stats: dict[str, np.ndarray]):
    """``main`` (computing r from x or x4) then If(cond): BN(r) in the then branch, whose
    output is the branch output; x4 in the else branch."""
    c = len(stats["gamma"])
    then = helper.make_graph(
        _bn("t", "r", "tout", stats), "then", [],
        [helper.make_tensor_value_info("tout", FLOAT, [1, c, 5, 5])],
    )  # fmt: skip
    other = helper.make_graph(
        [helper.make_node("Identity", ["x4"], ["eout"])], "else", [],
        [helper.make_tensor_value_info("eout", FLOAT, [1, c, 5, 5])],
    )  # fmt: skip
    return _model(
        [*main, helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)],
        [("x", FLOAT, [1, 3, 5, 5]), ("x4", FLOAT, [1, c, 5, 5]), ("cond", TensorProto.BOOL, [])],
        [("y", [1, c, 5, 5])],
        {"W": rng.normal(0, 0.5, (c, 3, 3, 3)).astype(np.float32)},
    )


@pytest.mark.parametrize("variant", ["relu", "identity", "transpose", "bn", "merge"])
def test_a_branch_output_is_never_taken_over_by_an_outer_value(rng, variant):
    """Bug: Conv (main graph) -> [Relu | Identity | Transpose | BN] (main) -> BN in an If branch
    whose output is the BN's: the folds (through the activation, backward through the path, of
    a chain [BN main, BN branch], the merge) made the branch return a main-graph value, which
    onnx.checker and onnxruntime reject. Fixed in affine._next/_previous (a chain stays in one
    graph) and engine._output_refusal (a graph output is only taken over by a value computed in
    its own graph)."""
    c = 4
    stats = bn_stats(rng, c)
    positive = {**stats, "gamma": np.abs(stats["gamma"]), "beta": np.zeros(c, np.float32),
                "mean": np.zeros(c, np.float32)}  # fmt: skip
    main = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1])]
    if variant == "relu":
        main.append(helper.make_node("Relu", ["c"], ["r"]))
    elif variant == "identity":
        main.append(helper.make_node("Identity", ["c"], ["r"]))
    elif variant == "transpose":
        main.append(helper.make_node("Transpose", ["c"], ["r"], perm=[0, 1, 3, 2]))
    elif variant == "bn":
        main += _bn("m", "c", "r", bn_stats(rng, c))
    else:
        main = _bn("m", "x4", "r", bn_stats(rng, c))
    model = _branch_model(rng, main, positive if variant == "relu" else bn_stats(rng, c))
    for cond in (True, False):
        feeds = {
            "x": rng.normal(0, 1, (1, 3, 5, 5)).astype(np.float32),
            "x4": rng.normal(0, 1, (1, c, 5, 5)).astype(np.float32),
            "cond": np.array(cond),
        }
        _, result = check_fold(model, feeds)
    assert result.report.bn_after >= 1  # the branch BN stays
    if variant in ("identity", "transpose"):
        assert "its output 'tout' is a graph output and the value that would take its place" in (
            reasons(result)
        )


@pytest.mark.parametrize(
    ("attr", "node"),
    [("epsilon", "BatchNormalization"), ("group", "Conv"), ("alpha", "Gemm")],
)
def test_an_attribute_that_refers_to_a_function_attribute_is_refused(rng, attr, node):
    """Bug: BN ``epsilon = @eps``, Conv ``group = @grp`` or Gemm ``alpha = @a`` in a function
    body crashed the fold (TypeError: onnx-ir's RefAttr has no value). Fixed in
    folds.common.attribute: such a fold is refused with the reason."""
    c = 4
    ref = onnx.AttributeProto()
    ref.name, ref.ref_attr_name = attr, "p"
    ref.type = onnx.AttributeProto.INT if attr == "group" else onnx.AttributeProto.FLOAT
    body = [_const(k, v) for k, v in bn_stats(rng, c).items()]
    bn = helper.make_node("BatchNormalization", ["z", *bn_stats(rng, c)], ["y"])
    if node == "Gemm":
        body.append(_const("W", rng.normal(0, 1, (3, c)).astype(np.float32)))
        layer = helper.make_node("Gemm", ["x", "W"], ["z"])
        layer.attribute.append(ref)
        shape, call, out = [2, 3], {"p": 0.5}, [2, c]
    else:
        body.append(_const("W", rng.normal(0, 1, (c, 2, 3, 3)).astype(np.float32)))
        layer = helper.make_node("Conv", ["x", "W"], ["z"])
        if node == "Conv":
            layer.attribute.append(ref)
            call = {"p": 2}
        else:
            layer.attribute.append(helper.make_attribute("group", 2))
            bn.attribute.append(ref)
            call = {"p": 0.7}
        shape, out = [1, 4, 5, 5], [1, c, 3, 3]
    function = helper.make_function(
        "local", "F", ["x"], ["y"], [*body, layer, bn], [helper.make_opsetid("", 17)],
        attributes=["p"],
    )  # fmt: skip
    model = _model(
        [helper.make_node("F", ["x"], ["out"], domain="local", **call)],
        [("x", FLOAT, shape)], [("out", out)], functions=[function], domains=["local"],
    )  # fmt: skip
    feeds = {"x": rng.normal(0, 1, shape).astype(np.float32)}
    _, result = check_fold(model, feeds, expect_folded=0)
    assert f"attribute '{attr}' refers to the function attribute 'p'" in reasons(result)


def test_one_feature_matmul_with_a_scalar_bias(rng):
    """Bug: MatMul with W (K, 1) and an Add of a 0-d constant crashed every fold (IndexError:
    ``c.shape[-1]`` on shape ()). Fixed in matmul.bias_add."""
    model = _model(
        [helper.make_node("MatMul", ["x", "W"], ["mm"]), helper.make_node("Add", ["mm", "c"], ["a"]),
         helper.make_node("Mul", ["a", "two"], ["y"])],
        [("x", FLOAT, [2, 3])], [("y", [2, 1])],
        {"W": rng.normal(0, 1, (3, 1)).astype(np.float32), "c": np.array(0.5, np.float32),
         "two": np.array(2.0, np.float32)},
    )  # fmt: skip
    check_fold(model, {"x": rng.normal(0, 1, (2, 3)).astype(np.float32)}, expect_folded=1)


def _function_model(body, x_shape, out_shape, extra_domains=()):
    function = helper.make_function("local", "F", ["x"], ["y"], body, [helper.make_opsetid("", 17)])
    return _model(
        [helper.make_node("F", ["x"], ["out"], domain="local")],
        [("x", FLOAT, x_shape)], [("out", out_shape)],
        functions=[function], domains=["local", *extra_domains],
    )  # fmt: skip


def test_a_bias_that_raises_the_rank_keeps_it_where_the_rank_is_unknown(rng):
    """Bug: in a function body (ranks unknown to bnfold) a scalar Mul folded into MatMul +
    Add(c of shape (1, 1, M)) wrote the new bias as (M,): the output went from (1, 2, M) to
    (2, M). Fixed in matmul.bias_add: with an unknown rank only a 0-d or 1-D bias is a bias."""
    body = [
        _const("W", rng.normal(0, 1, (3, 4)).astype(np.float32)),
        _const("c", rng.normal(0, 1, (1, 1, 4)).astype(np.float32)),
        _const("two", np.array(2.0, np.float32)),
        helper.make_node("MatMul", ["x", "W"], ["mm"]),
        helper.make_node("Add", ["mm", "c"], ["a"]),
        helper.make_node("Mul", ["a", "two"], ["y"]),
    ]
    model = _function_model(body, [2, 3], [1, 2, 4])
    check_fold(model, {"x": rng.normal(0, 1, (2, 3)).astype(np.float32)})


def test_a_one_value_constant_that_raises_a_scalar_to_rank_1(rng):
    """Bug: in a function body, Squeeze to rank 0 then Add(k of shape (1,)): the (1,) constant
    was read as rank-neutral and folded into the MatMul's bias, so the output lost its axis.
    Fixed in elementwise.constant_axis: with the rank unknown only a 0-d constant is a scalar."""
    body = [
        _const("W", rng.normal(0, 1, (3, 1)).astype(np.float32)),
        _const("b", np.array([0.5], np.float32)),
        _const("axes", np.array([0, 1], np.int64)),
        _const("k", np.array([1.7], np.float32)),
        helper.make_node("MatMul", ["x", "W"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], ["mmb"]),
        helper.make_node("Squeeze", ["mmb", "axes"], ["s"]),
        helper.make_node("Add", ["s", "k"], ["y"]),
    ]
    model = _function_model(body, [1, 3], [1])
    check_fold(model, {"x": rng.normal(0, 1, (1, 3)).astype(np.float32)})


def test_a_matmul_of_a_vector_does_not_become_a_gemm(rng):
    """Bug: a MatMul whose A is 1-D (rank from the ops before it, in a function body) was
    taken to give a rank-2 output and became a Gemm, which needs a rank-2 A. Fixed in
    matmul._rank: a vector A gives a vector."""
    body = [
        _const("W", rng.normal(0, 1, (3, 4)).astype(np.float32)),
        _const("shape", np.array([3], np.int64)),
        _const("k", np.array(0.7, np.float32)),
        helper.make_node("Reshape", ["x", "shape"], ["v"]),
        helper.make_node("MatMul", ["v", "W"], ["mm"]),
        helper.make_node("Sub", ["mm", "k"], ["y"]),
    ]
    model = _function_model(body, [1, 3], [4])
    folded, _ = check_fold(model, {"x": rng.normal(0, 1, (1, 3)).astype(np.float32)})
    assert all(n.op_type != "Gemm" for f in folded.functions for n in f.node)


def test_a_gemm_made_by_a_fold_keeps_its_inferred_shape_for_the_next_fold(rng):
    """Bug: a forward fold that turns a MatMul into a Gemm gave the new output no shape when
    the old one came from bnfold's own inference, so the next fold in the same pass refused
    ("unknown number of channels") and a second fold folded more (not idempotent). Fixed in
    FoldContext.carry_shape."""
    k, m = 5, 3
    s1, s2 = bn_stats(rng, k), bn_stats(rng, m)
    model = _model(
        [helper.make_node("BatchNormalization", ["x", *(f"{n}1" for n in s1)], ["bn"]),
         helper.make_node("MatMul", ["bn", "W"], ["mm"]),
         helper.make_node("Relu", ["mm"], ["r"]),
         helper.make_node("Sub", ["c", "mm"], ["s"]),
         helper.make_node("BatchNormalization", ["s", *(f"{n}2" for n in s2)], ["y"])],
        [("x", FLOAT, [2, k])], [("y", [2, m]), ("r", [2, m])],
        {"W": rng.normal(0, 1, (k, m)).astype(np.float32), "c": rng.normal(0, 1, (1, m)).astype(np.float32),
         **{f"{n}1": v for n, v in s1.items()}, **{f"{n}2": v for n, v in s2.items()}},
    )  # fmt: skip
    _, result = check_fold(model, {"x": rng.normal(0, 1, (2, k)).astype(np.float32)})
    assert [(f.fold, f.direction) for f in result.report.folded] == [
        ("bn+matmul", "forward"), ("bn+sub", "merge"),
    ]  # fmt: skip


@pytest.mark.parametrize("variant", ["forward", "merge"])
def test_a_broadcasting_mul_after_a_scalar_is_not_dropped(rng, variant):
    """Bug: chain [Div by a scalar, Mul by c (1, 3, 1), BN(3)] on a one-channel tensor whose
    shape bnfold does not know: input_refusal checked only the chain's first op (the scalar),
    so the forward fold and the merge dropped the Mul that widened 1 channel to 3. Fixed in
    AffineChain.input_refusal: the first op with an axis decides."""
    nodes = [
        helper.make_node("Gelu", ["x"], ["gx"], domain="com.microsoft"),  # hides the shapes
        helper.make_node("Conv", ["gx", "W1"], ["z"]),
        helper.make_node("Div", ["z", "k"], ["d"]),
        helper.make_node("Mul", ["d", "c"], ["e"]),
        helper.make_node(
            "BatchNormalization", ["e", *bn_stats(rng, 3)], ["bn" if variant == "forward" else "y"]
        ),  # fmt: skip
    ]
    if variant == "forward":
        nodes.append(helper.make_node("Conv", ["bn", "W2"], ["y"]))
    inits = {
        "W1": rng.normal(0, 1, (1, 3, 1)).astype(np.float32),
        "k": np.array(0.5, np.float32),
        "c": rng.uniform(0.5, 2, (1, 3, 1)).astype(np.float32),
        "W2": rng.normal(0, 1, (2, 3, 1)).astype(np.float32),
        **bn_stats(rng, 3),
    }
    model = _model(
        nodes, [("x", FLOAT, [1, 3, 4])], [("y", [1, 2 if variant == "forward" else 3, 4])],
        inits, domains=["com.microsoft"],
    )  # fmt: skip
    _, result = check_fold(model, {"x": rng.normal(0, 1, (1, 3, 4)).astype(np.float32)})
    assert "unknown number of channels" in reasons(result)


def test_an_empty_tensor_on_the_forward_path_is_refused(rng):
    """Bug: MaxPool with a kernel larger than the input gives a zero-size tensor; the trace
    through the Flatten after it crashed (IndexError in np.take). Fixed in trace.remap."""
    model = _model(
        [helper.make_node("BatchNormalization", ["x", *bn_stats(rng, 2)], ["bn"]),
         helper.make_node("MaxPool", ["bn"], ["p"], kernel_shape=[3, 1]),
         helper.make_node("Flatten", ["p"], ["f"]),
         helper.make_node("MatMul", ["f", "W"], ["y"])],
        [("x", FLOAT, [1, 2, 2, 4])], [("y", [1, 3])],
        {**bn_stats(rng, 2), "W": np.zeros((0, 3), np.float32)},
    )  # fmt: skip
    _, result = check_fold(model, {"x": rng.normal(0, 1, (1, 2, 2, 4)).astype(np.float32)})
    assert "through Flatten: the Flatten of (1, 2, 0, 4) to (1, 0): the tensor is empty" in (
        reasons(result)
    )


def test_no_shift_through_an_average_pool_window_past_its_input(rng):
    """Bug (onnxruntime's reading): AveragePool with count_include_pad=1, no pads, a kernel of
    3 on an input of 2: the spec's output is empty, onnxruntime averages one window over the
    whole kernel, so a BN shift moved past it changed onnxruntime's output (error 3.1 of 5.9).
    Fixed in trace._pool: with count_include_pad a window that may reach past the input stops
    the shift."""
    stats = bn_stats(rng, 2)
    stats["beta"] = (rng.normal(0, 1, 2) * 3).astype(np.float32)
    model = _model(
        [helper.make_node("BatchNormalization", ["x", *stats], ["bn"]),
         helper.make_node("AveragePool", ["bn"], ["p"], kernel_shape=[3, 1], strides=[2, 1], count_include_pad=1),
         helper.make_node("Flatten", ["p"], ["f"]),
         helper.make_node("MatMul", ["f", "W"], ["y"])],
        [("x", FLOAT, [1, 2, 2, 3])], [("y", [1, 4])],
        {**stats, "W": rng.normal(0, 1, (6, 4)).astype(np.float32)},
        check=False,  # the spec's shapes (an empty pool output) do not meet W; onnxruntime's do
    )  # fmt: skip
    _, result = check_fold(model, {"x": rng.normal(0, 1, (1, 2, 2, 3)).astype(np.float32)})
    assert "the AveragePool counts padding and its kernel is larger than its input" in (
        reasons(result)
    )


def test_a_model_with_these_bugs_is_never_verified_by_accident(tmp_path, rng):
    """The CLI on the branch-output case: exit 0 and a model onnxruntime loads (it exited 2,
    "onnxruntime cannot load it", blaming the user's valid input)."""
    import subprocess
    import sys

    main = [
        helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Identity", ["c"], ["r"]),
    ]
    model = _branch_model(rng, main, bn_stats(rng, 4))
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    out = tmp_path / "o.onnx"
    result = subprocess.run(
        [sys.executable, "-m", "bnfold", "fold", str(path), "-o", str(out)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    bnfold.fold(out)  # loads and validates


# ----------------------------------------------- found by the review of the fixes above


def test_a_constant_whose_value_is_a_function_attribute(rng):
    """Bug: ``Constant <value = @v>`` in a function body crashed fold, inspect and quantize
    (model_stats.weight_bytes read it as a tensor). Fixed there and in validate/tensor_data:
    a reference has no tensor of its own."""
    ref = onnx.AttributeProto()
    ref.name, ref.ref_attr_name, ref.type = "value", "v", onnx.AttributeProto.TENSOR
    k = helper.make_node("Constant", [], ["k"])
    k.attribute.append(ref)
    body = [
        _const("W", rng.normal(0, 1, (4, 3, 3, 3)).astype(np.float32)),
        helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
        k,
        helper.make_node("Mul", ["c", "k"], ["y"]),
    ]
    function = helper.make_function(
        "local", "F", ["x"], ["y"], body, [helper.make_opsetid("", 17)], attributes=["v"]
    )
    v = numpy_helper.from_array(rng.normal(0, 1, (1, 4, 1, 1)).astype(np.float32))
    model = _model(
        [helper.make_node("F", ["x"], ["out"], domain="local", v=v)],
        [("x", FLOAT, [1, 3, 8, 8])], [("out", [1, 4, 8, 8])],
        functions=[function], domains=["local"],
    )  # fmt: skip
    check_fold(model, {"x": rng.normal(0, 1, (1, 3, 8, 8)).astype(np.float32)}, expect_folded=0)


def test_a_row_bias_folds_where_the_rank_comes_from_the_ops_before(rng):
    """Over-refusal after e55d9c7: Flatten -> MatMul -> Add (1, M) -> BN in a function body
    (no inferred shapes there) was refused, because the bias rule asked the output's rank of
    shape inference only. Fixed in matmul.bias_add: the rank from the ops before (A's)."""
    stats = bn_stats(rng, 6)
    body = [
        _const("W", rng.normal(0, 1, (5, 6)).astype(np.float32)),
        _const("B", rng.normal(0, 1, (1, 6)).astype(np.float32)),
        *(_const(f"q{k}", v) for k, v in stats.items()),
        helper.make_node("Flatten", ["x"], ["f"]),
        helper.make_node("MatMul", ["f", "W"], ["mm"]),
        helper.make_node("Add", ["mm", "B"], ["a"]),
        helper.make_node("BatchNormalization", ["a", *(f"q{k}" for k in stats)], ["y"]),
    ]
    model = _function_model(body, [2, 5], [2, 6])
    check_fold(model, {"x": rng.normal(0, 1, (2, 5)).astype(np.float32)}, expect_folded=1)


@pytest.mark.parametrize(
    ("shape", "pool"),
    [
        ([1, 2, 8, 8], {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
        ([1, 2, 9, 9], {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}),
        ([1, 2, "H", "W"], {"kernel_shape": [2, 2], "strides": [2, 2]}),
    ],
)
def test_a_shift_passes_an_average_pool_that_counts_no_padding(rng, shape, pool):
    """Over-refusal after e55d9c7: with count_include_pad=1 and no pads, a ceil_mode window
    that overhangs the input (onnxruntime, like torch, counts no padding there) and unknown
    spatial dims stopped the shift. Only a kernel larger than a known input does now."""
    stats = bn_stats(rng, 2)
    model = _model(
        [helper.make_node("BatchNormalization", ["x", *stats], ["bn"]),
         helper.make_node("AveragePool", ["bn"], ["p"], count_include_pad=1, **pool),
         helper.make_node("Conv", ["p", "W"], ["y"])],
        [("x", FLOAT, shape)], [("y", None)],
        {**stats, "W": rng.normal(0, 1, (3, 2, 1, 1)).astype(np.float32)},
        check=False,  # the output shape is left to inference
    )  # fmt: skip
    concrete = [8 if isinstance(d, str) else d for d in shape]
    check_fold(model, {"x": rng.normal(0, 1, concrete).astype(np.float32)}, expect_folded=1)
