"""Gemm and MatMul followed by BatchNormalization, as ONNX text, checked under onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx_helpers import bn_stats, check_fold, make_model, op_types, reasons

import bnfold

TYPES = {np.float32: "float", np.float64: "double", np.float16: "float16"}
N, K, M = 4, 6, 5


def gemm_bn_model(rng, trans_b=0, alpha=None, beta=None, c_shape="absent", dtype=np.float32):
    ty = TYPES[dtype]
    inits = {"B": rng.normal(0, 0.5, (M, K) if trans_b else (K, M)).astype(dtype)}
    inputs = "a, B"
    if c_shape != "absent":
        inits["C"] = rng.normal(0, 1, c_shape).astype(dtype)
        inputs += ", C"
    inits.update(bn_stats(rng, M, dtype))
    attrs = [f"transB={trans_b}"]
    if alpha is not None:
        attrs.append(f"alpha={alpha}")
    if beta is not None:
        attrs.append(f"beta={beta}")
    text = f"""<ir_version: 8, opset_import: ["" : 17]>
    g ({ty}[{N},{K}] a) => ({ty}[{N},{M}] y) {{
      z = Gemm <{", ".join(attrs)}> ({inputs})
      y = BatchNormalization <epsilon=0.01> (z, gamma, beta, mean, var)
    }}"""
    return make_model(text, inits), {"a": rng.normal(0, 1, (N, K)).astype(dtype)}


@pytest.mark.parametrize("c_shape", ["absent", (), (1,), (M,), (1, M), (1, 1)])
@pytest.mark.parametrize(("alpha", "beta"), [(None, None), (0.5, None), (None, 2.5), (-1.5, 0.25)])
@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_bn(rng, trans_b, alpha, beta, c_shape):
    model, feeds = gemm_bn_model(rng, trans_b, alpha, beta, c_shape)
    folded, result = check_fold(model, feeds, expect_folded=1)
    assert op_types(folded) == ["Gemm"]
    gemm = folded.graph.node[0]
    attrs = {a.name: a for a in gemm.attribute}
    assert attrs["transB"].i == trans_b
    # alpha went into the new B, beta into the new C (every BN here has a shift)
    assert attrs["alpha"].f == 1.0 and attrs["beta"].f == 1.0
    assert result.report.folded[0].fold == "gemm+bn"


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_with_trans_a_folds_backward(rng, trans_b):
    """transA=1 transposes A only: the output features are still B's, so the BN folds into B
    and C as for transA=0 (only the forward fold needs transA=0)."""
    b_shape = (M, K) if trans_b else (K, M)
    p = {"B": rng.normal(0, 0.5, b_shape).astype(np.float32),
         "C": rng.normal(0, 1, M).astype(np.float32), **bn_stats(rng, M)}  # fmt: skip
    model = make_model(
        f"""<ir_version: 8, opset_import: ["" : 17]>
        g (float[{K},{N}] a) => (float[{N},{M}] y) {{
          z = Gemm <transA=1, transB={trans_b}, alpha=0.75, beta=1.5> (a, B, C)
          y = BatchNormalization (z, gamma, beta, mean, var)
        }}""",
        p,
    )
    folded, result = check_fold(model, {"a": rng.normal(0, 1, (K, N)).astype(np.float32)})
    assert op_types(folded) == ["Gemm"]
    attrs = {a.name: a for a in folded.graph.node[0].attribute}
    assert (attrs["transA"].i, attrs["transB"].i) == (1, trans_b)
    assert [(f.fold, f.direction) for f in result.report.folded] == [("gemm+bn", "backward")]


@pytest.mark.parametrize("dtype", [np.float64, np.float16])
def test_gemm_bn_dtypes(rng, dtype):
    model, feeds = gemm_bn_model(rng, 1, 0.5, 2.0, (M,), dtype=dtype)
    check_fold(model, feeds, dtype=dtype, expect_folded=1)


def test_gemm_c_varying_along_batch_is_refused(rng):
    model, _ = gemm_bn_model(rng, 0, None, None, (N, M))
    result = bnfold.fold(model.SerializeToString())
    assert not result.report.folded
    assert "varies along the batch axis" in reasons(result)
    assert result.report.nodes_after == result.report.nodes_before


def matmul_model(rng, body: str, a_shape=(N, K), y_shape="", extra=None, dtype=np.float32):
    ty = TYPES[dtype]
    inits = {"W": rng.normal(0, 0.5, (K, M)).astype(dtype), **bn_stats(rng, M, dtype)}
    inits.update(extra or {})
    text = f"""<ir_version: 8, opset_import: ["" : 17]>
    g ({ty}[{",".join(map(str, a_shape))}] a) => ({ty}{y_shape} y) {{
      {body}
    }}"""
    return make_model(text, inits), {"a": rng.normal(0, 1, a_shape).astype(dtype)}


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_matmul_bn_becomes_gemm(rng, dtype):
    model, feeds = matmul_model(
        rng,
        "z = MatMul (a, W)\n y = BatchNormalization (z, gamma, beta, mean, var)",
        dtype=dtype,
    )
    folded, result = check_fold(model, feeds, dtype=dtype, expect_folded=1)
    assert op_types(folded) == ["Gemm"]
    assert folded.graph.node[0].output[0] == "y"
    assert result.report.folded[0].fold == "matmul+bn"


def test_matmul_add_bn(rng):
    model, feeds = matmul_model(
        rng,
        "z = MatMul (a, W)\n zb = Add (z, c)\n y = BatchNormalization (zb, gamma, beta, mean, var)",
        extra={"c": rng.normal(0, 1, M).astype(np.float32)},
    )
    folded, _ = check_fold(model, feeds, expect_folded=1)
    assert op_types(folded) == ["MatMul", "Add"]


def test_matmul_add_bias_first_operand(rng):
    model, feeds = matmul_model(
        rng,
        "z = MatMul (a, W)\n zb = Add (c, z)\n y = BatchNormalization (zb, gamma, beta, mean, var)",
        extra={"c": rng.normal(0, 1, (1, M)).astype(np.float32)},
    )
    folded, _ = check_fold(model, feeds, expect_folded=1)
    assert op_types(folded) == ["MatMul", "Add"]


def test_matmul_rank3_bn_is_refused(rng):
    """On (B, T, M) activations BN normalises axis 1 (T), not the MatMul's features (M)."""
    model, _ = matmul_model(
        rng,
        "z = MatMul (a, W)\n y = BatchNormalization (z, gamma, beta, mean, var)",
        a_shape=(2, M, K),
    )
    result = bnfold.fold(model.SerializeToString())
    assert not result.report.folded
    assert "BN normalises axis 1 but the MatMul features are on the last axis" in reasons(result)
    assert "rank 3" in reasons(result)


