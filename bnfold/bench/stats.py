"""Latency statistics on plain numbers: paired speed-up ratios, bootstrap interval, verdict."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

FASTER = "faster"
SAME = "no measurable difference"
SLOWER = "slower"


@dataclass(frozen=True)
class Speedup:
    """Reference latency / candidate latency: above 1 means the candidate is faster."""

    ratio: float
    ci_low: float
    ci_high: float
    verdict: str
    rounds: int

    def to_dict(self) -> dict:
        return dict(vars(self))


def verdict(ci_low: float, ci_high: float) -> str:
    """Faster when the whole interval is above 1, slower when it is below 1, else no difference."""
    if ci_low > 1.0:
        return FASTER
    if ci_high < 1.0:
        return SLOWER
    return SAME


def bootstrap_median_ci(
    values: Sequence[float] | np.ndarray,
    *,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the median of ``values``."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("no values")
    rng = np.random.default_rng(seed)
    medians = np.median(v[rng.integers(0, v.size, (resamples, v.size))], axis=1)
    tail = (1.0 - confidence) / 2 * 100
    lo, hi = np.percentile(medians, [tail, 100 - tail])
    return float(lo), float(hi)


def paired_speedup(
    reference: Sequence[float], candidate: Sequence[float], *, resamples: int = 2000, seed: int = 0
) -> Speedup:
    """Speed-up from per-round latencies measured in pairs: the median of reference/candidate
    ratios, with a bootstrap 95% interval over rounds."""
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if ref.shape != cand.shape or ref.ndim != 1 or ref.size == 0:
        raise ValueError("need the same number (> 0) of reference and candidate rounds")
    ratios = ref / cand
    lo, hi = bootstrap_median_ci(ratios, resamples=resamples, seed=seed)
    return Speedup(float(np.median(ratios)), lo, hi, verdict(lo, hi), int(ratios.size))
