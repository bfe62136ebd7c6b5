"""Forward folds (BN into the layers after it), folds through activations and shape-only ops,
several consumers, BN -> BN merges. Every fold is checked under onnxruntime with optimisations
off (range-scaled tolerance), for node count, onnx.checker, idempotency and determinism
(onnx_helpers.check_fold); every refusal asserts its reason."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from onnx_helpers import (
    bn_stats,
    check_fold,
    fold_bytes,
    initializer,
    make_model,
    op_types,
    reasons,
)

import bnfold

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'


def _w(rng, *shape):
    return rng.normal(0, 0.5, shape).astype(np.float32)


def _x(rng, *shape):
    return rng.normal(0, 1, shape).astype(np.float32)


def _positive(stats):
    stats["gamma"] = np.abs(stats["gamma"])
    return stats


def _directions(result):
    return [f.direction for f in result.report.folded]


# ---------------------------------------------------------------- forward into Gemm / MatMul


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize(("alpha", "beta"), [(1.0, 1.0), (0.5, 2.0)])
@pytest.mark.parametrize("c_shape", [None, (), (5,), (1, 5)])
def test_bn_into_gemm(rng, trans_b, alpha, beta, c_shape):
    p = {"B": _w(rng, *((5, 6) if trans_b else (6, 5))), **bn_stats(rng, 6)}
    args = "b, B"
    if c_shape is not None:
        p["C"] = rng.normal(0, 1, c_shape).astype(np.float32)
        args += ", C"
    model = make_model(
        f"""{HEADER}
        g (float[3,6] x) => (float y) {{
          b = BatchNormalization (x, gamma, beta, mean, var)
          y = Gemm <transB={trans_b}, alpha={alpha}, beta={beta}> ({args})
        }}""",
        p,
    )
    folded, result = check_fold(model, {"x": _x(rng, 3, 6)}, expect_folded=1)
    assert op_types(folded) == ["Gemm"]
    assert result.report.folded[0].fold == "bn+gemm"
    assert _directions(result) == ["forward"]
    s = np.abs(p["gamma"].astype(np.float64) / np.sqrt(p["var"].astype(np.float64) + 1e-5))
    spread = result.report.folded[0].details["scale_spread"]
    assert spread == pytest.approx(s.max() / np.median(s), rel=1e-12)


def test_bn_into_gemm_trans_a_refused(rng):
    p = {"B": _w(rng, 3, 5), **bn_stats(rng, 6)}
    model = make_model(
        f"""{HEADER}
        g (float[3,6] x) => (float y) {{
          b = BatchNormalization (x, gamma, beta, mean, var)
          y = Gemm <transA=1> (b, B)
        }}""",
        p,
    )
    result = bnfold.fold(model)
    assert not result.report.folded
    assert "transA=1: the BN channels become its output rows" in reasons(result)


def test_bn_into_bare_matmul_becomes_gemm(rng):
    model = make_model(
        f"""{HEADER}
        g (float[4,6] x) => (float y) {{
          b = BatchNormalization (x, gamma, beta, mean, var)
          y = MatMul (b, W)
        }}""",
        {"W": _w(rng, 6, 3), **bn_stats(rng, 6)},
    )
    folded, result = check_fold(model, {"x": _x(rng, 4, 6)}, expect_folded=1)
    assert op_types(folded) == ["Gemm"] and result.report.folded[0].fold == "bn+matmul"


def test_bn_into_matmul_with_bias_add(rng):
    model = make_model(
        f"""{HEADER}
        g (float[4,6] x) => (float y) {{
          b = BatchNormalization (x, gamma, beta, mean, var)
          z = MatMul (b, W)
          y = Add (z, c)
        }}""",
        {"W": _w(rng, 6, 3), "c": _x(rng, 3), **bn_stats(rng, 6)},
    )
    folded, _ = check_fold(model, {"x": _x(rng, 4, 6)}, expect_folded=1)
    assert op_types(folded) == ["MatMul", "Add"]


def test_bn1d_transpose_matmul_add(rng):
    """(N, C, L) -> BatchNorm1d -> Transpose to (N, L, C) -> MatMul contracts C: exact."""
    model = make_model(
        f"""{HEADER}
        g (float[2,6,5] x) => (float y) {{
          b = BatchNormalization (x, gamma, beta, mean, var)
          t = Transpose <perm=[0,2,1]> (b)
          z = MatMul (t, W)
          y = Add (z, c)
        }}""",
        {"W": _w(rng, 6, 3), "c": _x(rng, 3), **bn_stats(rng, 6)},
    )
    folded, _ = check_fold(model, {"x": _x(rng, 2, 6, 5)}, expect_folded=1)
    assert op_types(folded) == ["Transpose", "MatMul", "Add"]


def test_rank3_matmul_without_bias_refused(rng):
    model = make_model(
        f"""{HEADER}
        g (float[2,6,5] x) => (float y) {{
          b = BatchNormalization (x, gamma, beta, mean, var)
          t = Transpose <perm=[0,2,1]> (b)
          y = MatMul (t, W)
        }}""",
        {"W": _w(rng, 6, 3), **bn_stats(rng, 6)},
    )
    result = bnfold.fold(model)
    assert not result.report.folded
    assert "has no bias to take the shift (its input is not rank 2)" in reasons(result)


def test_bn1d_into_matmul_on_the_wrong_axis_refused(rng):
    """BN normalises axis 1 of (N, C, L); a MatMul contracts L."""
    model = make_model(
        f"""{HEADER}
        g (float[2,6,5] x) => (float y) {{
          b = BatchNormalization (x, gamma, beta, mean, var)
          y = MatMul (b, W)
        }}""",
        {"W": _w(rng, 5, 3), **bn_stats(rng, 6)},
    )
    result = bnfold.fold(model)
    assert not result.report.folded
    assert "but it contracts the last axis (input rank 3)" in reasons(result)


# ---------------------------------------------------------------- forward into Conv

CONV_CASES = {
    # name: (attributes, weight shape for 4 input channels, x shape)
    "1x1": ("", (5, 4, 1, 1), (2, 4, 6, 6)),
    "3x3 valid stride 2 dilation 2": ("strides=[2,2], dilations=[2,2]", (5, 4, 3, 3), (2, 4, 9, 9)),
    "auto_pad VALID": ('auto_pad="VALID"', (5, 4, 3, 3), (2, 4, 6, 6)),
    "1x1 SAME_UPPER": ('auto_pad="SAME_UPPER", strides=[2,2]', (5, 4, 1, 1), (2, 4, 7, 7)),
    "group 2": ("group=2", (6, 2, 3, 3), (2, 4, 6, 6)),
    "depthwise x2": ("group=4", (8, 1, 3, 3), (2, 4, 6, 6)),
    "conv1d": ("", (5, 4, 3), (2, 4, 9)),
    "conv3d": ("", (5, 4, 1, 2, 2), (2, 4, 3, 4, 4)),
}


@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_bn_into_unpadded_conv(rng, case):
    attrs, w_shape, x_shape = CONV_CASES[case]
    model = make_model(
        f"""{HEADER}
        g (float[{",".join(map(str, x_shape))}] x) => (float y) {{
          b = BatchNormalization (x, gamma, beta, mean, var)
          y = Conv <{attrs}> (b, W, B)
        }}""".replace("<>", ""),
        {"W": _w(rng, *w_shape), "B": _x(rng, w_shape[0]), **bn_stats(rng, 4)},
    )
    folded, result = check_fold(model, {"x": _x(rng, *x_shape)}, expect_folded=1)
    assert op_types(folded) == ["Conv"] and result.report.folded[0].fold == "bn+conv"


@pytest.mark.parametrize(
    ("attrs", "reason"),
    [
        ("pads=[1,1,1,1]", "pads its input (pads [1, 1, 1, 1])"),
        ("pads=[0,1,0,0]", "pads its input (pads [0, 1, 0, 0])"),
        ('auto_pad="SAME_UPPER"', "pads its input (auto_pad SAME_UPPER)"),
    ],
)
def test_bn_into_padded_conv_refused(rng, attrs, reason):
    model = make_model(
        f"""{HEADER}
        g (float[2,4,6,6] x) => (float y) {{
          b = BatchNormalization (x, gamma, beta, mean, var)
          y = Conv <{attrs}> (b, W)
        }}""",
        {"W": _w(rng, 5, 4, 3, 3), **bn_stats(rng, 4)},
    )
    folded, result = fold_bytes(model.SerializeToString())
    assert not result.report.folded and op_types(folded) == ["BatchNormalization", "Conv"]
    assert reason in reasons(result)
    assert "border outputs would see zeros where the BN gives its shift" in reasons(result)
    assert "backward: its input 'x' is a graph input" in reasons(result)


def test_shift_free_bn_folds_into_padded_conv(rng):
    """The scale alone commutes with zero padding (t = beta - s * mean = 0)."""
    stats = bn_stats(rng, 4)
    stats["mean"] = np.zeros(4, np.float32)
    stats["beta"] = np.zeros(4, np.float32)
    model = make_model(
        f"""{HEADER}
        g (float[2,4,6,6] x) => (float y) {{
          b = BatchNormalization (x, gamma, beta, mean, var)
          y = Conv <pads=[1,1,1,1]> (b, W)
        }}""",
        {"W": _w(rng, 5, 4, 3, 3), **stats},
    )
    folded, _ = check_fold(model, {"x": _x(rng, 2, 4, 6, 6)}, expect_folded=1)
    assert op_types(folded) == ["Conv"]


def test_shift_into_conv_transpose_refused_scale_alone_folds(rng):
    p = {"W": _w(rng, 4, 3, 3, 3), **bn_stats(rng, 4)}
    text = f"""{HEADER}
        g (float[2,4,5,5] x) => (float y) {{
          b = BatchNormalization (x, gamma, beta, mean, var)
          y = ConvTranspose <strides=[2,2]> (b, W)
        }}"""
    result = bnfold.fold(make_model(text, p))
    assert "spreads a constant input unevenly over its output" in reasons(result)
    p["mean"], p["beta"] = np.zeros(4, np.float32), np.zeros(4, np.float32)
    folded, _ = check_fold(make_model(text, p), {"x": _x(rng, 2, 4, 5, 5)}, expect_folded=1)
    assert op_types(folded) == ["ConvTranspose"]


# ---------------------------------------------------------------- through shape-only ops


def test_bn_maxpool_flatten_gemm_head(rng):
    """BN -> MaxPool -> Flatten -> Gemm: channel c covers features c*H*W ... (c+1)*H*W - 1."""
    p = {"W": _w(rng, 7, 4 * 3 * 3), "C": _x(rng, 7), **_positive(bn_stats(rng, 4))}
    model = make_model(
        f"""{HEADER}
        g (float[2,4,6,6] x) => (float y) {{
          b = BatchNormalization (x, gamma, beta, mean, var)
          m = MaxPool <kernel_shape=[2,2], strides=[2,2]> (b)
          f = Flatten (m)
          y = Gemm <transB=1, alpha=0.5, beta=2.0> (f, W, C)
        }}""",
        p,
    )
    folded, _ = check_fold(model, {"x": _x(rng, 2, 4, 6, 6)}, expect_folded=1)
    assert op_types(folded) == ["MaxPool", "Flatten", "Gemm"]


@pytest.mark.parametrize(
    "pool",
    ["GlobalMaxPool (b)", "GlobalAveragePool (b)", "AveragePool <kernel_shape=[3,3]> (b)"],
)
def test_bn_global_pool_flatten_gemm(rng, pool):
    """Pooling without padding commutes with a per-channel s >= 0 and any shift."""
    features = 4 * (16 if pool.startswith("AveragePool") else 1)
    p = {"W": _w(rng, features, 3), **_positive(bn_stats(rng, 4))}
    model = make_model(
        f"""{HEADER}
        g (float[2,4,6,6] x) => (float[2,3] y) {{
          b = BatchNormalization (x, gamma, beta, mean, var)
          m = {pool}
          f = Flatten (m)
          y = MatMul (f, W)
        }}""",
        p,
    )
    folded, result = check_fold(model, {"x": _x(rng, 2, 4, 6, 6)}, expect_folded=1)
    assert op_types(folded) == [pool.split()[0], "Flatten", "Gemm"]
    assert [(f.fold, f.direction) for f in result.report.folded] == [("bn+matmul", "forward")]


def test_maxpool_with_negative_scale_refused(rng):
    p = {"W": _w(rng, 7, 4 * 3 * 3), **bn_stats(rng, 4)}
    p["gamma"][1] = -1.0
    model = make_model(
        f"""{HEADER}
        g (float[2,4,6,6] x) => (float y) {{
          b = BatchNormalization (x, gamma, beta, mean, var)
          m = MaxPool <kernel_shape=[2,2], strides=[2,2]> (b)
          f = Flatten (m)
          y = Gemm <transB=1> (f, W)
        }}""",
        p,
    )
    result = bnfold.fold(model)
    assert not result.report.folded
    assert "negative scale, which the MaxPool before" in reasons(result)


@pytest.mark.parametrize(
    ("pool", "folds"),
    [
        ("GlobalAveragePool (b)", True),
        ("AveragePool <kernel_shape=[2,2], strides=[2,2]> (b)", True),
        ("AveragePool <kernel_shape=[3,3], pads=[1,1,1,1], count_include_pad=1> (b)", False),
        ("AveragePool <kernel_shape=[3,3], pads=[1,1,1,1]> (b)", True),
    ],
)
def test_bn_average_pool_gemm(rng, pool, folds):
    model = make_model(
        f"""{HEADER}
        g (float[2,4,6,6] x) => (float y) {{
          b = BatchNormalization (x, gamma, beta, mean, var)
          m = {pool}
          f = Flatten (m)
          y = MatMul (f, W)
        }}""",
        {"W": _w(rng, 4 * 36 if "pads" in pool else 4 * (1 if "Global" in pool else 9), 3),
         **bn_stats(rng, 4)},
    )  # fmt: skip
    if folds:
        folded, _ = check_fold(model, {"x": _x(rng, 2, 4, 6, 6)}, expect_folded=1)
        assert "BatchNormalization" not in op_types(folded)
    else:
        result = bnfold.fold(model)
        assert not result.report.folded
        assert "counts padding into its averages" in reasons(result)


def test_nhwc_flatten_interleaves_channels_and_folds(rng):
    """Transpose to NHWC then Reshape (N, -1): feature f belongs to channel f % C."""
    model = make_model(
        f"""{HEADER}
        g (float[2,4,3,3] x) => (float y) {{
          b = BatchNormalization (x, gamma, beta, mean, var)
          t = Transpose <perm=[0,2,3,1]> (b)
          f = Reshape (t, shape)
          y = Gemm (f, W)
        }}""",
        {"W": _w(rng, 36, 5), "shape": np.array([2, -1], np.int64), **bn_stats(rng, 4)},
    )
    folded, _ = check_fold(model, {"x": _x(rng, 2, 4, 3, 3)}, expect_folded=1)
    assert op_types(folded) == ["Transpose", "Reshape", "Gemm"]


def test_reshape_that_makes_channels_rows_refused(rng):
    """(2, 4, 3, 3) -> (8, 9): each BN channel becomes rows of the MatMul input."""
    model = make_model(
        f"""{HEADER}
        g (float[2,4,3,3] x) => (float y) {{
          b = BatchNormalization (x, gamma, beta, mean, var)
          f = Reshape (b, shape)
          y = MatMul (f, W)
        }}""",
        {"W": _w(rng, 9, 5), "shape": np.array([8, 9], np.int64), **bn_stats(rng, 4)},
    )
    result = bnfold.fold(model)
    assert not result.report.folded
    assert "reach the MatMul 'MatMul(y)' on axis 0, but it contracts the last axis" in reasons(
        result
    )


def test_reshape_that_spreads_channels_over_two_axes_refused(rng):
    """(2, 4, 3, 3) -> (2, 3, 12): channel c lands on rows and columns at once."""
    model = make_model(
        f"""{HEADER}
        g (float[2,4,3,3] x) => (float y) {{
          b = BatchNormalization (x, gamma, beta, mean, var)
          f = Reshape (b, shape)
          y = MatMul (f, W)
        }}""",
        {"W": _w(rng, 12, 5), "shape": np.array([2, 3, 12], np.int64), **bn_stats(rng, 4)},
    )
    result = bnfold.fold(model)
    assert not result.report.folded
    assert "does not keep the BN channel axis whole" in reasons(result)


@pytest.mark.parametrize(
    ("body", "out_shape"),
    [
        # Conv1d (N, C, L) -> Unsqueeze axis 3 -> BN on (N, C, L, 1)
        ("z = Conv (x, W, B)\n u = Unsqueeze (z, ax)\n y = BatchNormalization (u, gamma, beta, mean, var)",
         "[2,6,7,1]"),
        # (N, C, L) -> Unsqueeze axis 0 -> (1, N, C, L) -> Squeeze 0 -> BN
        ("z = Conv (x, W, B)\n u = Unsqueeze (z, ax0)\n s = Squeeze (u, ax0)\n"
         " y = BatchNormalization (s, gamma, beta, mean, var)", "[2,6,7]"),
    ],
)  # fmt: skip
def test_conv_squeeze_unsqueeze_bn_backward(rng, body, out_shape):
    p = {"W": _w(rng, 6, 3, 3), "B": _x(rng, 6), **bn_stats(rng, 6)}
    p["ax"], p["ax0"] = np.array([3], np.int64), np.array([0], np.int64)
    model = make_model(
        f"""{HEADER}
        g (float[2,3,9] x) => (float{out_shape} y) {{
          {body}
        }}""",
        p,
    )
    folded, result = check_fold(model, {"x": _x(rng, 2, 3, 9)}, expect_folded=1)
    assert "BatchNormalization" not in op_types(folded)
    assert _directions(result) == ["backward"]


@pytest.mark.parametrize(
    ("opset", "path"),
    [
        (11, "u = Unsqueeze <axes=[2]> (b)\n s = Squeeze <axes=[2]> (u)"),
        (17, "u = Unsqueeze (b, two)\n s = Squeeze (u)"),
    ],
    ids=["axes-attributes", "axes-input-and-none"],
)
def test_bn_unsqueeze_squeeze_matmul(rng, opset, path):
    """Forward through Unsqueeze and Squeeze (axes as attributes before opset 13, as an input
    from 13, or none: every static dim of 1)."""
    p = {"W": _w(rng, 4, 5), "two": np.array([2], np.int64), **bn_stats(rng, 4)}
    model = make_model(
        f"""<ir_version: 8, opset_import: ["" : {opset}]>
        g (float[3,4] x) => (float[3,5] y) {{
          b = BatchNormalization (x, gamma, beta, mean, var)
          {path}
          y = MatMul (s, W)
        }}""",
        p,
    )
    folded, result = check_fold(model, {"x": _x(rng, 3, 4)}, expect_folded=1)
    assert op_types(folded) == ["Unsqueeze", "Squeeze", "Gemm"]
    assert _directions(result) == ["forward"]


@pytest.mark.parametrize("target", [(2, -1), (0, -1)], ids=["2,-1", "0,-1"])
def test_reshape_to_a_computed_shape(rng, target):
    """A Reshape whose target is computed (Concat of constants: onnx's inference gives the
    output no dims) is followed with the target bnfold evaluates (0 copies a dim, -1 the rest)."""
    p = {"W": _w(rng, 36, 5), "t0": np.array(target[:1], np.int64),
         "t1": np.array(target[1:], np.int64), **bn_stats(rng, 4)}  # fmt: skip
    model = make_model(
        f"""{HEADER}
        g (float[2,4,3,3] x) => (float[2,5] y) {{
          b = BatchNormalization (x, gamma, beta, mean, var)
          t = Concat <axis=0> (t0, t1)
          r = Reshape (b, t)
          y = MatMul (r, W)
        }}""",
        p,
    )
    folded, result = check_fold(model, {"x": _x(rng, 2, 4, 3, 3)}, expect_folded=1)
    assert op_types(folded) == ["Concat", "Reshape", "Gemm"]


def test_unsqueeze_of_the_channel_axis_refused(rng):
    """(N, 6) -> Unsqueeze axis 1 -> (N, 1, 6): BN over the new size-1 axis."""
    p = {"W": _w(rng, 6, 5), **bn_stats(rng, 1), "ax": np.array([1], np.int64)}
    model = make_model(
        f"""{HEADER}
        g (float[2,5] x) => (float[2,1,6] y) {{
          z = Gemm <transB=1> (x, W)
          u = Unsqueeze (z, ax)
          y = BatchNormalization (u, gamma, beta, mean, var)
        }}""",
        p,
    )
    result = bnfold.fold(model)
    assert "the BN channel axis is an axis the Unsqueeze inserts" in reasons(result)


def test_paddle_identity_add_identity_bn(rng):
    """paddle2onnx: Conv -> Identity -> Add(bias) -> Identity -> BN folds, Identities and all."""
    p = {"W": _w(rng, 6, 4, 3, 3), "c": _x(rng, 1, 6, 1, 1), **bn_stats(rng, 6)}
    model = make_model(
        f"""{HEADER}
        g (float[2,4,6,6] x) => (float y) {{
          z = Conv <pads=[1,1,1,1]> (x, W)
          i1 = Identity (z)
          a = Add (i1, c)
          i2 = Identity (a)
          y = BatchNormalization (i2, gamma, beta, mean, var)
        }}""",
        p,
    )
    for affine in (True, False):
        folded, result = check_fold(model, {"x": _x(rng, 2, 4, 6, 6)}, affine=affine)
        assert op_types(folded) == ["Conv"]
        assert [f.fold for f in result.report.folded] == ["conv+add", "conv+bn"]


# ---------------------------------------------------------------- several consumers


def test_bn_into_several_consumers_clones_shared_weights(rng):
    """One BN feeds two 1x1 Convs sharing a weight (also used by a third Conv on x): each
    folded Conv gets its own weight, the shared one stays as it was."""
    p = {"W": _w(rng, 5, 4, 1, 1), **bn_stats(rng, 4)}
    model = make_model(
        f"""{HEADER}
        g (float[2,4,6,6] x) => (float y1, float y2, float y3) {{
          b = BatchNormalization (x, gamma, beta, mean, var)
          y1 = Conv (b, W)
          y2 = Conv <strides=[2,2]> (b, W)
          y3 = Conv (x, W)
        }}""",
        p,
    )
    folded, result = check_fold(model, {"x": _x(rng, 2, 4, 6, 6)}, expect_folded=1)
    assert op_types(folded) == ["Conv", "Conv", "Conv"]
    weights = [n.input[1] for n in folded.graph.node]
    assert weights[2] == "W" and len(set(weights)) == 3
    np.testing.assert_array_equal(initializer(folded, "W"), p["W"])
    assert result.report.folded[0].details["consumers"] == 2


def test_one_consumer_that_cannot_take_it_refuses_all(rng):
    model = make_model(
        f"""{HEADER}
        g (float[2,4,6,6] x) => (float y1, float y2) {{
          b = BatchNormalization (x, gamma, beta, mean, var)
          y1 = Conv (b, W)
          y2 = Relu (b)
        }}""",
        {"W": _w(rng, 5, 4, 1, 1), **bn_stats(rng, 4)},
    )
    result = bnfold.fold(model)
    assert not result.report.folded
    assert "'Relu(y2)' (Relu) reads its output and is not a linear layer" in reasons(result)


def test_bn_output_that_is_a_graph_output_stays(rng):
    model = make_model(
        f"""{HEADER}
        g (float[2,4,6,6] x) => (float b, float y) {{
          b = BatchNormalization (x, gamma, beta, mean, var)
          y = Conv (b, W)
        }}""",
        {"W": _w(rng, 5, 4, 1, 1), **bn_stats(rng, 4)},
    )
    result = bnfold.fold(model)
    assert not result.report.folded
    assert "forward: its output 'b' is a graph output" in reasons(result)


# ---------------------------------------------------------------- through activations


def _act_model(act, p, consumer="Conv (b, W2, B2)", producer="Conv <pads=[1,1,1,1]> (x, W1, B1)"):
    return make_model(
        f"""{HEADER}
        g (float[2,3,6,6] x) => (float y) {{
          z = {producer}
          r = {act}
          b = BatchNormalization (r, gamma, beta, mean, var)
          y = {consumer}
        }}""",
        p,
    )


def _act_params(rng, positive=True):
    p = {
        "W1": _w(rng, 4, 3, 3, 3), "B1": _x(rng, 4), "W2": _w(rng, 5, 4, 1, 1), "B2": _x(rng, 5),
        "slope": rng.uniform(0.05, 0.3, (4, 1, 1)).astype(np.float32),
        **bn_stats(rng, 4),
    }  # fmt: skip
    if positive:
        _positive(p)
    return p


@pytest.mark.parametrize("act", ["Relu (z)", "LeakyRelu <alpha=0.1> (z)", "PRelu (z, slope)"])
def test_scale_back_through_activation_shift_forward(rng, act):
    p = _act_params(rng)
    folded, result = check_fold(_act_model(act, p), {"x": _x(rng, 2, 3, 6, 6)}, expect_folded=1)
    kind = act.split()[0].lower()
    assert op_types(folded)[0] == "Conv" and op_types(folded)[-1] == "Conv"
    assert result.report.folded[0].fold == f"conv+{kind}+bn+conv"
    assert _directions(result) == ["through the activation"]
    # the consumer keeps its weight: only its bias changed
    consumer = folded.graph.node[-1]
    np.testing.assert_array_equal(initializer(folded, consumer.input[1]), p["W2"])


def test_negative_scale_falls_back_to_forward(rng):
    p = _act_params(rng)
    p["gamma"][0] = -abs(p["gamma"][0])
    folded, result = check_fold(
        _act_model("Relu (z)", p), {"x": _x(rng, 2, 3, 6, 6)}, expect_folded=1
    )
    assert result.report.folded[0].fold == "bn+conv" and _directions(result) == ["forward"]


def test_shift_free_bn_scale_back_through_relu_before_padded_conv(rng):
    p = _act_params(rng)
    p["beta"], p["mean"] = np.zeros(4, np.float32), np.zeros(4, np.float32)
    p["W3"] = _w(rng, 5, 4, 3, 3)
    model = _act_model("Relu (z)", p, consumer="Conv <pads=[1,1,1,1]> (b, W3)")
    folded, result = check_fold(model, {"x": _x(rng, 2, 3, 6, 6)}, expect_folded=1)
    assert result.report.folded[0].fold == "conv+relu+bn"
    assert op_types(folded) == ["Conv", "Relu", "Conv"]


def test_nothing_exact_gives_every_direction_tried(rng):
    p = _act_params(rng)
    p["W3"] = _w(rng, 5, 4, 3, 3)
    model = _act_model("Relu (z)", p, consumer="Conv <pads=[1,1,1,1]> (b, W3)")
    result = bnfold.fold(model)
    assert not result.report.folded
    why = reasons(result)
    assert why.startswith("backward: its input comes from Relu, not a linear layer")
    assert "; through the activation: its shift: the Conv" in why
    assert "; forward: the Conv" in why and "pads its input" in why


def test_mlp_relu_bn_linear(rng):
    p = {"W1": _w(rng, 8, 6), "B1": _x(rng, 8), "W2": _w(rng, 4, 8), "B2": _x(rng, 4)}
    p.update(_positive(bn_stats(rng, 8)))
    model = make_model(
        f"""{HEADER}
        g (float[3,6] x) => (float y) {{
          z = Gemm <transB=1> (x, W1, B1)
          r = Relu (z)
          b = BatchNormalization (r, gamma, beta, mean, var)
          y = Gemm <transB=1> (b, W2, B2)
        }}""",
        p,
    )
    folded, result = check_fold(model, {"x": _x(rng, 3, 6)}, expect_folded=1)
    assert op_types(folded) == ["Gemm", "Relu", "Gemm"]
    assert result.report.folded[0].fold == "gemm+relu+bn+gemm"


def test_sigmoid_is_not_homogeneous_bn_goes_forward(rng):
    p = _act_params(rng)
    folded, result = check_fold(
        _act_model("Sigmoid (z)", p), {"x": _x(rng, 2, 3, 6, 6)}, expect_folded=1
    )
    assert result.report.folded[0].fold == "bn+conv"


def test_activation_with_other_readers_goes_forward(rng):
    p = _act_params(rng)
    model = make_model(
        f"""{HEADER}
        g (float[2,3,6,6] x) => (float y, float r) {{
          z = Conv <pads=[1,1,1,1]> (x, W1, B1)
          r = Relu (z)
          b = BatchNormalization (r, gamma, beta, mean, var)
          y = Conv (b, W2, B2)
        }}""",
        p,
    )
    folded, result = check_fold(model, {"x": _x(rng, 2, 3, 6, 6)}, expect_folded=1)
    assert result.report.folded[0].fold == "bn+conv"


def test_forward_off_keeps_backward_only(rng):
    p = _act_params(rng)
    result = bnfold.fold(_act_model("Relu (z)", p), forward="off")
    assert not result.report.folded
    assert (
        reasons(result)
        == "its input comes from Relu, not a linear layer (Conv, ConvTranspose, Gemm, MatMul)"
    )
    with pytest.raises(bnfold.BnfoldError, match="forward must be one of"):
        bnfold.fold(_act_model("Relu (z)", p), forward="sideways")


# ---------------------------------------------------------------- BN -> BN, BN -> Mul/Add


def test_conv_bn_bn_folds_as_one_map(rng):
    p = {"W": _w(rng, 6, 4, 3, 3), **bn_stats(rng, 6)}
    p.update({f"{k}2": v for k, v in bn_stats(rng, 6).items()})
    model = make_model(
        f"""{HEADER}
        g (float[2,4,6,6] x) => (float y) {{
          z = Conv (x, W)
          b = BatchNormalization (z, gamma, beta, mean, var)
          y = BatchNormalization (b, gamma2, beta2, mean2, var2)
        }}""",
        p,
    )
    folded, result = check_fold(model, {"x": _x(rng, 2, 4, 6, 6)}, expect_folded=2)
    assert op_types(folded) == ["Conv"]
    assert [f.fold for f in result.report.folded] == ["conv+bn", "conv+bn"]


@pytest.mark.parametrize(
    ("second", "fold"),
    [
        ("y = BatchNormalization (b, gamma2, beta2, mean2, var2)", "bn+bn"),
        ("y = Mul (b, c)", "bn+mul"),
        ("y = Add (b, c)", "bn+add"),
    ],
)
def test_bn_then_affine_merged_into_one_bn(rng, second, fold):
    p = {**bn_stats(rng, 6), "c": _x(rng, 6, 1, 1)}
    p.update({f"{k}2": v for k, v in bn_stats(rng, 6).items()})
    model = make_model(
        f"""{HEADER}
        g (float[2,6,5,5] x) => (float out) {{
          b = BatchNormalization (x, gamma, beta, mean, var)
          {second}
          out = Relu (y)
        }}""",
        p,
    )
    folded, result = check_fold(model, {"x": _x(rng, 2, 6, 5, 5)}, expect_folded=1)
    assert op_types(folded) == ["BatchNormalization", "Relu"]
    assert result.report.folded[0].fold == fold and _directions(result) == ["merge"]
    assert result.report.bn_after == 1 and "graph input" in reasons(result)
    bn = folded.graph.node[0]
    assert {a.name: a.f for a in bn.attribute}["epsilon"] == 0.0
    np.testing.assert_array_equal(initializer(folded, bn.input[4]), np.ones(6, np.float32))


def test_bn_mul_into_gemm_as_one_chain(rng):
    model = make_model(
        f"""{HEADER}
        g (float[3,6] x) => (float y) {{
          b = BatchNormalization (x, gamma, beta, mean, var)
          m = Mul (b, c)
          y = Gemm (m, W)
        }}""",
        {"W": _w(rng, 6, 4), "c": _x(rng, 6), **bn_stats(rng, 6)},
    )
    folded, result = check_fold(model, {"x": _x(rng, 3, 6)}, expect_folded=2)
    assert op_types(folded) == ["Gemm"]
    assert [f.fold for f in result.report.folded] == ["bn+gemm", "mul+gemm"]


# ---------------------------------------------------------------- graphs, functions, IR 3


def test_forward_fold_in_an_if_branch(rng):
    p = {"W": _w(rng, 6, 4), **bn_stats(rng, 6)}
    model = make_model(
        f"""{HEADER}
        g (float[3,6] x, bool cond) => (float[3,4] y) {{
          y = If (cond) <
            then_branch = t () => (float[3,4] ty) {{
              tb = BatchNormalization (x, gamma, beta, mean, var)
              ty = Gemm (tb, W)
            }},
            else_branch = e () => (float[3,4] ey) {{
              ey = Gemm (x, W)
            }}
          >
        }}""",
        p,
    )
    for cond in (True, False):
        _, result = check_fold(model, {"x": _x(rng, 3, 6), "cond": np.array(cond)}, expect_folded=1)
    assert result.report.folded[0].graph == "t"


def test_forward_fold_in_a_function_body(rng):
    stats = bn_stats(rng, 4)
    w = _w(rng, 5, 4, 1, 1)

    def const(name, array):
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(array, name))

    body = [
        const("w", w), *(const(k, stats[k]) for k in ("gamma", "beta", "mean", "var")),
        helper.make_node("BatchNormalization", ["X", "gamma", "beta", "mean", "var"], ["bn"]),
        helper.make_node("Conv", ["bn", "w"], ["Y"]),
    ]  # fmt: skip
    function = helper.make_function(
        "local", "BnConv", ["X"], ["Y"], body, [helper.make_opsetid("", 17)]
    )
    graph = helper.make_graph(
        [helper.make_node("BnConv", ["x"], ["y"], domain="local")],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 4, 6, 6])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 5, 6, 6])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
        functions=[function],
    )
    folded, result = check_fold(model, {"x": _x(rng, 2, 4, 6, 6)}, expect_folded=1)
    assert result.report.folded[0].graph == "function BnConv"
    assert [n.op_type for n in folded.functions[0].node] == ["Constant", "Constant", "Conv"]


def test_ir3_weight_from_constant_of_shape_stays_checker_valid(rng):
    """IR 3: every initializer must be a graph input, whatever produced the weight it replaces
    (a Conv weight computed by ConstantOfShape made the output fail onnx.checker)."""
    stats = bn_stats(rng, 4)
    inits = [numpy_helper.from_array(stats[k], k) for k in ("gamma", "beta", "mean", "var")]
    inits.append(numpy_helper.from_array(np.array([4, 3, 3, 3], np.int64), "wshape"))
    nodes = [
        helper.make_node(
            "ConstantOfShape", ["wshape"], ["W"],
            value=numpy_helper.from_array(np.array([0.1], np.float32)),
        ),
        helper.make_node("Conv", ["x", "W"], ["z"]),
        helper.make_node("BatchNormalization", ["z", "gamma", "beta", "mean", "var"], ["y"]),
    ]  # fmt: skip
    inputs = [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3, 6, 6])]
    inputs += [helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in inits]
    graph = helper.make_graph(
        nodes, "g", inputs,
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 4, 4, 4])], inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)], ir_version=3)
    onnx.checker.check_model(model, full_check=True)
    folded, _ = check_fold(model, {"x": _x(rng, 2, 3, 6, 6)}, expect_folded=1)
    onnx.checker.check_model(folded, full_check=True)
    inputs = {i.name for i in folded.graph.input}
    assert {t.name for t in folded.graph.initializer} <= inputs


# ---------------------------------------------------------------- the pass contract


def test_fold_pass_keeps_no_state_between_calls(rng):
    import onnx_ir as ir

    from bnfold.engine import FoldPass

    model = make_model(
        f"""{HEADER}
        g (float[2,4,6,6] x) => (float y) {{
          z = Conv (x, W)
          y = BatchNormalization (z, gamma, beta, mean, var)
        }}""",
        {"W": _w(rng, 6, 4, 3, 3), **bn_stats(rng, 6)},
    )
    fold_pass = FoldPass()
    first = fold_pass(ir.from_proto(model))
    second = fold_pass(ir.from_proto(model))
    assert first.modified and second.modified
    assert first.report.summary() == second.report.summary()
    assert first.report.summary().startswith("folded 1 of 1 ")
    again = fold_pass(first.model)
    assert not again.modified and not again.report.folded


def test_nothing_to_fold_leaves_the_model_byte_identical(rng):
    """modified is False and shape inference (run to learn ranks) left no trace."""
    import onnx_ir as ir

    from bnfold.engine import FoldPass

    model = make_model(
        f"""{HEADER}
        g (float[2,4,6,6] x) => (float y, float m) {{
          r = Relu (x)
          b = BatchNormalization (r, gamma, beta, mean, var)
          y = Conv (b, W)
          s = Sigmoid (x)
          m = Mul (s, c)
        }}""",
        {"W": _w(rng, 5, 4, 1, 1), "c": _x(rng, 1, 4, 1, 1), **bn_stats(rng, 4)},
    )
    ir_model = ir.from_proto(model)
    before = ir.to_proto(ir_model).SerializeToString(deterministic=True)
    assert ir_model.graph.node(0).outputs[0].shape is None  # so the ranks need inference
    result = FoldPass(bnfold.FoldOptions(forward="off"))(ir_model)
    assert not result.modified and not result.report.folded
    assert ir.to_proto(result.model).SerializeToString(deterministic=True) == before


# ---------------------------------------------------------------- int8-safe forward folds


def _dead_channel_model(rng, dead: int):
    """Sigmoid -> BN -> Gemm, ``dead`` BN channels with running var ~1e-20 (a unit that never
    fired in training: s = gamma / sqrt(eps) ~ 316 against ~1 for the others)."""
    c = 16
    stats = {
        "gamma": rng.uniform(0.8, 1.2, c).astype(np.float32),
        "beta": rng.normal(0, 0.1, c).astype(np.float32),
        "mean": rng.uniform(0.2, 0.8, c).astype(np.float32),
        "var": rng.uniform(0.5, 1.5, c).astype(np.float32),
    }
    stats["var"][:dead] = 1e-20
    return make_model(
        f"""{HEADER}
        g (float[4,{c}] x) => (float y) {{
          s = Sigmoid (x)
          b = BatchNormalization (s, gamma, beta, mean, var)
          y = Gemm (b, W, C)
        }}""",
        {"W": _w(rng, c, 32), "C": _x(rng, 32), **stats},
    )


def test_int8_safe_skips_a_forward_fold_fed_by_dead_channels(rng):
    model = _dead_channel_model(rng, dead=3)
    exact = bnfold.fold(model, forward="exact")
    assert exact.report.bn_after == 0  # exact in float: it folds
    (effect,) = exact.report.folded[0].details["int8"]
    assert effect["zero_share_increase"] > 0.1 and effect["spread"] > 100
    result = bnfold.fold(model, forward="int8-safe")
    assert not result.report.folded
    why = reasons(result)
    assert "forward: int8: folding would round" in why and "--forward int8-safe" in why
    assert "BN scale spread" in why


def test_int8_safe_keeps_a_harmless_forward_fold(rng):
    model = _dead_channel_model(rng, dead=0)
    folded, result = check_fold(model, {"x": _x(rng, 4, 16)}, forward="int8-safe", expect_folded=1)
    (effect,) = result.report.folded[0].details["int8"]
    assert effect["zero_share_increase"] <= 0.02 and effect["error_ratio"] <= 2.0
    assert op_types(folded) == ["Sigmoid", "Gemm"]
