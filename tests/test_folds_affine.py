"""Per-channel Mul/Add/Sub/Div constants as affine nodes (README, *What is folded*): alone, in
chains with BatchNormalization, on either operand, and what is not affine. Every fold is
checked under onnxruntime (onnx_helpers.check_fold: outputs, node count, checker, idempotent,
deterministic)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper
from onnx_helpers import bn_stats, check_fold, make_model, op_types, reasons

import bnfold

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'


def _conv_then(rng, body: str, consts: dict[str, np.ndarray], *, bn: bool = False):
    p = {
        "W": rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32),
        "B": rng.normal(0, 0.5, 4).astype(np.float32),
        **consts,
    }
    if bn:
        p.update(bn_stats(rng, 4))
    model = make_model(
        f"""{HEADER}
        g (float[2,3,6,6] x) => (float[2,4,4,4] y) {{
          a = Conv (x, W, B)
          {body}
        }}""",
        p,
    )
    return model, {"x": rng.normal(0, 1, (2, 3, 6, 6)).astype(np.float32)}


def _channel(rng, positive: bool = False) -> np.ndarray:
    c = rng.uniform(0.5, 2.0, (1, 4, 1, 1))
    if not positive:
        c *= rng.choice([-1.0, 1.0], c.shape)
    return c.astype(np.float32)


@pytest.mark.parametrize(
    ("body", "fold"),
    [
        ("y = Mul (a, c)", "conv+mul"),
        ("y = Mul (c, a)", "conv+mul"),
        ("y = Add (a, c)", "conv+add"),
        ("y = Add (c, a)", "conv+add"),
        ("y = Sub (a, c)", "conv+sub"),  # z - c: (1, -c)
        ("y = Sub (c, a)", "conv+sub"),  # c - z: (-1, c)
        ("y = Div (a, c)", "conv+div"),  # z / c: (1/c, 0)
    ],
    ids=["z*c", "c*z", "z+c", "c+z", "z-c", "c-z", "z/c"],
)
def test_standalone_affine_folds_backward(rng, body, fold):
    model, feeds = _conv_then(rng, body, {"c": _channel(rng)})
    folded, result = check_fold(model, feeds, expect_folded=1)
    assert op_types(folded) == ["Conv"]
    assert [(f.op, f.fold, f.direction) for f in result.report.folded] == [
        (body.split()[2], fold, "backward")
    ]
    assert result.report.bn_before == result.report.bn_after == 0
    assert f"also folded 1 {body.split()[2]}" in result.report.summary()


@pytest.mark.parametrize("shape", [(), (1,), (1, 1, 1, 1)], ids=["scalar", "1", "1x1x1x1"])
def test_a_scalar_constant_scales_every_channel(rng, shape):
    c = np.full(shape, -1.75, np.float32)
    model, feeds = _conv_then(rng, "y = Mul (a, c)", {"c": c})
    folded, _ = check_fold(model, feeds, expect_folded=1)
    assert op_types(folded) == ["Conv"]


def test_chain_of_every_affine_op_and_a_bn_folds_as_one_map(rng):
    consts = {k: _channel(rng, positive=k == "c4") for k in ("c1", "c2", "c3", "c4", "c5")}
    body = """b1 = Mul (a, c1)
          b2 = Add (c2, b1)
          b3 = Sub (c3, b2)
          b4 = Div (b3, c4)
          b5 = BatchNormalization (b4, gamma, beta, mean, var)
          y = Sub (b5, c5)"""
    model, feeds = _conv_then(rng, body, consts, bn=True)
    folded, result = check_fold(model, feeds, expect_folded=6)
    assert op_types(folded) == ["Conv"]
    assert [f.fold for f in result.report.folded] == [
        "conv+mul", "conv+add", "conv+sub", "conv+div", "conv+bn", "conv+sub"
    ]  # fmt: skip
    # one map, so each changed tensor is rounded once: two new tensors in all
    assert len(folded.graph.initializer) == 2


@pytest.mark.parametrize(
    ("body", "note"),
    [
        ("y = Div (c, a)", None),  # c / z is not affine in z
        ("y = Div (a, c)", "Div 'Div(y)' is not folded: division by a constant with zeros"),
    ],
    ids=["c/z", "z/0"],
)
def test_what_is_not_affine_stays(rng, body, note):
    c = _channel(rng)
    if note:
        c[0, 2, 0, 0] = 0.0
    model, _ = _conv_then(rng, body, {"c": c})
    result = bnfold.fold(model)
    assert not result.report.folded and not result.report.skipped
    assert result.report.notes == ([note] if note else [])
    assert [n.op_type for n in ir.to_proto(result.model).graph.node] == ["Conv", "Div"]


def test_two_run_time_operands_are_not_affine(rng):
    model = make_model(
        f"""{HEADER}
        g (float[2,3,6,6] x, float[1,4,1,1] k) => (float[2,4,4,4] y) {{
          a = Conv (x, W)
          y = Mul (a, k)
        }}""",
        {"W": rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32)},
    )
    result = bnfold.fold(model)
    assert not result.report.folded
    assert [n.op_type for n in ir.to_proto(result.model).graph.node] == ["Conv", "Mul"]


def test_affine_without_a_bn_does_not_fold_forward(rng):
    """Forward folds take chains with a BatchNormalization; a lone Mul after a Relu stays."""
    model = make_model(
        f"""{HEADER}
        g (float[2,4,6,6] x) => (float[2,5,6,6] y) {{
          r = Relu (x)
          m = Mul (r, c)
          y = Conv (m, W)
        }}""",
        {"c": _channel(rng), "W": rng.normal(0, 0.5, (5, 4, 1, 1)).astype(np.float32)},
    )
    result = bnfold.fold(model)
    assert not result.report.folded and not result.report.skipped
    assert op_types(ir.to_proto(result.model)) == ["Relu", "Mul", "Conv"]


@pytest.mark.parametrize("affine", [True, False])
def test_no_affine_keeps_standalone_ops_but_folds_the_bias_add_before_a_bn(rng, affine):
    """``--no-affine``: Mul/Add/Sub/Div fold only as part of a BN's chain before it (the bias
    Add paddle2onnx writes between a Conv and its BN); a Mul after the BN stays."""
    body = """b = Add (a, c1)
          d = BatchNormalization (b, gamma, beta, mean, var)
          y = Mul (d, c2)"""
    model, feeds = _conv_then(rng, body, {"c1": _channel(rng), "c2": _channel(rng)}, bn=True)
    folded, result = check_fold(model, feeds, affine=affine)
    assert [f.fold for f in result.report.folded] == (
        ["conv+add", "conv+bn", "conv+mul"] if affine else ["conv+add", "conv+bn"]
    )
    assert op_types(folded) == (["Conv"] if affine else ["Conv", "Mul"])
    assert reasons(result) == ""


def test_muls_along_two_axes_fold_only_the_channel_one(rng):
    """A Mul along axis 1 folds into the Conv; the next, along axis 3, is no per-channel map of
    the Conv's outputs and stays."""
    c3 = rng.uniform(0.5, 2.0, (1, 1, 1, 4)).astype(np.float32)
    model, feeds = _conv_then(
        rng, "b = Mul (a, c1)\n y = Mul (b, c3)", {"c1": _channel(rng), "c3": c3}
    )
    folded, result = check_fold(model, feeds, expect_folded=1)
    assert op_types(folded) == ["Conv", "Mul"]
    assert [f.node for f in result.report.folded] == ["Mul(b)"]


