"""Prove a fold with onnxruntime: run two models on the same inputs and compare every output.

The names below are imported on first use (numpy and onnxruntime load then, not with the
package), so ``bnfold.verify.settings`` is cheap to import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bnfold._lazy import lazy_attributes

if TYPE_CHECKING:
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
    from bnfold.verify.settings import RunSettings, SessionSettings
    from bnfold.verify.stats import ErrorStats, Tolerance, compare_arrays

_CHECK = "bnfold.verify.check"
__getattr__, __dir__ = lazy_attributes(
    __name__,
    {
        "DEFAULT_TOLERANCES": _CHECK,
        "Calibration": _CHECK,
        "CheckOptions": _CHECK,
        "CheckResult": _CHECK,
        "OutputResult": _CHECK,
        "check_models": _CHECK,
        "Divergence": "bnfold.verify.locate",
        "NodeInfo": "bnfold.verify.locate",
        "render_check": "bnfold.verify.report",
        "RunSettings": "bnfold.verify.settings",
        "SessionSettings": "bnfold.verify.settings",
        "ErrorStats": "bnfold.verify.stats",
        "Tolerance": "bnfold.verify.stats",
        "compare_arrays": "bnfold.verify.stats",
    },
    globals(),
)

__all__ = [
    "DEFAULT_TOLERANCES",
    "Calibration",
    "CheckOptions",
    "CheckResult",
    "Divergence",
    "ErrorStats",
    "NodeInfo",
    "OutputResult",
    "RunSettings",
    "SessionSettings",
    "Tolerance",
    "check_models",
    "compare_arrays",
    "render_check",
]
