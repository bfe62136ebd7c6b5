"""The fold arithmetic: numpy in, numpy out, no graph.

A per-channel affine map ``y = s * z + t`` (BatchNormalization in inference, or a per-channel
Mul/Add) applied to a linear layer's output ``z = W x + b`` is the linear layer
``y = (s W) x + (s b + t)``. For BatchNormalization::

    s = gamma / sqrt(var + eps)
    t = beta - s * mean          so   b' = s * (b - mean) + beta

The scale and shift are computed in float64 from the parameters; the weight is scaled in
chunks of output channels, each chunk promoted to float64 and rounded once to the weight's
dtype, so no whole-tensor float64 copy is ever made.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum

import numpy as np

try:
    from numpy.lib.array_utils import byte_bounds
except ImportError:  # numpy < 2
    from numpy import byte_bounds

# Work on at most this many bytes of float64 at a time while scaling a weight.
_CHUNK_BYTES = 32 * 1024 * 1024


class WeightLayout(Enum):
    """Where the output channel lives in a weight tensor."""

    AXIS0 = "axis0"  # Conv (Cout, Cin/g, k...), Gemm with transB=1 (M, K)
    AXIS1 = "axis1"  # Gemm with transB=0 and MatMul (K, M)
    CONV_TRANSPOSE = "conv_transpose"  # (Cin, Cout/g, k...), output channel = g*(Cout/g) + j


@dataclass(frozen=True)
class Affine:
    """Per-channel ``y = scale * x + shift`` in float64."""

    scale: np.ndarray
    shift: np.ndarray

    def __post_init__(self) -> None:
        if self.scale.shape != self.shift.shape or self.scale.ndim != 1:
            raise ValueError(f"scale {self.scale.shape} and shift {self.shift.shape} must be (C,)")

    @property
    def channels(self) -> int:
        return self.scale.shape[0]

    def then(self, other: Affine) -> Affine:
        """The map ``other(self(x))``."""
        return Affine(other.scale * self.scale, other.scale * self.shift + other.shift)


def batchnorm_affine(
    gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray, var: np.ndarray, eps: float
) -> Affine:
    """Inference BatchNormalization as ``s * x + t``, in float64."""
    g, b, m, v = (np.asarray(a, dtype=np.float64).reshape(-1) for a in (gamma, beta, mean, var))
    s = g / np.sqrt(v + np.float64(eps))
    return Affine(s, b - s * m)


def output_channels(shape: tuple[int, ...], layout: WeightLayout, groups: int = 1) -> int:
    """Number of output channels of a weight of ``shape``."""
    if layout is WeightLayout.AXIS0:
        return shape[0]
    if layout is WeightLayout.AXIS1:
        return shape[1]
    return shape[1] * groups


def _chunks(
    w: np.ndarray, scale: np.ndarray, layout: WeightLayout, groups: int
) -> Iterator[tuple[tuple, np.ndarray, np.ndarray]]:
    """Yield ``(index, w_chunk, scale_chunk)`` with ``scale_chunk`` broadcastable to the chunk.

    ``index`` addresses the chunk in ``w`` reshaped by :func:`_grouped_shape`.
    """
    n_out = output_channels(w.shape, layout, groups)
    if scale.shape != (n_out,):
        raise ValueError(f"scale has shape {scale.shape}, weight has {n_out} output channels")
    if layout is WeightLayout.CONV_TRANSPOSE:
        if w.shape[0] % groups:
            raise ValueError(
                f"ConvTranspose weight dim 0 ({w.shape[0]}) not divisible by group={groups}"
            )
        src = w.reshape(_grouped_shape(w.shape, layout, groups))
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
    if layout is WeightLayout.CONV_TRANSPOSE:
        return (groups, shape[0] // groups, shape[1], *shape[2:])
    return tuple(shape)


def scale_weight(
    w: np.ndarray, scale: np.ndarray, layout: WeightLayout, groups: int = 1
) -> np.ndarray:
    """Return ``w`` with output channel ``o`` multiplied by ``scale[o]``, in ``w.dtype``.

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
    is reused: each block is valid only until the next one is requested. Grouped ConvTranspose
    weights (whose chunks are not consecutive) give None.
    """
    if layout is WeightLayout.CONV_TRANSPOSE and groups != 1:
        return None
    scale = np.asarray(scale, dtype=np.float64)
    if scale.shape != (output_channels(w.shape, layout, groups),):
        raise ValueError(f"scale has shape {scale.shape}, weight has shape {w.shape}")

    def blocks() -> Iterator[np.ndarray]:
        buf = None
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


# Elements per block when scanning a weight for max |w| (small enough to stay in a CPU cache).
_SCAN_ELEMENTS = 1 << 18
_PAGE = mmap.PAGESIZE


def _mapped_file(a: np.ndarray) -> mmap.mmap | None:
    """The read-only memory-mapped file ``a`` views (an onnx-ir ExternalTensor's), if any."""
    base = a
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, memoryview):  # np.frombuffer(mmap) keeps a memoryview of the map
        if not base.readonly:
            return None
        base = base.obj
    if not isinstance(base, mmap.mmap) or base.closed:
        return None
    with memoryview(base) as view:
        return base if view.readonly else None  # ACCESS_READ: clean pages, safe to drop


