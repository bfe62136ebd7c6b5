"""Per-channel int8 weights as onnxruntime quantizes them, and what a forward BN fold does to them.

numpy in, numpy out: no onnx, no onnx-ir, no onnxruntime (the forward folds call these on the
consumer's weight before they fold).

**Quantization** (onnxruntime 1.32, ``quantize_static`` with ``QuantFormat.QDQ`` and
``per_channel=True``: ``qdq_quantizer.calc_quant_params`` -> ``quant_utils.compute_data_quant_params``
/ ``compute_scale_zp``, then ``quantize_onnx_initializer`` -> ``quantize_nparray``). Per output
channel c of W, always symmetric:

    r_max[c] = max(|min(W[c]) ∧ 0|, |max(W[c]) ∨ 0|)            (0 is always in the range)
    scale[c] = 2·r_max[c] / (q_max − q_min)                      (float64, stored as W's dtype)
    zp       = round((q_min + q_max) / 2)                        (int8: 0, uint8: 128)
    q        = clip(round(float32(W[c]) / scale[c]) + zp, type min, type max)   (half to even)

with (q_min, q_max) = (−127, 127) for int8, (0, 255) for uint8, and with ``reduce_range`` (7-bit
weights) (−64, 64) and (0, 127) (zp 64). A channel whose scale falls below the dtype's smallest
normal (all zeros) gets scale 1 and zero point 0. The clip is to the full type range.

**Forward fold.** A BN y = s·x + t folded into the next layer W scales W along its *input* axis:
W' = W·diag(s). Per-output-channel quantization takes one scale per *output* channel, so one large
s_j (a dead ReLU channel: running var ~1e-20, s ≈ γ/√eps ≈ 316) makes column j the largest entry
of every row and the rest of the row rounds to zero. :func:`forward_fold_effect` measures that;
:func:`int8_forward_refusal` turns it into a refusal reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "MAX_ERROR_RATIO",
    "compare_folded",
    "MAX_ZERO_SHARE_INCREASE",
    "WEIGHT_TYPES",
    "ForwardFoldEffect",
    "QuantizedWeights",
    "forward_fold_effect",
    "int8_forward_refusal",
    "quantize_per_channel",
    "scale_spread",
    "weight_qrange",
    "zero_share",
]

WEIGHT_TYPES = ("int8", "uint8")

# (q_min, q_max) of the symmetric scale, and the clip range, per weight type
_SCALE_RANGE = {("int8", False): (-127, 127), ("int8", True): (-64, 64),
                ("uint8", False): (0, 255), ("uint8", True): (0, 127)}  # fmt: skip
_CLIP_RANGE = {"int8": (-128, 127), "uint8": (0, 255)}
_NP_TYPES = {"int8": np.int8, "uint8": np.uint8}

# Thresholds of int8_forward_refusal, measured on the digits MLP and CNN with BN after ReLU
# (benchmarks/int8_forward_guard.py: 3 seeds x 10 epochs, 21 BN -> next-layer pairs; table in the
# README). The 9 pairs fed by dead ReLU channels raised the share of live weights rounding to
# zero by 16-29 points (30-61 with reduce_range, 13-25 without calibration data to mark the dead
# channels) and their relative quantization error 5.1-55x (1.4-2.9x without data: the dead
# columns' own, now large, weights dominate the norm). The 12 others raised the share by at most
# 1.0 point and the error at most 1.51x. Where the error ratio stayed under 2, the int8 model's
# mean logit error did not grow (Gemm folds, measured end to end).
MAX_ZERO_SHARE_INCREASE = 0.02  # 2 percentage points of the live nonzero weights
MAX_ERROR_RATIO = 2.0  # relative quantization error of the live weights, folded / unfolded


def weight_qrange(weight_type: str = "int8", reduce_range: bool = False) -> tuple[int, int]:
    """(q_min, q_max) onnxruntime derives the per-channel scale from."""
    if weight_type not in WEIGHT_TYPES:
        raise ValueError(
            f"weight_type must be one of {', '.join(WEIGHT_TYPES)}, not {weight_type!r}"
        )
    return _SCALE_RANGE[weight_type, bool(reduce_range)]


@dataclass(frozen=True)
class QuantizedWeights:
    """Quantized values (the weight's shape), and one scale and zero point per channel of ``axis``."""

    values: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    axis: int

    def _per_channel(self, a: np.ndarray) -> np.ndarray:
        shape = [1] * self.values.ndim
        shape[self.axis] = -1
        return a.reshape(shape)

    def dequantized(self) -> np.ndarray:
        """(q − zp)·scale in float64: what DequantizeLinear gives back."""
        zp = self._per_channel(self.zero_point.astype(np.float64))
        return (self.values.astype(np.float64) - zp) * self._per_channel(
            self.scale.astype(np.float64)
        )

    def is_zero(self) -> np.ndarray:
        """Where the quantized value is the zero point (dequantizes to exactly 0)."""
        return self.values == self._per_channel(self.zero_point)


def _axis(axis: int, ndim: int) -> int:
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of range for a rank-{ndim} weight")
    return axis % ndim


def quantize_per_channel(
    w: np.ndarray, axis: int, *, weight_type: str = "int8", reduce_range: bool = False
) -> QuantizedWeights:
    """Quantize ``w`` per channel of ``axis`` exactly as onnxruntime's QDQ quantizer does."""
    w = np.asarray(w)
    if w.dtype.kind != "f":
        raise ValueError(f"expected a float weight, got {w.dtype}")
    axis = _axis(axis, w.ndim)
    qmin, qmax = weight_qrange(weight_type, reduce_range)
    rows = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
    channels = rows.shape[0]
    if rows.shape[1] == 0:
        scale = np.ones(channels, dtype=w.dtype)
        zero_point = np.zeros(channels, dtype=_NP_TYPES[weight_type])
    else:
        zero = np.zeros((), dtype=w.dtype)
        r_max = np.maximum(
            np.abs(np.minimum(rows.min(axis=1), zero)), np.maximum(rows.max(axis=1), zero)
        )
        scale64 = (r_max.astype(np.float64) - (-r_max).astype(np.float64)) / float(qmax - qmin)
        stored = scale64.astype(w.dtype)
        finfo = np.finfo(w.dtype)
        # below the smallest normal (float16: the smallest subnormal, compared after rounding)
        tiny = stored < finfo.smallest_subnormal if w.dtype == np.float16 else scale64 < finfo.tiny
        mid = np.round((qmin + qmax) / 2.0)
        scale = np.where(tiny, np.ones((), dtype=w.dtype), stored).astype(w.dtype)
        zero_point = np.where(tiny, 0, mid).astype(_NP_TYPES[weight_type])
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.round(w.astype(np.float32) / scale.reshape(shape)) + zero_point.reshape(shape)
    lo, hi = _CLIP_RANGE[weight_type]
    values = np.clip(q, lo, hi).astype(_NP_TYPES[weight_type])
    return QuantizedWeights(values, scale, zero_point, axis)


def _live_mask(w: np.ndarray, in_axis: int | None, live: np.ndarray | None) -> np.ndarray:
    """Boolean mask of ``w``'s shape: True where the weight reads a live input channel."""
    if live is None:
        return np.ones(w.shape, dtype=bool)
    if in_axis is None:
        raise ValueError("live needs in_axis (the axis live indexes)")
    in_axis = _axis(in_axis, w.ndim)
    live = np.asarray(live, dtype=bool)
    if live.shape != (w.shape[in_axis],):
        raise ValueError(f"live has shape {live.shape}, expected ({w.shape[in_axis]},)")
    shape = [1] * w.ndim
    shape[in_axis] = -1
    return np.broadcast_to(live.reshape(shape), w.shape)


def zero_share(
    w: np.ndarray,
    out_axis: int,
    *,
    in_axis: int | None = None,
    live: np.ndarray | None = None,
    weight_type: str = "int8",
    reduce_range: bool = False,
) -> float:
    """Share of the nonzero weights that quantize to the zero point (their information is lost).

    Counts only weights reading a ``live`` input channel (a bool per index of ``in_axis``) when
    given. Weights that are exactly 0 in float are not counted: they lose nothing.
    """
    w = np.asarray(w)
    return _masked_zero_share(w, out_axis, _live_mask(w, in_axis, live), weight_type, reduce_range)


def _masked_zero_share(
    w: np.ndarray, out_axis: int, mask: np.ndarray, weight_type: str, reduce_range: bool
) -> float:
    counted = (w != 0) & mask
    total = int(counted.sum())
    if total == 0:
        return 0.0
    q = quantize_per_channel(w, out_axis, weight_type=weight_type, reduce_range=reduce_range)
    return int((q.is_zero() & counted).sum()) / total


def _relative_error(
    w: np.ndarray, out_axis: int, mask: np.ndarray, weight_type: str, reduce_range: bool
) -> float:
    """‖dequantize(quantize(w)) − w‖ / ‖w‖ over the masked weights."""
    q = quantize_per_channel(w, out_axis, weight_type=weight_type, reduce_range=reduce_range)
    exact = w.astype(np.float64)[mask]
    norm = float(np.linalg.norm(exact))
    if norm == 0.0:
        return 0.0
    return float(np.linalg.norm(q.dequantized()[mask] - exact)) / norm


def scale_spread(s: np.ndarray) -> float:
    """max|s| / median|s|: how far the largest BN scale stands above a typical one."""
    a = np.abs(np.asarray(s, dtype=np.float64)).ravel()
    if a.size == 0:
        raise ValueError("no scales")
    median, peak = float(np.median(a)), float(a.max())
    if median == 0.0:
        return 1.0 if peak == 0.0 else math.inf
    return peak / median


@dataclass(frozen=True)
class ForwardFoldEffect:
    """What W' = W·diag(s) along the input axis does to W's per-output-channel int8 weights.

    ``zero_share_*``: share of the live nonzero weights that round to zero (see :func:`zero_share`);
    ``error_*``: relative quantization error ‖Q(W) − W‖ / ‖W‖ of the live weights;
    ``spread``: :func:`scale_spread` of s, ``spread_live`` of s on the live channels only.
    """

    spread: float
    spread_live: float | None
    zero_share_before: float
    zero_share_after: float
    error_before: float
    error_after: float
    channels: int
    live_channels: int
    weight_type: str
    reduce_range: bool

    @property
    def zero_share_increase(self) -> float:
        return self.zero_share_after - self.zero_share_before

    @property
    def error_ratio(self) -> float:
        if self.error_before == 0.0:
            return 1.0 if self.error_after == 0.0 else math.inf
        return self.error_after / self.error_before

    def to_dict(self) -> dict[str, float | int | str | bool | None]:
        """Plain JSON values (non-finite floats as strings)."""
        d: dict[str, float | int | str | bool | None] = {}
        for key, value in {**vars(self), "zero_share_increase": self.zero_share_increase,
                           "error_ratio": self.error_ratio}.items():  # fmt: skip
            d[key] = str(value) if isinstance(value, float) and not math.isfinite(value) else value
        return d


def forward_fold_effect(
    w: np.ndarray,
    s: np.ndarray,
    out_axis: int,
    in_axis: int,
    *,
    live: np.ndarray | None = None,
    weight_type: str = "int8",
    reduce_range: bool = False,
) -> ForwardFoldEffect:
    """Quantize W and W' = W·s (s along ``in_axis``, computed in float64, rounded once to W's
    dtype as the fold does) per channel of ``out_axis``, and compare them on the live weights.

    ``s`` has one value per index of ``in_axis``: for a Gemm after Flatten repeat each channel's
    s over its block of features, for a grouped Conv pass the group's slice. ``live`` (a bool per
    index of ``in_axis``, e.g. from :func:`bnfold.quantize.channels.dead_channels`) restricts
    the counts to weights whose input carries information; default: all.
    """
    w = np.asarray(w)
    s = np.asarray(s, dtype=np.float64).ravel()
    in_axis = _axis(in_axis, w.ndim)
    out_axis = _axis(out_axis, w.ndim)
    if in_axis == out_axis:
        raise ValueError("in_axis and out_axis must differ")
    if s.shape != (w.shape[in_axis],):
        raise ValueError(
            f"s has {s.size} values, the weight's axis {in_axis} has {w.shape[in_axis]}"
        )
    shape = [1] * w.ndim
    shape[in_axis] = -1
    folded = (w.astype(np.float64) * s.reshape(shape)).astype(w.dtype)
    mask = _live_mask(w, in_axis, live)
    live_s = s if live is None else s[np.asarray(live, dtype=bool)]
    return compare_folded(
        w, folded, out_axis, mask, spread=scale_spread(s),
        spread_live=None if live is None or live_s.size == 0 else scale_spread(live_s),
        channels=int(s.size), live_channels=int(s.size if live is None else np.count_nonzero(live)),
        weight_type=weight_type, reduce_range=reduce_range,
    )  # fmt: skip


def compare_folded(
    w: np.ndarray,
    folded: np.ndarray,
    out_axis: int,
    mask: np.ndarray | None = None,
    *,
    spread: float,
    spread_live: float | None = None,
    channels: int,
    live_channels: int | None = None,
    weight_type: str = "int8",
    reduce_range: bool = False,
) -> ForwardFoldEffect:
    """Quantize ``w`` and its folded form per channel of ``out_axis`` and compare them on the
    weights ``mask`` selects (default: all). The forward folds call this with the weight they
    computed (any layout: grouped Conv input channels too)."""
    out_axis = _axis(out_axis, w.ndim)
    mask = np.ones(w.shape, dtype=bool) if mask is None else mask
    return ForwardFoldEffect(
        spread=spread,
        spread_live=spread_live,
        zero_share_before=_masked_zero_share(w, out_axis, mask, weight_type, reduce_range),
        zero_share_after=_masked_zero_share(folded, out_axis, mask, weight_type, reduce_range),
        error_before=_relative_error(w, out_axis, mask & (w != 0), weight_type, reduce_range),
        error_after=_relative_error(
            folded, out_axis, mask & (folded != 0), weight_type, reduce_range
        ),
        channels=channels,
        live_channels=channels if live_channels is None else live_channels,
        weight_type=weight_type,
        reduce_range=bool(reduce_range),
    )


def int8_forward_refusal(
    effect: ForwardFoldEffect,
    *,
    max_zero_share_increase: float = MAX_ZERO_SHARE_INCREASE,
    max_error_ratio: float = MAX_ERROR_RATIO,
) -> str | None:
    """The reason to skip a forward fold for an int8 target, or None when it is harmless.

    Refused when the fold raises the share of live weights that round to zero by more than
    ``max_zero_share_increase`` (absolute), or multiplies their relative quantization error by more
    than ``max_error_ratio``. The reason carries the figures.
    """
    if (
        effect.zero_share_increase <= max_zero_share_increase
        and effect.error_ratio <= max_error_ratio
    ):
        return None
    spread = f"{effect.spread:.3g}" if math.isfinite(effect.spread) else "inf"
    dead = effect.channels - effect.live_channels
    return (
        f"int8: folding would round {effect.zero_share_after:.1%} of the consumer's live weights "
        f"to zero ({effect.zero_share_before:.1%} unfolded) and raise their quantization error "
        f"{effect.error_ratio:.3g}x; BN scale spread {spread} (max|s| / median|s|)"
        + (
            f"; {dead} of {effect.channels} input channels dead in the calibration data"
            if dead
            else ""
        )
    )
