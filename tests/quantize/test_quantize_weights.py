"""The int8 arithmetic (bnfold.int8, channels): by hand, and against the weights
onnxruntime's quantizer actually writes into a QDQ model."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from onnx_helpers import make_model

import bnfold
from bnfold.int8 import MAX_ERROR_RATIO, MAX_ZERO_SHARE_INCREASE, weight_qrange
from bnfold.quantize import (
    ChannelRange,
    QuantTypes,
    dead_channels,
    digits_dataset,
    forward_fold_effect,
    int8_forward_refusal,
    ort_quantize,
    quantize_per_channel,
    scale_spread,
    zero_share,
)

ZOO = Path(__file__).resolve().parents[2] / "models" / "zoo"


def test_quantize_per_channel_by_hand():
    w = np.array([[0.5, -1.0, 0.25], [0.0, 0.0, 0.0], [0.1, 0.2, -0.05]], np.float32)
    q = quantize_per_channel(w, 0)
    # row 0: scale = 2 * 1.0 / 254 = 1/127; 0.5*127 = 63.5 rounds half to even -> 64
    assert q.scale[0] == np.float32(1 / 127)
    assert q.values[0].tolist() == [64, -127, 32]
    # an all-zero channel: scale 1, zero point 0 (onnxruntime's rule for a scale below tiny)
    assert q.scale[1] == 1.0 and q.values[1].tolist() == [0, 0, 0]
    # row 2: r_max 0.2 -> -0.05 / (0.2/127) = -31.75 -> -32
    assert q.values[2].tolist() == [64, 127, -32]
    assert q.values.dtype == np.int8 and q.zero_point.tolist() == [0, 0, 0]
    reduced = quantize_per_channel(w, 0, reduce_range=True)  # 7-bit: (-64, 64)
    assert reduced.scale[0] == np.float32(1 / 64)
    assert reduced.values[0].tolist() == [32, -64, 16]
    assert weight_qrange("int8", True) == (-64, 64) and weight_qrange("uint8") == (0, 255)
    u = quantize_per_channel(w, 0, weight_type="uint8")
    assert u.values.dtype == np.uint8 and u.zero_point[0] == 128
    np.testing.assert_allclose(u.dequantized()[0], w[0], atol=float(u.scale[0]) / 2 + 1e-7)
    # the axis is the output channel: axis 1 quantizes columns
    cols = quantize_per_channel(w, 1)
    assert cols.scale.shape == (3,) and cols.scale[1] == np.float32(1.0 / 127)


def test_zero_share_and_scale_spread_by_hand():
    w = np.array([[1.0, 0.003, 0.5, 0.0]], np.float32)  # 0.003*127 = 0.38 -> 0; exact 0 not counted
    assert zero_share(w, 0) == pytest.approx(1 / 3)
    assert zero_share(w, 0, in_axis=1, live=np.array([True, False, True, True])) == 0.0
    with pytest.raises(ValueError, match="in_axis"):
        zero_share(w, 0, live=np.ones(4, bool))
    assert scale_spread(np.array([1.0, 2.0, -3.0, 316.0])) == pytest.approx(316 / 2.5)
    assert scale_spread(np.zeros(3)) == 1.0
    assert math.isinf(scale_spread(np.array([0.0, 0.0, 1.0])))


def test_forward_fold_effect_and_refusal_by_hand(rng):
    w = rng.uniform(-0.1, 0.1, (8, 6)).astype(np.float32)  # (out, in), as a Gemm with transB=1
    dead = np.array([True, False, False, False, False, False])
    harmful = np.array([316.0, 2.0, 3.0, 2.5, 4.0, 3.5])  # a dead ReLU channel: gamma/sqrt(eps)
    eff = forward_fold_effect(w, harmful, out_axis=0, in_axis=1, live=~dead)
    # column 0 becomes up to ~30: a step of max|row|/127 ~ 0.25, and every live weight under
    # half a step rounds to zero
    folded = w.astype(np.float64) * harmful
    half_step = np.abs(folded).max(axis=1, keepdims=True) / 127 / 2
    expected = (np.abs(folded[:, 1:]) < half_step).mean()
    assert eff.zero_share_before == 0.0 and eff.zero_share_after == pytest.approx(expected)
    assert eff.zero_share_after > 0.15
    assert eff.error_ratio > 10 and eff.spread == pytest.approx(316 / 3.25)
    assert eff.spread_live == pytest.approx(4.0 / 3.0) and eff.live_channels == 5
    reason = int8_forward_refusal(eff)
    assert reason is not None and "1 of 6 input channels dead" in reason
    assert f"{eff.zero_share_after:.1%}" in reason and "spread 97.2" in reason
    harmless = forward_fold_effect(w, harmful[1:].tolist() + [3.0], 0, 1)
    assert harmless.error_ratio < MAX_ERROR_RATIO
    assert harmless.zero_share_increase < MAX_ZERO_SHARE_INCREASE
    assert int8_forward_refusal(harmless) is None
    # the thresholds are parameters
    assert int8_forward_refusal(harmless, max_error_ratio=0.5) is not None
    d = eff.to_dict()
    assert d["zero_share_increase"] == eff.zero_share_increase and d["channels"] == 6
    with pytest.raises(ValueError, match="s has"):
        forward_fold_effect(w, harmful[:3], 0, 1)


def test_dead_channels_by_hand():
    x = np.zeros((5, 3, 2, 2), np.float32)
    x[:, 1] = np.arange(20, dtype=np.float32).reshape(5, 2, 2)
    x[:, 2] = 7.0  # constant but not zero: dead as well
    assert dead_channels(x).tolist() == [True, False, True]
    r = ChannelRange(3)
    r.update(x[:2])
    r.update(x[2:])
    assert r.dead().tolist() == [True, False, True] and r.samples == 5
    assert r.min[2] == r.max[2] == 7.0
    with pytest.raises(ValueError, match="channels"):
        r.update(np.zeros((2, 4)))


def _quantized_weights(
    qdq: onnx.ModelProto,
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, int]]:
    """Float weight name -> (quantized values, scale, zero point, axis), read from DQ nodes."""
    inits = {t.name: numpy_helper.to_array(t) for t in qdq.graph.initializer}
    out = {}
    for node in qdq.graph.node:
        if node.op_type != "DequantizeLinear" or not node.input[0].endswith("_quantized"):
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), None)
        values = inits[node.input[0]]
        if axis is None or inits[node.input[1]].ndim == 0 or values.dtype == np.int32:
            continue  # per-tensor, or an int32 bias (scale = input scale x weight scale)
        name = node.input[0].removesuffix("_quantized")
        out[name] = (inits[node.input[0]], inits[node.input[1]], inits[node.input[2]], axis)
    return out


@pytest.mark.parametrize(
    ("weight", "reduce_range"), [("int8", False), ("int8", True), ("uint8", False), ("uint8", True)]
)
def test_matches_onnxruntime_weights_on_a_zoo_model(tmp_path, weight, reduce_range):
    folded = tmp_path / "folded.onnx"
    bnfold.fold(ZOO / "digits_cnn.onnx").save(folded)
    out = tmp_path / "int8.onnx"
    types = QuantTypes("uint8", weight, reduce_range, "test")
    ort_quantize(folded, out, digits_dataset("train", limit=32), types)
    source = {t.name: numpy_helper.to_array(t) for t in onnx.load(folded).graph.initializer}
    found = _quantized_weights(onnx.load(out))
    assert len(found) == 5  # three Conv and two Gemm weights
    for name, (values, scale, zp, axis) in found.items():
        ours = quantize_per_channel(
            source[name], axis, weight_type=weight, reduce_range=reduce_range
        )
        assert ours.values.dtype == values.dtype
        np.testing.assert_array_equal(ours.values, values, err_msg=name)
        np.testing.assert_array_equal(ours.scale, scale, err_msg=name)
        np.testing.assert_array_equal(ours.zero_point, zp, err_msg=name)
        counted = source[name] != 0
        share = (
            values == zp.reshape([-1 if i == axis else 1 for i in range(values.ndim)])
        ) & counted
        assert zero_share(source[name], axis, weight_type=weight, reduce_range=reduce_range) == (
            share.sum() / counted.sum()
        )


def test_matches_onnxruntime_on_zero_and_subnormal_channels(tmp_path):
    w = np.array(
        [[0.0, 0.0, 0.0], [1e-40, -1e-40, 0.0], [0.3, -0.7, 0.05], [2.0, 1.0, -0.5]], np.float32
    )  # (in 3 -> out 4) as Gemm transB=1: output channels on axis 0
    model = make_model(
        """<ir_version: 8, opset_import: ["" : 17]>
        g (float[N,3] x) => (float[N,4] y) {
          y = Gemm <transB: int = 1> (x, W, B)
        }""",
        {"W": w, "B": np.zeros(4, np.float32)},
    )
    src, out = tmp_path / "gemm.onnx", tmp_path / "gemm.int8.onnx"
    onnx.save(model, src)
    from bnfold.quantize import Batch, Dataset

    data = Dataset(
        "random",
        [Batch("r", {"x": np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)})],
    )
    ort_quantize(src, out, data, QuantTypes("uint8", "int8", False, "test"))
    ((values, scale, zp, axis),) = _quantized_weights(onnx.load(out)).values()
    ours = quantize_per_channel(w, axis)
    np.testing.assert_array_equal(ours.values, values)
    np.testing.assert_array_equal(ours.scale, scale)
    assert ours.scale[0] == ours.scale[1] == 1.0  # below float32's smallest normal


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: weight_qrange("int4"), "weight_type must be one of int8, uint8, not 'int4'"),
        (lambda: quantize_per_channel(np.ones((2, 3)), 2), "axis 2 is out of range for a rank-2"),
        (lambda: quantize_per_channel(np.ones((2, 3), np.int32), 0), "expected a float weight"),
        (lambda: zero_share(np.ones((2, 3)), 0, live=np.ones(3, bool)), "live needs in_axis"),
        (lambda: zero_share(np.ones((2, 3)), 0, in_axis=1, live=np.ones(2, bool)),
         r"live has shape \(2,\), expected \(3,\)"),
        (lambda: scale_spread(np.array([])), "no scales"),
        (lambda: forward_fold_effect(np.ones((2, 3)), np.ones(2), 0, 0),
         "in_axis and out_axis must differ"),
        (lambda: forward_fold_effect(np.ones((2, 3)), np.ones(2), 0, 1),
         "s has 2 values, the weight's axis 1 has 3"),
    ],
    ids=["type", "axis", "dtype", "live-axis", "live-shape", "spread", "axes", "s-size"],
)  # fmt: skip
def test_bad_arguments_raise(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_degenerate_weights():
    """No values per channel: scale 1 (as for an all-zero channel); no nonzero weight: nothing
    can round to zero; an all-zero weight has no quantization error, and a fold of it neither."""
    q = quantize_per_channel(np.zeros((3, 0), np.float32), 0)
    assert q.values.shape == (3, 0) and q.scale.tolist() == [1.0, 1.0, 1.0]
    assert zero_share(np.zeros((2, 3), np.float32), 0) == 0.0
    effect = forward_fold_effect(np.zeros((2, 3), np.float32), np.array([1.0, 5.0, 1.0]), 0, 1)
    assert (effect.error_before, effect.error_after, effect.error_ratio) == (0.0, 0.0, 1.0)
    assert int8_forward_refusal(effect) is None
    assert scale_spread(np.zeros(3)) == 1.0 and scale_spread(np.array([0.0, 0.0, 2.0])) == math.inf
