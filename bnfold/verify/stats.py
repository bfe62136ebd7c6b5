"""Error statistics and tolerance tests on plain numpy arrays (no onnxruntime here)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

RANGE = "range"
ELEMENTWISE = "elementwise"
MODES = (RANGE, ELEMENTWISE)


@dataclass(frozen=True)
class Tolerance:
    """``|ref - cand| <= atol + rtol * scale``; scale is max|ref| ("range") or |ref| ("elementwise")."""

    atol: float
    rtol: float
    mode: str = RANGE

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"tolerance mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.atol < 0 or self.rtol < 0:
            raise ValueError("atol and rtol must be >= 0")


@dataclass(frozen=True)
class ErrorStats:
    """How far a candidate array is from its reference.

    ``min_atol`` is the smallest atol that passes with the rtol in force, ``min_rtol`` the smallest
    rtol that passes with the atol in force. Values that are NaN/inf at the same place on both
    sides count as equal; ``nonfinite_mismatch`` counts the places where they do not.
    """

    size: int
    max_abs: float
    max_rel_range: float
    mean_abs: float
    p99_abs: float
    cosine: float
    ref_range: float
    min_atol: float
    min_rtol: float
    nonfinite_mismatch: int
    passed: bool

    def to_dict(self) -> dict:
        return {k: json_float(v) if isinstance(v, float) else v for k, v in asdict(self).items()}


def json_float(x: float) -> float | str:
    """A float JSON can hold: non-finite values become the strings "inf", "-inf", "nan"."""
    return x if math.isfinite(x) else str(x)


def _as_float64(a: np.ndarray) -> np.ndarray:
    return np.asarray(a).astype(np.float64, copy=False)


def is_text(dtype: np.dtype) -> bool:
    """Strings (or objects, as onnxruntime returns strings): compared for equality only."""
    return dtype.kind in "OUS"


def incomparable(reference: np.ndarray, candidate: np.ndarray) -> str | None:
    """Why two outputs cannot be compared value by value (shape or element type differs), or None.

    Strings of different widths are still comparable."""
    if reference.shape != candidate.shape:
        return f"shape differs: reference {reference.shape}, candidate {candidate.shape}"
    if reference.dtype != candidate.dtype and not (
        is_text(reference.dtype) and is_text(candidate.dtype)
    ):
        return f"type differs: reference {reference.dtype}, candidate {candidate.dtype}"
    return None


def compare_arrays(reference: np.ndarray, candidate: np.ndarray, tol: Tolerance) -> ErrorStats:
    """Statistics of ``candidate - reference`` and whether it is within ``tol``.

    Arrays are flattened; their sizes must match (shapes are checked by the caller).
    """
    ref = _as_float64(reference).ravel()
    cand = _as_float64(candidate).ravel()
    if ref.size != cand.size:
        raise ValueError(f"size mismatch: reference {ref.size}, candidate {cand.size}")
    finite = np.isfinite(ref) & np.isfinite(cand)
    same_nonfinite = ~finite & ((ref == cand) | (np.isnan(ref) & np.isnan(cand)))
    mismatch = int(np.count_nonzero(~finite & ~same_nonfinite))
    r, c = ref[finite], cand[finite]
    diff = np.abs(c - r)
    abs_ref = np.abs(r)
    ref_range = float(abs_ref.max()) if r.size else 0.0
    max_abs = float(diff.max()) if r.size else 0.0
    mean_abs = float(diff.mean()) if r.size else 0.0
    p99 = float(np.percentile(diff, 99)) if r.size else 0.0
    if mismatch:
        max_abs = math.inf
    max_rel = _ratio(max_abs, ref_range)
    norm = float(np.linalg.norm(r) * np.linalg.norm(c))
    if norm > 0:
        cosine = float(np.dot(r, c) / norm)
    else:
        cosine = 1.0 if not np.any(r) and not np.any(c) else 0.0
    if tol.mode == RANGE:
        min_atol = max(0.0, max_abs - tol.rtol * ref_range)
        min_rtol = max(0.0, _ratio(max_abs - tol.atol, ref_range)) if max_abs > tol.atol else 0.0
        passed = max_abs <= tol.atol + tol.rtol * ref_range
    else:
        excess = diff - tol.atol
        min_atol = max(0.0, float((diff - tol.rtol * abs_ref).max())) if r.size else 0.0
        over = excess > 0
        if not np.any(over):
            min_rtol = 0.0
        elif np.any(abs_ref[over] == 0):
            min_rtol = math.inf
        else:
            min_rtol = float((excess[over] / abs_ref[over]).max())
        passed = bool(np.all(diff <= tol.atol + tol.rtol * abs_ref))
        if mismatch:
            min_atol = min_rtol = math.inf
    passed = passed and not mismatch
    return ErrorStats(
        size=int(ref.size),
        max_abs=max_abs,
        max_rel_range=max_rel,
        mean_abs=mean_abs,
        p99_abs=p99,
        cosine=cosine,
        ref_range=ref_range,
        min_atol=min_atol,
        min_rtol=min_rtol,
        nonfinite_mismatch=mismatch,
        passed=bool(passed),
    )


def _ratio(num: float, den: float) -> float:
    if den > 0:
        return num / den
    return 0.0 if num <= 0 else math.inf


def noise_multiple(error: float, noise: float) -> float:
    """The candidate's error as a multiple of the model's own floating-point noise."""
    return _ratio(error, noise)


def failed_stats(size: int = 0) -> ErrorStats:
    """Statistics for arrays that cannot be compared at all (shape or kind differs)."""
    inf = math.inf
    return ErrorStats(size, inf, inf, inf, inf, 0.0, 0.0, inf, inf, 0, False)
