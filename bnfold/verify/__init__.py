"""Prove a fold with onnxruntime: run two models on the same inputs and compare every output."""

from bnfold.verify.check import (
    DEFAULT_TOLERANCES,
    Calibration,
    CheckOptions,
    CheckResult,
    OutputResult,
    check_models,
)
from bnfold.verify.locate import Divergence, NodeInfo
from bnfold.verify.report import render_check
from bnfold.verify.stats import ErrorStats, Tolerance, compare_arrays

__all__ = [
    "DEFAULT_TOLERANCES",
    "Calibration",
    "CheckOptions",
    "CheckResult",
    "Divergence",
    "ErrorStats",
    "NodeInfo",
    "OutputResult",
    "Tolerance",
    "check_models",
    "compare_arrays",
    "render_check",
]
