"""Tolerance and error statistics on hand-computed arrays."""

import math

import numpy as np
import pytest

from bnfold.verify.stats import Tolerance, compare_arrays, failed_stats, json_float, noise_multiple


def test_range_mode_statistics_by_hand():
    ref = np.array([10.0, -20.0, 5.0, 0.0])
    cand = np.array([10.5, -20.0, 4.0, 0.0])  # errors 0.5, 0, 1, 0
    s = compare_arrays(ref, cand, Tolerance(atol=0.0, rtol=0.1))
    assert s.max_abs == 1.0
    assert s.ref_range == 20.0
    assert s.max_rel_range == pytest.approx(0.05)
    assert s.mean_abs == pytest.approx(0.375)
    assert s.p99_abs == pytest.approx(np.percentile([0.5, 0, 1, 0], 99))
    cos = np.dot(ref, cand) / (np.linalg.norm(ref) * np.linalg.norm(cand))
    assert s.cosine == pytest.approx(cos)
    assert s.passed  # 1.0 <= 0 + 0.1 * 20
    assert s.min_atol == 0.0  # rtol alone covers it
    assert s.min_rtol == pytest.approx(0.05)  # (1.0 - 0) / 20


def test_range_mode_fails_and_reports_what_would_pass():
    ref = np.array([1.0, 2.0])
    cand = np.array([1.0, 2.3])
    s = compare_arrays(ref, cand, Tolerance(atol=0.1, rtol=0.05))
    assert not s.passed  # 0.3 > 0.1 + 0.05 * 2
    assert s.min_atol == pytest.approx(0.2)  # 0.3 - 0.05 * 2
    assert s.min_rtol == pytest.approx(0.1)  # (0.3 - 0.1) / 2
    assert compare_arrays(ref, cand, Tolerance(s.min_atol + 1e-12, 0.05)).passed
    assert compare_arrays(ref, cand, Tolerance(0.1, s.min_rtol + 1e-12)).passed


def test_large_activation_passes_range_but_not_fixed_atol():
    """27.0 absolute at 9e-7 of the range: range mode passes, a fixed atol would not."""
    ref = np.array([3e7, 1.0])
    cand = ref + np.array([27.0, 0.0])
    assert compare_arrays(ref, cand, Tolerance(1e-5, 1e-4)).passed
    assert not compare_arrays(ref, cand, Tolerance(1e-5, 0.0)).passed


def test_elementwise_mode_by_hand():
    ref = np.array([100.0, 0.01])
    cand = np.array([100.5, 0.02])  # errors 0.5, 0.01
    s = compare_arrays(ref, cand, Tolerance(atol=0.0, rtol=0.01, mode="elementwise"))
    assert not s.passed  # 0.01 > 0.01 * 0.01
    assert s.min_rtol == pytest.approx(1.0)  # 0.01 / 0.01
    assert s.min_atol == pytest.approx(0.01 - 0.0001)
    # range mode with the same numbers passes: 0.5 <= 0.01 * 100
    assert compare_arrays(ref, cand, Tolerance(0.0, 0.01)).passed


def test_elementwise_zero_reference_needs_atol():
    s = compare_arrays(np.array([0.0]), np.array([1e-3]), Tolerance(0.0, 0.5, "elementwise"))
    assert not s.passed and math.isinf(s.min_rtol) and s.min_atol == pytest.approx(1e-3)


def test_matching_nonfinite_values_are_equal_and_mismatches_fail():
    ref = np.array([np.nan, np.inf, 1.0])
    assert compare_arrays(ref, ref.copy(), Tolerance(0, 0)).passed
    s = compare_arrays(ref, np.array([np.nan, -np.inf, 1.0]), Tolerance(1.0, 1.0))
    assert not s.passed and s.nonfinite_mismatch == 1 and math.isinf(s.max_abs)


def test_cosine_of_zero_arrays_and_ints():
    assert compare_arrays(np.zeros(3), np.zeros(3), Tolerance(0, 0)).cosine == 1.0
    s = compare_arrays(np.array([1, 2, 3]), np.array([1, 2, 4]), Tolerance(0, 0))
    assert s.max_abs == 1.0 and not s.passed


def test_bad_tolerance_and_helpers():
    with pytest.raises(ValueError):
        Tolerance(0, 0, "sideways")
    with pytest.raises(ValueError):
        compare_arrays(np.zeros(2), np.zeros(3), Tolerance(0, 0))
    assert json_float(math.inf) == "inf" and json_float(1.5) == 1.5
    assert noise_multiple(2e-6, 1e-6) == pytest.approx(2.0)
    assert noise_multiple(0.0, 0.0) == 0.0 and math.isinf(noise_multiple(1.0, 0.0))
    assert not failed_stats(4).passed
