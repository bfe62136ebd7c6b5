"""The fold arithmetic: numpy in, numpy out, no graph.

Backward (into the producer): a per-channel affine map ``y = s * z + t`` (BatchNormalization in
inference, or a per-channel Mul/Add) applied to a linear layer's output ``z = W x + b`` is the
linear layer ``y = (s W) x + (s b + t)``: the weight is scaled along its OUTPUT-channel axis.
For BatchNormalization::

    s = gamma / sqrt(var + eps)
    t = beta - s * mean          so   b' = s * (b - mean) + beta

Forward (into the consumer): a linear layer reading ``s * x + t`` computes
``W (s x + t) + b = (W diag(s)) x + (b + W t)``: the weight is scaled along its INPUT-channel
axis and the bias gains ``W t`` (:func:`input_shift`), exact where every output sees a full
window of inputs (no padding).

The scale and shift are computed in float64 from the parameters; a weight is scaled in chunks,
each chunk promoted to float64 and rounded once to the weight's dtype, so no whole-tensor
float64 copy is ever made.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np

from bnfold.pages import max_abs, release_pages

# Work on at most this many bytes of float64 at a time while scaling a weight.
_CHUNK_BYTES = 32 * 1024 * 1024


class WeightLayout(Enum):
    """Which axis of a weight tensor is scaled, one factor per channel.

    AXIS0: axis 0. Output channels of Conv (Cout, Cin/g, k...) and of Gemm transB=1 (M, K);
      input features of MatMul / Gemm transB=0 (K, M).
    AXIS1: axis 1 of a 2-D weight. Output features of MatMul / Gemm transB=0 (K, M); input
      features of Gemm transB=1 (M, K).
    GROUPED_AXIS1: axis 1 of a grouped weight (D0, D1, k...): channel ``g * D1 + j`` is
      ``W[g*D0/group:(g+1)*D0/group, j]``. Output channels of ConvTranspose (Cin, Cout/g, k...);
      input channels of Conv (Cout, Cin/g, k...). (Scaling axis 1 by ``s[:D1]`` alone is wrong
      for group > 1.)
    """

    AXIS0 = "axis0"
    AXIS1 = "axis1"
    GROUPED_AXIS1 = "grouped_axis1"


@dataclass(frozen=True)
class Affine:
    """Per-channel ``y = scale * x + shift`` in float64."""

    scale: np.ndarray
    shift: np.ndarray

    def __post_init__(self) -> None:
        if self.scale.shape != self.shift.shape or self.scale.ndim != 1:
            raise ValueError(f"scale {self.scale.shape} and shift {self.shift.shape} must be (C,)")

    @classmethod
    def identity(cls, channels: int) -> Affine:
        return cls(np.ones(channels), np.zeros(channels))

    def then(self, other: Affine) -> Affine:
        """The map ``other(self(x))``."""
        return Affine(other.scale * self.scale, other.scale * self.shift + other.shift)

    @property
    def has_shift(self) -> bool:
        return bool(np.any(self.shift != 0))


def batchnorm_affine(
    gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray, var: np.ndarray, eps: float
) -> Affine:
    """Inference BatchNormalization as ``s * x + t``, in float64."""
    g, b, m, v = (np.asarray(a, dtype=np.float64).reshape(-1) for a in (gamma, beta, mean, var))
    s = g / np.sqrt(v + np.float64(eps))
    return Affine(s, b - s * m)


def scaled_channels(shape: tuple[int, ...], layout: WeightLayout, groups: int = 1) -> int:
    """Number of channels along the scaled axis of a weight of ``shape``."""
    if layout is WeightLayout.AXIS0:
        return shape[0]
    if layout is WeightLayout.AXIS1:
        return shape[1]
    return shape[1] * groups


Index = tuple[slice, ...]


def _chunks(
    w: np.ndarray, scale: np.ndarray, layout: WeightLayout, groups: int
) -> Iterator[tuple[Index, np.ndarray, np.ndarray]]:
    """Yield ``(index, w_chunk, scale_chunk)`` with ``scale_chunk`` broadcastable to the chunk.

    ``index`` addresses the chunk in ``w`` reshaped by :func:`_grouped_shape`.
    """
    n = scaled_channels(w.shape, layout, groups)
    if scale.shape != (n,):
        raise ValueError(f"scale has shape {scale.shape}, weight has {n} channels on that axis")
    if layout is WeightLayout.AXIS1 and w.ndim != 2:
        raise ValueError(f"AXIS1 scales a 2-D weight, not one of shape {w.shape}")
    if layout is WeightLayout.GROUPED_AXIS1:
        if groups < 1 or w.shape[0] % groups:
            raise ValueError(f"weight dim 0 ({w.shape[0]}) not divisible by group={groups}")
        src: np.ndarray = w.reshape(_grouped_shape(w.shape, layout, groups))
        s = scale.reshape(groups, 1, w.shape[1], *([1] * (w.ndim - 2)))
        row = int(np.prod(src.shape[2:])) * groups * 8
        step = max(1, _CHUNK_BYTES // max(1, row))
        for i in range(0, src.shape[1], step):
            idx = (slice(None), slice(i, i + step))
            yield idx, src[idx], s
    elif layout is WeightLayout.AXIS0:
        row = int(np.prod(w.shape[1:])) * 8
        step = max(1, _CHUNK_BYTES // max(1, row))
        tail = (1,) * (w.ndim - 1)
        for i in range(0, w.shape[0], step):
            yield (slice(i, i + step),), w[i : i + step], scale[i : i + step].reshape(-1, *tail)
    else:  # (K, M): chunk over rows K; the scale runs along M
        step = max(1, _CHUNK_BYTES // max(1, w.shape[1] * 8))
        for i in range(0, w.shape[0], step):
            yield (slice(i, i + step),), w[i : i + step], scale


def _grouped_shape(shape: tuple[int, ...], layout: WeightLayout, groups: int) -> tuple[int, ...]:
    if layout is WeightLayout.GROUPED_AXIS1:
        return (groups, shape[0] // groups, shape[1], *shape[2:])
    return tuple(shape)


def scale_weight(
    w: np.ndarray, scale: np.ndarray, layout: WeightLayout, groups: int = 1
) -> np.ndarray:
    """Return ``w`` with channel ``c`` of the ``layout`` axis multiplied by ``scale[c]``, in ``w.dtype``.

    Each chunk is computed in float64 and rounded once. ``w`` is never modified.
    """
    scale = np.asarray(scale, dtype=np.float64)
    out = np.empty(_grouped_shape(w.shape, layout, groups), dtype=w.dtype)
    for idx, chunk, s in _chunks(w, scale, layout, groups):
        _scale_into(out[idx], chunk, s)
        release_pages(chunk)
    return out.reshape(w.shape)


def scaled_weight_blocks(
    w: np.ndarray, scale: np.ndarray, layout: WeightLayout, groups: int = 1
) -> Iterator[np.ndarray] | None:
    """``scale_weight(w, scale, ...)`` as consecutive C-order blocks, or None if it cannot be.

    The blocks, concatenated, are the flattened result of :func:`scale_weight` (same values),
    so a tensor can be written block by block without ever being whole in memory. One buffer
    is reused: each block is valid only until the next one is requested. Grouped
    GROUPED_AXIS1 weights (whose chunks are not consecutive) give None.
    """
    if layout is WeightLayout.GROUPED_AXIS1 and groups != 1:
        return None
    scale = np.asarray(scale, dtype=np.float64)
    if scale.shape != (scaled_channels(w.shape, layout, groups),):
        raise ValueError(f"scale has shape {scale.shape}, weight has shape {w.shape}")

    def blocks() -> Iterator[np.ndarray]:
        buf: np.ndarray | None = None
        for _, chunk, s in _chunks(w, scale, layout, groups):
            if buf is None or buf.size < chunk.size:
                buf = np.empty(chunk.size, dtype=w.dtype)
            out = buf[: chunk.size].reshape(chunk.shape)
            _scale_into(out, chunk, s)
            release_pages(chunk)
            yield out

    return blocks()


def _scale_into(out: np.ndarray, chunk: np.ndarray, s: np.ndarray) -> None:
    """``out[...] = dtype(float64(chunk) * s)``: each product in float64, rounded once.

    For numpy's floats the ufunc casts through small internal buffers, so no float64 copy of
    the chunk is made; ml_dtypes' types (bfloat16) take a chunk-sized float64 product and
    :func:`cast_to`, since their own cast from float64 rounds twice.
    """
    if out.dtype.kind == "f":
        np.multiply(chunk, s, out=out, dtype=np.float64, casting="unsafe")
    else:
        out[...] = cast_to(chunk.astype(np.float64) * s, out.dtype)


def fold_bias(bias: np.ndarray | None, affine: Affine) -> np.ndarray:
    """``s * b + t`` in float64 (``b`` absent means zero)."""
    if bias is None:
        return affine.shift.copy()
    b = np.asarray(bias, dtype=np.float64)
    return affine.scale * b + affine.shift


def input_shift(
    w: np.ndarray, shift: np.ndarray, layout: WeightLayout, groups: int = 1
) -> np.ndarray:
    """``W t``: what a linear layer adds to each output channel when input channel ``c`` is
    shifted by ``shift[c]`` everywhere (no padding), in float64.

    ``layout`` names the weight's INPUT axis: AXIS0 for a (K, M) MatMul / Gemm transB=0 weight
    (``t @ W``), AXIS1 for a (M, K) Gemm transB=1 weight (``W @ t``), GROUPED_AXIS1 for a Conv
    weight (Cout, Cin/g, k...): ``sum_{j,k} W[o, j, k] * t[g(o)*Cin/g + j]`` with
    ``g(o) = o // (Cout/g)``. Rows are promoted to float64 a chunk at a time.
    """
    t = np.asarray(shift, dtype=np.float64)
    if t.shape != (scaled_channels(w.shape, layout, groups),):
        raise ValueError(f"shift has shape {t.shape}, weight has shape {w.shape}")
    if layout is WeightLayout.AXIS0:
        if w.ndim != 2:
            raise ValueError(f"AXIS0 input shift needs a 2-D weight, not {w.shape}")
        out = np.zeros(w.shape[1])
        step = max(1, _CHUNK_BYTES // max(1, w.shape[1] * 8))
        for i in range(0, w.shape[0], step):
            chunk = w[i : i + step]
            out += t[i : i + step] @ chunk.astype(np.float64)
            release_pages(chunk)
        return out
    if layout is WeightLayout.AXIS1:
        out = np.empty(w.shape[0])
        step = max(1, _CHUNK_BYTES // max(1, w.shape[1] * 8))
        for i in range(0, w.shape[0], step):
            chunk = w[i : i + step]
            out[i : i + step] = chunk.astype(np.float64) @ t
            release_pages(chunk)
        return out
    cout, per_group = w.shape[0], w.shape[1]
    if groups < 1 or cout % groups:
        raise ValueError(f"weight dim 0 ({cout}) not divisible by group={groups}")
    kernel_axes = tuple(range(2, w.ndim))
    sums = np.empty((cout, per_group))
    row = max(1, int(np.prod(w.shape[1:])) * 8)
    step = max(1, _CHUNK_BYTES // row)
    for i in range(0, cout, step):
        chunk = w[i : i + step]
        sums[i : i + step] = chunk.astype(np.float64).sum(axis=kernel_axes)
        release_pages(chunk)
    grouped = sums.reshape(groups, cout // groups, per_group)
    return np.einsum("gij,gj->gi", grouped, t.reshape(groups, per_group)).reshape(cout)


# A folded fp16/bf16 weight is refused when one output channel's rounding error (relative to
# its norm) exceeds this many unit roundoffs of the dtype (fp16: u = 2^-11 = 4.9e-4). A channel
# of normal numbers can never exceed 1 u (each element is off by at most u of itself); measured
# (python benchmarks/fp16_fold_rule.py; Conv 32->64 3x3, weights N(0, 0.1)): fp16 weights
# rounded from fp32 carry 0.36-0.47 u, folds with ordinary BN statistics 0.38-0.51 u, also with
# 5-42% of a channel subnormal (s = 1e-2, 1e-3; output error 1.1-1.2x the unfolded model's).
# A channel that falls below fp16's smallest normal (6.1e-5) loses precision as it shrinks:
# s = 3e-4 (96% subnormal) 1.13 u and 2.7x the output error, s = 1e-4 3.4 u and 5.2x,
# s = 3e-5 12 u and 22x. The limit, 1 u (twice what fp16 rounding gives), keeps every channel
# of normal numbers and refuses those whose output error would more than double.
MAX_CHANNEL_ERROR_ROUNDOFFS = 1.0


@dataclass(frozen=True)
class RangeProblem:
    """Why a folded tensor cannot be represented in its dtype well enough.

    ``overflow``: values that would be infinite; ``lossy_channels``: output channels whose
    relative rounding error exceeds :data:`MAX_CHANNEL_ERROR_ROUNDOFFS` unit roundoffs
    (``worst_roundoffs`` the largest, in units of the dtype's unit roundoff).
    """

    overflow: int = 0
    lossy_channels: int = 0
    worst_roundoffs: float = 0.0
    dtype: str = ""

    def __str__(self) -> str:
        parts = []
        if self.overflow:
            parts.append(f"{self.overflow} value(s) overflow")
        if self.lossy_channels:
            parts.append(
                f"{self.lossy_channels} output channel(s) would fall into {self.dtype} "
                f"subnormals (worst rounding error {self.worst_roundoffs:.3g}x the unit "
                f"roundoff, limit {MAX_CHANNEL_ERROR_ROUNDOFFS:g}x)"
            )
        return " and ".join(parts)


def _finfo(dtype: np.dtype) -> Any:
    try:
        return np.finfo(dtype)
    except (TypeError, ValueError):
        import ml_dtypes

        return ml_dtypes.finfo(dtype)


def unit_roundoff(dtype: np.dtype) -> float:
    """Half the spacing of the dtype's floats just above 1 (fp16: 2^-11, bf16: 2^-8)."""
    return float(_finfo(np.dtype(dtype)).eps) / 2


def _overflows(original: np.ndarray | None, folded64: np.ndarray, dtype: np.dtype) -> int:
    """Finite values beyond ``dtype``'s range, or values already infinite in float64 from a
    finite original."""
    info = _finfo(dtype)
    finite = np.isfinite(folded64)
    was_finite = True if original is None else np.isfinite(np.asarray(original, np.float64))
    too_big = finite & (np.abs(folded64) > float(info.max))
    return int(np.count_nonzero(too_big | (~finite & was_finite)))


def range_problem(
    original: np.ndarray | None, folded64: np.ndarray, dtype: np.dtype
) -> RangeProblem | None:
    """Check new float64 values (a bias) against ``dtype``: only overflow matters.

    A bias element that lands in the subnormals is off by at most half their spacing (fp16:
    3e-8) in absolute terms, which no activation of ordinary size notices.
    """
    overflow = _overflows(original, folded64, np.dtype(dtype))
    return RangeProblem(overflow, dtype=np.dtype(dtype).name) if overflow else None


def _output_sums(
    sq: np.ndarray, idx: Index, layout: WeightLayout, scales_outputs: bool, acc: np.ndarray
) -> None:
    """Add a chunk's squares into ``acc`` per output channel of the weight (grouped view)."""
    if layout is WeightLayout.GROUPED_AXIS1:
        if scales_outputs:  # ConvTranspose (g, Cin/g, Cout/g, k...): outputs (g, Cout/g)
            acc += sq.sum(axis=(1, *range(3, sq.ndim)))
        else:  # Conv input (g, Cout/g, Cin/g, k...): outputs (g, Cout/g), chunked on axis 1
            acc[:, idx[1]] += sq.sum(axis=tuple(range(2, sq.ndim)))
        return
    rows_are_outputs = (layout is WeightLayout.AXIS0) == scales_outputs
    if rows_are_outputs:
        acc[idx[0]] += sq.reshape(sq.shape[0], -1).sum(axis=1)
    else:  # a 2-D weight whose outputs are its columns, chunked on rows
        acc += sq.reshape(sq.shape[0], sq.shape[1], -1).sum(axis=(0, 2))


def _output_shape(
    shape: tuple[int, ...], layout: WeightLayout, groups: int, scales_outputs: bool
) -> tuple[int, ...]:
    if layout is WeightLayout.GROUPED_AXIS1:
        return (groups, shape[1]) if scales_outputs else (groups, shape[0] // groups)
    rows_are_outputs = (layout is WeightLayout.AXIS0) == scales_outputs
    return (shape[0],) if rows_are_outputs else (shape[1],)


def scaled_weight_problem(
    w: np.ndarray,
    scale: np.ndarray,
    layout: WeightLayout,
    groups: int = 1,
    *,
    scales_outputs: bool = True,
) -> RangeProblem | None:
    """Would ``scale_weight(w, scale, ...)`` overflow, or lose precision in an output channel?

    ``scales_outputs``: the scaled axis is the layer's output axis (backward folds); False for
    a forward fold, which scales input channels (the error is then measured per output
    channel, each mixing several scaled input channels). Chunked, no copy of ``w``.

    float32/float64: only overflow matters and a bound suffices (``max|w| * max|scale|``
    below the dtype's max proves there is none). 16-bit floats: per output channel, the
    relative rounding error ``||round(p) - p|| / ||p||`` of the exact products ``p`` must stay
    within :data:`MAX_CHANNEL_ERROR_ROUNDOFFS` unit roundoffs: a few subnormals in a channel are
    harmless (their absolute spacing is tiny), a channel that falls wholly below the smallest
    normal is not (its relative error grows as it shrinks).
    """
    info = _finfo(w.dtype)
    scale = np.asarray(scale, dtype=np.float64)
    if w.dtype.itemsize >= 4:
        bound = max_abs(w) * float(np.max(np.abs(scale), initial=0.0))
        if bound <= float(info.max):
            return None
    lossy = w.dtype.itemsize <= 2
    shape = _output_shape(w.shape, layout, groups, scales_outputs)
    err_sq, norm_sq = np.zeros(shape), np.zeros(shape)
    overflow = 0
    for idx, chunk, s in _chunks(w, scale, layout, groups):
        with np.errstate(over="ignore", invalid="ignore"):
            exact = chunk.astype(np.float64) * s
        overflow += _overflows(chunk, exact, w.dtype)
        if lossy:
            with np.errstate(over="ignore", invalid="ignore"):
                rounded = cast_to(exact, w.dtype).astype(np.float64)
                diff = np.where(np.isfinite(rounded), rounded - exact, 0.0)
            _output_sums(diff * diff, idx, layout, scales_outputs, err_sq)
            _output_sums(np.where(np.isfinite(exact), exact * exact, 0.0), idx, layout,
                         scales_outputs, norm_sq)  # fmt: skip
        release_pages(chunk)
    worst, bad = 0.0, 0
    if lossy:
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(norm_sq > 0, np.sqrt(err_sq / norm_sq), 0.0) / unit_roundoff(w.dtype)
        bad = int(np.count_nonzero(rel > MAX_CHANNEL_ERROR_ROUNDOFFS))
        worst = float(rel.max(initial=0.0))
    if overflow or bad:
        return RangeProblem(overflow, bad, worst, w.dtype.name)
    return None


def cast_to(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Round float64 ``values`` once (to nearest, ties to even) to ``dtype``.

    numpy's own floats convert from float64 directly. ml_dtypes' (bfloat16, float8) convert
    through float32, rounding twice: a value just above a bfloat16 midpoint can land on it in
    float32 and then tie to even, downwards. So those are rounded to float32 *to odd*
    (truncated, lowest bit set when inexact), which makes the second rounding the correct one
    (float32 has more than two bits beyond any of them, over a wider exponent range).
    """
    dtype = np.dtype(dtype)
    v = np.asarray(values, dtype=np.float64)
    if dtype.kind != "V":
        return v.astype(dtype)
    with np.errstate(over="ignore"):
        f = v.astype(np.float32)
    away = np.abs(f.astype(np.float64)) > np.abs(v)  # rounded up in magnitude (or to inf)
    f = np.where(away, np.nextafter(f, np.float32(0)), f)
    bits = f.view(np.uint32)
    bits |= (f.astype(np.float64) != v) & ~np.isnan(v)
    return f.astype(dtype)