def test_an_overridable_constant_is_run_time_data(rng):
    """IR >= 4: an initializer that is also a graph input can be replaced by the caller."""
    model, _ = _conv_then(rng, "y = Mul (a, c)", {"c": _channel(rng)})
    model.graph.input.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, 4, 1, 1]))
    result = bnfold.fold(model)
    assert not result.report.folded and not result.report.skipped
    assert op_types(ir.to_proto(result.model)) == ["Conv", "Mul"]


def test_affine_before_a_bn_nothing_else_folds_merges_into_it(rng):
    """MatMul with a run-time weight -> Add -> BN: nothing folds into the MatMul and the BN's
    output is a graph output, so the Add merges into the BN (one BN: gamma = s, beta = t)."""
    model = make_model(
        f"""{HEADER}
        g (float[3,4] x, float[4,4] W) => (float[3,4] y) {{
          m = MatMul (x, W)
          a = Add (m, c)
          y = BatchNormalization (a, gamma, beta, mean, var)
        }}""",
        {"c": rng.normal(0, 1, 4).astype(np.float32), **bn_stats(rng, 4)},
    )
    feeds = {"x": rng.normal(0, 1, (3, 4)).astype(np.float32),
             "W": rng.normal(0, 1, (4, 4)).astype(np.float32)}  # fmt: skip
    folded, result = check_fold(model, feeds, expect_folded=1)
    assert op_types(folded) == ["MatMul", "BatchNormalization"]
    assert [(f.node, f.fold, f.direction) for f in result.report.folded] == [
        ("Add(a)", "bn+add", "merge")
    ]
    assert folded.graph.node[1].input[0] == "m"
