"""The bundled digits for training: re-exported from :mod:`bnfold.digits` (numpy only)."""

from __future__ import annotations

from bnfold.digits import NUM_CLASSES, DigitsSplit, load_digits, split_digits

__all__ = ["NUM_CLASSES", "DigitsSplit", "load_digits", "split_digits"]