def release_pages(a: np.ndarray) -> None:
    """Unmap the resident pages of a read-only file mapping behind ``a``; no-op for other arrays.

    Reading a memory-mapped weight (onnx-ir maps external data) keeps its pages resident in
    this process until the mapping is closed, so folding a 2 GB model would end up holding
    2 GB. ``MADV_DONTNEED`` on a read-only shared file mapping only drops them from the page
    tables: the data stays valid and is read again (page cache or file) on the next access.
    Never applied to anonymous or writable memory, where it would lose data.
    """
    if a.size == 0 or not hasattr(mmap, "MADV_DONTNEED"):
        return
    mm = _mapped_file(a)
    if mm is None:
        return
    try:
        start = np.frombuffer(mm, dtype=np.uint8, count=1).ctypes.data
        lo, hi = byte_bounds(a)
        first = max(0, (lo - start) // _PAGE * _PAGE)
        end = min(len(mm), hi - start)
        if end > first:
            mm.madvise(mmap.MADV_DONTNEED, first, end - first)
    except (OSError, ValueError, TypeError):
        pass  # only a memory optimisation


def _max_abs(w: np.ndarray) -> float:
    """``max |w|`` (NaN if any is NaN), block by block, releasing mapped pages as it goes."""
    if not w.flags.c_contiguous:
        return float(np.max(np.abs(w), initial=0.0))
    flat = w.reshape(-1)
    peaks = [0.0]
    span = 64 * _SCAN_ELEMENTS  # release pages every 64 blocks (fewer system calls)
    for i in range(0, flat.size, _SCAN_ELEMENTS):
        peaks.append(np.max(np.abs(flat[i : i + _SCAN_ELEMENTS])))
        end = i + _SCAN_ELEMENTS
        if end % span == 0 or end >= flat.size:
            release_pages(flat[max(0, end - span) : end])
    return float(np.max(peaks))


def fold_bias(bias: np.ndarray | None, affine: Affine) -> np.ndarray:
    """``s * b + t`` in float64 (``b`` absent means zero)."""
    if bias is None:
        return affine.shift.copy()
    b = np.asarray(bias, dtype=np.float64)
    return affine.scale * b + affine.shift


@dataclass(frozen=True)
class RangeProblem:
    """Why a folded tensor cannot be represented in its dtype."""

    overflow: int
    new_subnormal: int

    def __str__(self) -> str:
        parts = []
        if self.overflow:
            parts.append(f"{self.overflow} value(s) overflow")
        if self.new_subnormal:
            parts.append(f"{self.new_subnormal} value(s) fall into subnormals")
        return " and ".join(parts)


def _finfo(dtype: np.dtype):
    try:
        return np.finfo(dtype)
    except (TypeError, ValueError):
        import ml_dtypes

        return ml_dtypes.finfo(dtype)


def range_problem(
    original: np.ndarray | None, folded64: np.ndarray, dtype: np.dtype
) -> RangeProblem | None:
    """Check float64 values ``folded64`` against ``dtype``'s range.

    Counts values that overflow (infinite in ``dtype``, or already in float64, from a finite
    original) and values that become subnormal in ``dtype`` although the original value was
    not. Non-float dtypes and
    float32/float64 subnormals (harmless at their precision) are not checked for subnormals.
    """
    dtype = np.dtype(dtype)
    info = _finfo(dtype)
    mag = np.abs(folded64)
    finite = np.isfinite(folded64)
    # a value that became infinite in float64 itself (float64 weights) overflowed too, unless
    # the original was already infinite
    o = None if original is None else np.abs(np.asarray(original, dtype=np.float64))
    was_finite = True if o is None else np.isfinite(o)
    overflow = int(np.count_nonzero((finite & (mag > float(info.max))) | (~finite & was_finite)))
    new_sub = 0
    if dtype.itemsize <= 2:
        sub = (mag > 0) & (mag < float(info.tiny))
        if o is not None:
            sub &= ~((o > 0) & (o < float(info.tiny))) & (o != 0)
        new_sub = int(np.count_nonzero(sub))
    if overflow or new_sub:
        return RangeProblem(overflow, new_sub)
    return None


def scaled_weight_problem(
    w: np.ndarray, scale: np.ndarray, layout: WeightLayout, groups: int = 1
) -> RangeProblem | None:
    """Would ``scale_weight(w, scale, ...)`` overflow or create subnormals? Chunked, no copy of w.

    For float32/float64 weights only overflow matters and a bound suffices:
    ``max|w| * max|scale|`` below the dtype's max proves there is none.
    """
    info = _finfo(w.dtype)
    scale = np.asarray(scale, dtype=np.float64)
    if w.dtype.itemsize >= 4:
        bound = _max_abs(w) * float(np.max(np.abs(scale), initial=0.0))
        if bound <= float(info.max):
            return None
    overflow = new_sub = 0
    for _, chunk, s in _chunks(w, scale, layout, groups):
        with np.errstate(over="ignore"):
            scaled = chunk.astype(np.float64) * s
        problem = range_problem(chunk, scaled, w.dtype)
        release_pages(chunk)
        if problem:
            overflow += problem.overflow
            new_sub += problem.new_subnormal
    return RangeProblem(overflow, new_sub) if overflow or new_sub else None


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
