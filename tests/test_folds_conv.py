"""Conv and ConvTranspose followed by BatchNormalization, as ONNX text, checked under onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from onnx_helpers import (
    bn_stats,
    check_fold,
    initializer,
    make_model,
    op_types,
    reasons,
    set_initializer,
)

import bnfold

ONNX_TYPES = {np.float32: "float", np.float64: "double", np.float16: "float16"}


def _attrs(**attrs) -> str:
    parts = []
    for key, value in attrs.items():
        if value is None:
            continue
        if isinstance(value, str):
            parts.append(f'{key}="{value}"')
        elif isinstance(value, (list, tuple)):
            parts.append(f"{key}=[{', '.join(str(v) for v in value)}]")
        else:
            parts.append(f"{key}={value}")
    return f"<{', '.join(parts)}>" if parts else ""


def conv_bn_model(
    rng,
    op="Conv",
    rank=2,
    cin=4,
    cout=6,
    groups=1,
    kernel=3,
    size=7,
    bias=True,
    dtype=np.float32,
    eps=1e-3,
    opset=17,
    **attrs,
):
    """``op`` (Conv or ConvTranspose) -> BN, random weights and statistics; returns (model, feeds)."""
    ty = ONNX_TYPES[dtype]
    ks = (kernel,) * rank
    w_shape = (cout, cin // groups, *ks) if op == "Conv" else (cin, cout // groups, *ks)
    inits = {"W": rng.normal(0, 0.5, w_shape).astype(dtype)}
    inputs = "x, W"
    if bias:
        inits["B"] = rng.normal(0, 0.5, cout).astype(dtype)
        inputs += ", B"
    inits.update(bn_stats(rng, cout, dtype))
    x_shape = (2, cin, *(size,) * rank)
    text = f"""<ir_version: 8, opset_import: ["" : {opset}]>
    g ({ty}[{", ".join(map(str, x_shape))}] x) => ({ty} y) {{
      c = {op} {_attrs(group=groups if groups != 1 else None, **attrs)} ({inputs})
      y = BatchNormalization <epsilon={eps}> (c, gamma, beta, mean, var)
    }}"""
    model = make_model(text, inits)
    feeds = {"x": rng.normal(0, 1, x_shape).astype(dtype)}
    return model, feeds


CONV_CASES = [
    dict(rank=1),
    dict(rank=1, groups=2, strides=[2], pads=[1, 2]),
    dict(rank=2),
    dict(rank=2, groups=2, pads=[1, 0, 2, 1], strides=[2, 1]),
    dict(rank=2, cin=4, cout=4, groups=4),  # depthwise
    dict(rank=2, cin=3, cout=6, groups=3, dilations=[2, 2], pads=[2, 2, 2, 2]),  # depthwise x2
    dict(rank=2, auto_pad="SAME_UPPER", strides=[2, 2]),
    dict(rank=2, auto_pad="SAME_LOWER"),
    dict(rank=2, auto_pad="VALID", dilations=[1, 2]),
    dict(rank=3, size=5),
    dict(rank=3, size=5, groups=2, strides=[1, 2, 2], pads=[1, 1, 1, 1, 1, 1]),
]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(
    "case", CONV_CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items())
)
def test_conv_bn(rng, case, bias):
    model, feeds = conv_bn_model(rng, bias=bias, **case)
    folded, result = check_fold(model, feeds, expect_folded=1)
    assert op_types(folded) == ["Conv"]
    conv = folded.graph.node[0]
    assert len(conv.input) == 3  # a bias was created when absent
    assert conv.output[0] == "y"  # the Conv output took the BN output's name
    assert result.report.folded[0].fold == "conv+bn"
    assert initializer(folded, conv.input[1]).shape == initializer(model, "W").shape


CONV_T_CASES = [
    dict(rank=1, strides=[2]),
    dict(rank=2),
    dict(rank=2, groups=2, strides=[2, 2], output_padding=[1, 1]),
    dict(rank=2, cin=6, cout=9, groups=3, strides=[2, 3], output_padding=[1, 2], pads=[1, 0, 1, 1]),
    dict(rank=2, cin=4, cout=4, groups=4, strides=[2, 2]),  # depthwise
    dict(rank=2, dilations=[2, 1], auto_pad="SAME_UPPER", strides=[2, 2]),
    dict(rank=3, size=4, groups=2, strides=[2, 2, 2], output_padding=[1, 0, 1]),
]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(
    "case", CONV_T_CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items())
)
def test_conv_transpose_bn(rng, case, bias):
    model, feeds = conv_bn_model(rng, op="ConvTranspose", bias=bias, **{"size": 5, **case})
    folded, result = check_fold(model, feeds, expect_folded=1)
    assert op_types(folded) == ["ConvTranspose"]
    assert folded.graph.node[0].output[0] == "y"
    assert result.report.folded[0].fold == "conv_transpose+bn"


@pytest.mark.parametrize("dtype", [np.float64, np.float16])
@pytest.mark.parametrize("op", ["Conv", "ConvTranspose"])
def test_dtypes(rng, op, dtype):
    """onnxruntime's CPU provider has no float64 Conv: those run on onnx's reference evaluator
    (whose ConvTranspose ignores ``group``, so that case is ungrouped)."""
    groups = 1 if (op, dtype) == ("ConvTranspose", np.float64) else 2
    model, feeds = conv_bn_model(rng, op=op, groups=groups, dtype=dtype)
    runner = "reference" if dtype == np.float64 else "ort"
    folded, _ = check_fold(model, feeds, dtype=dtype, expect_folded=1, runner=runner)
    for tensor in folded.graph.initializer:
        assert tensor.data_type == model.graph.initializer[0].data_type


def test_fp16_overflowing_fold_is_refused(rng):
    """A BN scale that would push fp16 weights past 65504 is refused, not written as inf."""
    model, _ = conv_bn_model(rng, dtype=np.float16, bias=False)
    set_initializer(model, "var", np.full(6, 1e-4, np.float16))
    set_initializer(model, "gamma", np.full(6, 2.0, np.float16))
    weights = initializer(model, "W")
    weights[0, 0, 0, 0] = 4000.0
    set_initializer(model, "W", weights)
    result = bnfold.fold(model.SerializeToString())
    assert not result.report.folded
    assert "overflow" in reasons(result), reasons(result)


def test_fp16_fold_creating_a_few_subnormals_folds(rng):
    """A weight pushed below fp16's smallest normal is off by at most 3e-8: harmless."""
    model, feeds = conv_bn_model(rng, dtype=np.float16, bias=False)
    set_initializer(model, "var", np.full(6, 1e4, np.float16))  # scale ~ 1e-2
    weights = initializer(model, "W")
    weights[1, 0, 0, 0] = 1e-3  # -> 1e-5, below fp16's smallest normal
    set_initializer(model, "W", weights)
    check_fold(model, feeds, dtype=np.float16, expect_folded=1)


def test_fp16_fold_sinking_a_whole_channel_into_subnormals_is_refused(rng):
    """gamma / sqrt(var + eps) ~ 1e-5 puts every folded weight of a channel below 6.1e-5."""
    model, _ = conv_bn_model(rng, dtype=np.float16, bias=False)
    gamma = initializer(model, "gamma")
    gamma[2] = np.float16(1e-5)
    set_initializer(model, "gamma", gamma)
    set_initializer(model, "var", np.full(6, 1.0, np.float16))
    result = bnfold.fold(model.SerializeToString())
    assert not result.report.folded
    assert "1 output channel(s) would fall into float16 subnormals" in reasons(result)
