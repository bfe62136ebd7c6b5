"""The fold arithmetic alone (no graph), against torch's eager modules in float64.

Every layer is built in torch with a BatchNorm in eval mode whose running statistics, gamma and
beta are random (a fresh BN is nearly the identity and proves nothing). The folded weight and
bias from :mod:`bnfold.arithmetic` go into a plain layer, which must match ``bn(layer(x))``.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from bnfold import arithmetic
from bnfold.arithmetic import (
    Affine,
    WeightLayout,
    batchnorm_affine,
    fold_bias,
    input_shift,
    range_problem,
    scale_weight,
    scaled_weight_blocks,
    scaled_weight_problem,
)

EPS = 1e-3


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def _random_bn(torch, bn, rng):
    c = bn.num_features
    with torch.no_grad():
        bn.weight.copy_(torch.from_numpy(rng.choice([-1, 1], c) * rng.uniform(0.3, 3.0, c)))
        bn.bias.copy_(torch.from_numpy(rng.normal(0, 1, c)))
        bn.running_mean.copy_(torch.from_numpy(rng.normal(0, 2, c)))
        bn.running_var.copy_(torch.from_numpy(rng.uniform(0.05, 5.0, c)))
    return bn.eval()


def _bn_affine(bn) -> Affine:
    return batchnorm_affine(
        bn.weight.detach().numpy(),
        bn.bias.detach().numpy(),
        bn.running_mean.numpy(),
        bn.running_var.numpy(),
        bn.eps,
    )


def _np(t):
    return t.detach().numpy()


CONV_CASES = [
    # (rank, cin, cout, groups)
    (1, 4, 6, 1),
    (1, 4, 6, 2),
    (1, 5, 5, 5),  # depthwise
    (2, 4, 6, 1),
    (2, 6, 9, 3),
    (2, 4, 8, 4),  # depthwise with multiplier 2
    (3, 2, 4, 1),
    (3, 4, 4, 2),
]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(("rank", "cin", "cout", "groups"), CONV_CASES)
def test_conv_bn_matches_torch(torch, rng, rank, cin, cout, groups, bias):
    conv_cls = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}[rank]
    bn_cls = {1: torch.nn.BatchNorm1d, 2: torch.nn.BatchNorm2d, 3: torch.nn.BatchNorm3d}[rank]
    conv = conv_cls(cin, cout, 3, groups=groups, bias=bias, padding=1, stride=2).double()
    bn = _random_bn(torch, bn_cls(cout, eps=EPS).double(), rng)
    x = torch.from_numpy(rng.normal(0, 1, (2, cin) + (7,) * rank))
    with torch.no_grad():
        expected = bn(conv(x))
    affine = _bn_affine(bn)
    w = scale_weight(_np(conv.weight), affine.scale, WeightLayout.AXIS0)
    b = fold_bias(_np(conv.bias) if bias else None, affine)
    folded = conv_cls(cin, cout, 3, groups=groups, bias=True, padding=1, stride=2).double()
    with torch.no_grad():
        folded.weight.copy_(torch.from_numpy(w))
        folded.bias.copy_(torch.from_numpy(b))
        got = folded(x)
    np.testing.assert_allclose(_np(got), _np(expected), rtol=1e-10, atol=1e-10)


CONV_T_CASES = [
    (1, 4, 6, 1),
    (1, 4, 6, 2),
    (2, 4, 6, 1),
    (2, 6, 4, 2),
    (2, 6, 9, 3),
    (2, 4, 4, 4),  # depthwise: Cout/group = 1, where torch's fuse_conv_bn_weights(transpose=True)
    (3, 4, 6, 2),  # broadcasts the scale to a weight of the wrong shape (torch 2.13)
]


def _conv_transpose_pair(torch, rng, rank, cin, cout, groups, bias):
    cls = {1: torch.nn.ConvTranspose1d, 2: torch.nn.ConvTranspose2d, 3: torch.nn.ConvTranspose3d}
    bn_cls = {1: torch.nn.BatchNorm1d, 2: torch.nn.BatchNorm2d, 3: torch.nn.BatchNorm3d}[rank]
    kw = {"groups": groups, "stride": 2, "padding": 1, "output_padding": 1}
    conv = cls[rank](cin, cout, 3, bias=bias, **kw).double()
    bn = _random_bn(torch, bn_cls(cout, eps=EPS).double(), rng)
    x = torch.from_numpy(rng.normal(0, 1, (2, cin) + (4,) * rank))
    fresh = cls[rank](cin, cout, 3, bias=True, **kw).double()
    return conv, bn, x, fresh


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(("rank", "cin", "cout", "groups"), CONV_T_CASES)
def test_conv_transpose_bn_matches_torch(torch, rng, rank, cin, cout, groups, bias):
    conv, bn, x, folded = _conv_transpose_pair(torch, rng, rank, cin, cout, groups, bias)
    with torch.no_grad():
        expected = bn(conv(x))
    affine = _bn_affine(bn)
    w = scale_weight(_np(conv.weight), affine.scale, WeightLayout.GROUPED_AXIS1, groups)
    b = fold_bias(_np(conv.bias) if bias else None, affine)
    with torch.no_grad():
        folded.weight.copy_(torch.from_numpy(w))
        folded.bias.copy_(torch.from_numpy(b))
        got = folded(x)
    np.testing.assert_allclose(_np(got), _np(expected), rtol=1e-10, atol=1e-10)


def test_torch_fuse_conv_bn_weights_is_wrong_for_grouped_conv_transpose(torch, rng):
    """torch's ``fuse_conv_bn_weights(..., transpose=True)`` scales weight axis 1 by the whole
    scale vector reshaped to (1, Cout, 1, 1); with group > 1 axis 1 only holds Cout/group
    channels, so it fails (or, where shapes happen to broadcast, is wrong). bnfold's grouped
    layout is right on the same layer."""
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    conv, bn, x, folded = _conv_transpose_pair(torch, rng, 2, 4, 6, 2, True)
    with torch.no_grad():
        expected = bn(conv(x))
    args = (conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)
    torch_ok = True
    try:
        w_t, b_t = fuse_conv_bn_weights(*args, transpose=True)
        with torch.no_grad():
            folded.weight.copy_(w_t)
            folded.bias.copy_(b_t)
            torch_ok = bool(torch.allclose(folded(x), expected, rtol=1e-6, atol=1e-6))
    except RuntimeError:  # (1, Cout, 1, 1) does not broadcast onto (Cin, Cout/group, k, k)
        torch_ok = False
    assert not torch_ok, "torch's grouped ConvTranspose fusion was expected to be wrong"

    affine = _bn_affine(bn)
    w = scale_weight(_np(conv.weight), affine.scale, WeightLayout.GROUPED_AXIS1, 2)
    with torch.no_grad():
        folded.weight.copy_(torch.from_numpy(w))
        folded.bias.copy_(torch.from_numpy(fold_bias(_np(conv.bias), affine)))
        np.testing.assert_allclose(_np(folded(x)), _np(expected), rtol=1e-10, atol=1e-10)

    # With group=1 torch's own function agrees (so the comparison above is fair).
    conv1, bn1, x1, folded1 = _conv_transpose_pair(torch, rng, 2, 4, 6, 1, True)
    w_t, b_t = fuse_conv_bn_weights(
        conv1.weight,
        conv1.bias,
        bn1.running_mean,
        bn1.running_var,
        bn1.eps,
        bn1.weight,
        bn1.bias,
        transpose=True,
    )
    with torch.no_grad():
        folded1.weight.copy_(w_t)
        folded1.bias.copy_(b_t)
        np.testing.assert_allclose(_np(folded1(x1)), _np(bn1(conv1(x1))), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("trans_b", [0, 1])
def test_linear_bn_matches_torch(torch, rng, trans_b, bias):
    """Linear + BatchNorm1d as Gemm: transB=1 computes ``x @ W.T`` with W (M, K) (scale axis 0);
    transB=0 computes ``x @ B`` with B = W.T (K, M) (scale axis 1)."""
    lin = torch.nn.Linear(7, 5, bias=bias).double()
    bn = _random_bn(torch, torch.nn.BatchNorm1d(5, eps=EPS).double(), rng)
    x = rng.normal(0, 1, (4, 7))
    with torch.no_grad():
        expected = _np(bn(lin(torch.from_numpy(x))))
    affine = _bn_affine(bn)
    w = _np(lin.weight)
    b = fold_bias(_np(lin.bias) if bias else None, affine)
    if trans_b:
        got = x @ scale_weight(w, affine.scale, WeightLayout.AXIS0).T + b
    else:
        got = x @ scale_weight(np.ascontiguousarray(w.T), affine.scale, WeightLayout.AXIS1) + b
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_batchnorm_affine_formula():
    gamma, beta = np.array([2.0, -1.0]), np.array([0.5, 3.0])
    mean, var = np.array([1.0, -2.0]), np.array([3.0, 0.25])
    aff = batchnorm_affine(gamma, beta, mean, var, 1.0)
    np.testing.assert_allclose(aff.scale, [2.0 / 2.0, -1.0 / np.sqrt(1.25)])
    np.testing.assert_allclose(aff.shift, beta - aff.scale * mean)
    assert aff.scale.dtype == np.float64


def test_affine_then_composes():
    a = Affine(np.array([2.0, 3.0]), np.array([1.0, -1.0]))
    b = Affine(np.array([-1.0, 0.5]), np.array([4.0, 0.0]))
    x = np.array([0.7, -2.0])
    both = a.then(b)
    np.testing.assert_allclose(
        both.scale * x + both.shift, b.scale * (a.scale * x + a.shift) + b.shift
    )
    with pytest.raises(ValueError):
        Affine(np.ones(2), np.ones(3))


@pytest.mark.parametrize(
    ("layout", "shape", "groups"),
    [
        (WeightLayout.AXIS0, (6, 3, 3, 3), 1),
        (WeightLayout.AXIS1, (9, 6), 1),
        (WeightLayout.GROUPED_AXIS1, (6, 2, 3, 3), 3),
    ],
)
def test_scale_weight_chunked_equals_whole_and_leaves_input(
    monkeypatch, rng, layout, shape, groups
):
    w = rng.normal(0, 1, shape).astype(np.float32)
    before = w.copy()
    n = arithmetic.scaled_channels(shape, layout, groups)
    s = rng.uniform(-2, 2, n)
    whole = scale_weight(w, s, layout, groups)
    monkeypatch.setattr(arithmetic, "_CHUNK_BYTES", 16)  # one row (or less) per chunk
    chunked = scale_weight(w, s, layout, groups)
    np.testing.assert_array_equal(whole, chunked)
    np.testing.assert_array_equal(w, before)
    assert whole.dtype == np.float32
    # the reference: channel o multiplied by s[o], in float64, rounded once
    w64 = w.astype(np.float64)
    if layout is WeightLayout.AXIS0:
        ref = w64 * s.reshape(-1, 1, 1, 1)
    elif layout is WeightLayout.AXIS1:
        ref = w64 * s
    else:
        per = shape[1]
        ref = np.concatenate(
            [
                w64[g * (shape[0] // groups) : (g + 1) * (shape[0] // groups)]
                * s[g * per : (g + 1) * per].reshape(1, per, 1, 1)
                for g in range(groups)
            ]
        )
    np.testing.assert_array_equal(whole, ref.astype(np.float32))


def test_scale_weight_rejects_wrong_channel_count():
    with pytest.raises(ValueError, match=r"scale has shape \(3,\), weight has 4 channels"):
        scale_weight(np.ones((4, 2, 3, 3), np.float32), np.ones(3), WeightLayout.AXIS0)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: scale_weight(np.ones((2, 3, 4)), np.ones(3), WeightLayout.AXIS1),
         r"AXIS1 scales a 2-D weight, not one of shape \(2, 3, 4\)"),
        (lambda: scale_weight(np.ones((4, 2, 3, 3)), np.ones(6), WeightLayout.GROUPED_AXIS1, 3),
         r"weight dim 0 \(4\) not divisible by group=3"),
        (lambda: scaled_weight_blocks(np.ones((4, 2)), np.ones(3), WeightLayout.AXIS0),
         r"scale has shape \(3,\), weight has shape \(4, 2\)"),
        (lambda: input_shift(np.ones((4, 2)), np.ones(3), WeightLayout.AXIS0),
         r"shift has shape \(3,\), weight has shape \(4, 2\)"),
        (lambda: input_shift(np.ones((4, 2, 1)), np.ones(4), WeightLayout.AXIS0),
         r"AXIS0 input shift needs a 2-D weight, not \(4, 2, 1\)"),
        (lambda: input_shift(np.ones((4, 2, 1, 1)), np.ones(6), WeightLayout.GROUPED_AXIS1, 3),
         r"weight dim 0 \(4\) not divisible by group=3"),
    ],
    ids=["axis1-rank3", "groups", "blocks-scale", "shift-size", "shift-rank", "shift-groups"],
)  # fmt: skip
def test_weights_of_the_wrong_shape_raise(call, message):
    """The arithmetic checks its inputs (the folds check them first and refuse)."""
    with pytest.raises(ValueError, match=message):
        call()


def test_scaled_weight_blocks_are_the_scaled_weight(rng):
    w = rng.normal(0, 1, (6, 4, 3, 3)).astype(np.float32)
    s = rng.uniform(0.5, 2.0, 6)
    blocks = scaled_weight_blocks(w, s, WeightLayout.AXIS0)
    assert blocks is not None
    flat = np.concatenate([b.reshape(-1).copy() for b in blocks])
    np.testing.assert_array_equal(flat, scale_weight(w, s, WeightLayout.AXIS0).reshape(-1))
    # a grouped weight's chunks are not consecutive in memory: no blocks
    assert scaled_weight_blocks(w, np.ones(12), WeightLayout.GROUPED_AXIS1, 3) is None


def test_fp16_folded_in_float64_beats_folding_in_fp16(rng):
    """Folding an fp16 layer in float64 and rounding once is more accurate than folding in fp16.

    Ground truth: the fold of the same fp16 weights and statistics in float64, unrounded. Our
    result is one rounding away from it; a fold in fp16 (scale computed and applied in fp16)
    accumulates several roundings. The measured mean-error ratio must exceed 1."""
    c = 256
    w = rng.normal(0, 0.5, (c, 16, 3, 3)).astype(np.float16)
    gamma = rng.uniform(0.5, 2.0, c).astype(np.float16)
    beta = rng.normal(0, 1, c).astype(np.float16)
    mean = rng.normal(0, 1, c).astype(np.float16)
    var = rng.uniform(0.1, 4.0, c).astype(np.float16)
    eps = 1e-3

    aff = batchnorm_affine(gamma, beta, mean, var, eps)
    truth_w = w.astype(np.float64) * aff.scale.reshape(-1, 1, 1, 1)
    truth_b = aff.shift

    ours_w = scale_weight(w, aff.scale, WeightLayout.AXIS0)
    ours_b = fold_bias(None, aff).astype(np.float16)

    s16 = gamma / np.sqrt(var + np.float16(eps))
    naive_w = w * s16.reshape(-1, 1, 1, 1)
    naive_b = beta - s16 * mean
    assert naive_w.dtype == np.float16 and naive_b.dtype == np.float16

    def err(a, truth):
        return float(np.mean(np.abs(a.astype(np.float64) - truth)))

    ratio_w = err(naive_w, truth_w) / err(ours_w, truth_w)
    ratio_b = err(naive_b, truth_b) / err(ours_b, truth_b)
    assert ratio_w > 1.0, ratio_w
    assert ratio_b > 1.0, ratio_b
    # correctly rounded: never more than half an ulp away
    ulp = np.spacing(np.abs(ours_w.astype(np.float16))).astype(np.float64)
    assert np.all(np.abs(ours_w.astype(np.float64) - truth_w) <= ulp / 2 + 1e-300)


def test_scaled_weight_problem_overflow_fp16():
    w = np.full((2, 1, 1, 1), 1000.0, np.float16)
    problem = scaled_weight_problem(w, np.array([100.0, 1.0]), WeightLayout.AXIS0)
    assert problem is not None and problem.overflow == 1 and problem.lossy_channels == 0
    assert "overflow" in str(problem)
    assert scaled_weight_problem(w, np.array([10.0, 1.0]), WeightLayout.AXIS0) is None


def test_a_few_new_fp16_subnormals_are_harmless():
    """Issue 11: a Conv(32->64, 3x3, N(0, 0.1)) channel scaled by 1e-2 puts some weights below
    fp16's smallest normal; their absolute spacing (6e-8) keeps the channel's relative rounding
    error at the level of any fp16 rounding, so the fold is not refused."""
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.1, (64, 32, 3, 3)).astype(np.float16)
    scale = np.full(64, 1e-2)
    product = w.astype(np.float64) * 1e-2
    new = (np.abs(product) < np.finfo(np.float16).tiny) & (product != 0)
    assert new.sum() > 100  # the old rule refused for one
    assert scaled_weight_problem(w, scale, WeightLayout.AXIS0) is None


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_a_channel_wholly_below_the_smallest_normal_is_refused(dtype):
    """Scaled by s = 1e-4 (fp16) every weight of channel 1 is below 6.1e-5: its relative
    rounding error is several unit roundoffs, and the fold is refused, naming the figure."""
    if dtype == "bfloat16":
        dtype = ml_dtypes.bfloat16
    rng = np.random.default_rng(1)
    w = rng.normal(0, 0.1, (4, 8, 3, 3)).astype(dtype)
    tiny = 1e-4 if np.dtype(dtype) == np.float16 else 1e-39
    problem = scaled_weight_problem(w, np.array([1.0, tiny, 1.0, 1.0]), WeightLayout.AXIS0)
    assert problem is not None and problem.lossy_channels == 1 and problem.overflow == 0
    assert problem.worst_roundoffs > 1.0
    assert "1 output channel(s) would fall into" in str(problem) and "subnormals" in str(problem)


def test_forward_scaling_is_judged_per_output_channel():
    """W (K, N) scaled along its input axis 0: one tiny input channel makes a tiny row, but
    every output channel (column) keeps its precision; scaled along outputs it would not."""
    rng = np.random.default_rng(2)
    w = rng.normal(0, 0.1, (6, 5)).astype(np.float16)
    scale = np.array([1.0, 1.0, 1e-5, 1.0, 1.0, 1.0])
    assert scaled_weight_problem(w, scale, WeightLayout.AXIS0, scales_outputs=False) is None
    assert scaled_weight_problem(w, scale, WeightLayout.AXIS0).lossy_channels == 1


def test_forward_scaling_of_a_grouped_conv_is_judged_per_output_channel():
    """A Conv's input channels scaled (forward fold, GROUPED_AXIS1, scales_outputs=False):
    output channel o mixes the Cin/g inputs of its group; one input scaled to subnormals
    spoils no output channel, all of a group's inputs scaled down spoil that group's outputs."""
    rng = np.random.default_rng(3)
    w = rng.normal(0, 0.1, (4, 3, 3, 3)).astype(np.float16)  # group 2: 2 outputs per group
    one = np.ones(6)
    one[1] = 1e-5
    assert (
        scaled_weight_problem(w, one, WeightLayout.GROUPED_AXIS1, 2, scales_outputs=False) is None
    )
    group = np.array([1e-5, 1e-5, 1e-5, 1.0, 1.0, 1.0])
    problem = scaled_weight_problem(w, group, WeightLayout.GROUPED_AXIS1, 2, scales_outputs=False)
    assert problem is not None and problem.lossy_channels == 2 and problem.overflow == 0


def test_scaled_weight_problem_fp32_and_fp64():
    w32 = np.array([[1e38], [1.0]], np.float32)
    assert scaled_weight_problem(w32, np.array([100.0, 1.0]), WeightLayout.AXIS0).overflow == 1
    assert scaled_weight_problem(w32, np.array([1.0, 1e30]), WeightLayout.AXIS0) is None
    # float32 subnormals are not a problem at that precision
    tiny = np.array([[1e-30]], np.float32)
    assert scaled_weight_problem(tiny, np.array([1e-10]), WeightLayout.AXIS0) is None
    w64 = np.array([[1e300]], np.float64)
    assert scaled_weight_problem(w64, np.array([1e10]), WeightLayout.AXIS0).overflow == 1


def test_scaled_weight_problem_grouped_conv_transpose():
    w = np.ones((4, 1, 1, 1), np.float16)  # group 2: channels 0, 1
    assert (
        scaled_weight_problem(w, np.array([1.0, 1e6]), WeightLayout.GROUPED_AXIS1, 2).overflow == 2
    )


def test_range_problem_bias():
    assert range_problem(None, np.array([1e5, 1.0]), np.float16).overflow == 1
    assert range_problem(None, np.array([1e-6]), np.float16) is None  # a subnormal bias is fine
    assert range_problem(np.array([1e-6]), np.array([2e-6]), np.float16) is None
    assert range_problem(None, np.array([1e5]), np.float32) is None
    assert range_problem(np.array([np.inf]), np.array([np.inf]), np.float16) is None  # was inf
    assert range_problem(None, np.array([np.inf]), np.float16).overflow == 1


def test_bfloat16_weights():
    bf16 = np.dtype(ml_dtypes.bfloat16)
    w = np.array([[1.5, -2.0], [3.0, 0.25]], dtype=bf16)
    out = scale_weight(w, np.array([2.0, 0.5]), WeightLayout.AXIS0)
    assert out.dtype == bf16
    np.testing.assert_array_equal(out.astype(np.float64), [[3.0, -4.0], [1.5, 0.125]])
    assert scaled_weight_problem(w, np.array([1e39, 1.0]), WeightLayout.AXIS0).overflow == 2