def test_matmul_rank3_mul_by_feature_vector_folds(rng):
    """A Mul by a per-feature vector after a rank-3 MatMul acts on the last axis: folds."""
    model, feeds = matmul_model(
        rng,
        "z = MatMul (a, W)\n y = Mul (z, s)",
        a_shape=(2, 3, K),
        extra={"s": rng.uniform(-2, 2, M).astype(np.float32)},
    )
    folded, _ = check_fold(model, feeds, expect_folded=1)
    assert op_types(folded) == ["MatMul"]


def test_matmul_constant_first_operand_is_refused(rng):
    inits = {"W": rng.normal(0, 0.5, (M, K)).astype(np.float32), **bn_stats(rng, M)}
    model = make_model(
        f"""<ir_version: 8, opset_import: ["" : 17]>
        g (float[{K},{M}] a) => (float[{M},{M}] y) {{
          z = MatMul (W, a)
          y = BatchNormalization (z, gamma, beta, mean, var)
        }}""",
        inits,
    )
    result = bnfold.fold(model.SerializeToString())
    assert not result.report.folded
    assert "first operand" in reasons(result)


@pytest.mark.parametrize(
    ("body", "y_shape"),
    [
        # (N, M) -> (N, M, 1, 1): the BN channel axis is the feature axis
        ("r = Reshape (z, s4)\n y = BatchNormalization (r, gamma, beta, mean, var)", "[4,5,1,1]"),
        # (N, M) -> (N, 1, 1, M) -> (N, M, 1, 1)
        (
            "r = Reshape (z, s4b)\n t = Transpose <perm=[0,3,1,2]> (r)\n"
            " y = BatchNormalization (t, gamma, beta, mean, var)",
            "[4,5,1,1]",
        ),
        # (N, M) -> (1, N, M) -> (1, M, N): channel axis 1 is M
        (
            "r = Reshape (z, s3)\n t = Transpose <perm=[0,2,1]> (r)\n"
            " y = BatchNormalization (t, gamma, beta, mean, var)",
            "[1,5,4]",
        ),
    ],
)
def test_matmul_reshape_transpose_bn_folds(rng, body, y_shape):
    model, feeds = matmul_model(
        rng,
        "z = MatMul (a, W)\n " + body,
        y_shape=y_shape,
        extra={
            "s4": np.array([N, M, 1, 1], np.int64),
            "s4b": np.array([-1, 1, 1, M], np.int64),
            "s3": np.array([1, -1, M], np.int64),
        },
    )
    folded, result = check_fold(model, feeds, expect_folded=1)
    assert op_types(folded)[0] == "Gemm" and "BatchNormalization" not in op_types(folded)
    assert folded.graph.output[0] == model.graph.output[0]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        # (N, M) -> (M, N): channel axis is the batch
        ("t = Transpose (z)\n y = BatchNormalization (t, gN, bN, mN, vN)", "maps to axis 0"),
    ],
)
def test_matmul_reshape_transpose_bn_refused(rng, body, reason):
    extra = {"s": np.array([N, 1, M], np.int64)}
    extra.update({f"{k[0]}1": v for k, v in bn_stats(rng, 1).items()})
    extra.update({f"{k[0]}N": v for k, v in bn_stats(rng, N).items()})
    model, _ = matmul_model(rng, "z = MatMul (a, W)\n " + body, extra=extra)
    result = bnfold.fold(model.SerializeToString())
    assert not result.report.folded
    assert reason in reasons(result), reasons(result)


def test_matmul_reshape_to_one_channel_folds(rng):
    """(N, M) -> (N, 1, M) -> BN with one channel: every element is channel 0, so the BN is one
    scalar map of the MatMul's outputs and folds into it. (Refused until the property tests
    found it: the channel map wanted the channel to vary along exactly one axis.)"""
    extra = {"s": np.array([N, 1, M], np.int64)}
    extra.update({f"{k[0]}1": v for k, v in bn_stats(rng, 1).items()})
    model, feeds = matmul_model(
        rng,
        "z = MatMul (a, W)\n r = Reshape (z, s)\n y = BatchNormalization (r, g1, b1, m1, v1)",
        y_shape=f"[{N},1,{M}]",
        extra=extra,
    )
    folded, result = check_fold(model, feeds, expect_folded=1)
    assert op_types(folded) == ["Gemm", "Reshape"]
    assert result.report.folded[0].fold == "matmul+bn"


def test_matmul_reshape_channel_blocks_fold(rng):
    """(N, 6) -> (N, 2, 3): BN over 2 channels; feature f of the MatMul belongs to channel
    f // 3, so each block of 3 weight columns takes its channel's scale and shift. (Refused
    before the fold interface redesign, which maps channels element by element.)"""
    inits = {"W": rng.normal(0, 0.5, (K, 6)).astype(np.float32), "s": np.array([N, 2, 3])}
    inits.update(bn_stats(rng, 2))
    model = make_model(
        f"""<ir_version: 8, opset_import: ["" : 17]>
        g (float[{N},{K}] a) => (float[{N},2,3] y) {{
          z = MatMul (a, W)
          r = Reshape (z, s)
          y = BatchNormalization (r, gamma, beta, mean, var)
        }}""",
        inits,
    )
    feeds = {"a": rng.normal(0, 1, (N, K)).astype(np.float32)}
    folded, result = check_fold(model, feeds, expect_folded=1)
    assert op_types(folded) == ["Gemm", "Reshape"]


def test_matmul_reshape_transpose_interleaved_channels_fold(rng):
    """(N, 6) -> (N, 2, 3) -> Transpose -> (N, 3, 2), BN over 3 channels: channel j is MatMul
    features {j, j + 3}; each feature still belongs to one channel, so it folds."""
    inits = {"W": rng.normal(0, 0.5, (K, 6)).astype(np.float32), "s": np.array([N, 2, 3])}
    inits.update(bn_stats(rng, 3))
    model = make_model(
        f"""<ir_version: 8, opset_import: ["" : 17]>
        g (float[{N},{K}] a) => (float[{N},3,2] y) {{
          z = MatMul (a, W)
          r = Reshape (z, s)
          t = Transpose <perm=[0,2,1]> (r)
          y = BatchNormalization (t, gamma, beta, mean, var)
        }}""",
        inits,
    )
    feeds = {"a": rng.normal(0, 1, (N, K)).astype(np.float32)}
    folded, result = check_fold(model, feeds, expect_folded=1)
    assert op_types(folded) == ["Gemm", "Reshape", "Transpose"]


def test_matmul_reshape_with_second_consumer_refused(rng):
    model, _ = matmul_model(
        rng,
        "z = MatMul (a, W)\n r = Reshape (z, s4)\n y = BatchNormalization (r, gamma, beta, mean, var)"
        "\n q = Relu (z)",
        y_shape="[4,5,1,1]",
        extra={"s4": np.array([N, M, 1, 1], np.int64)},
    )
    model.graph.output.append(
        onnx.helper.make_tensor_value_info("q", onnx.TensorProto.FLOAT, [N, M])
    )
    result = bnfold.fold(model.SerializeToString())
    assert not result.report.folded
    assert "the MatMul output 'z' also feeds 1 other node(s)" in reasons(result), reasons(result)
