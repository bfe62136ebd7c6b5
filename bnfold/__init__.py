"""bnfold: fold BatchNormalization into neighbouring linear layers of ONNX models.

``bnfold.fold(path_or_model) -> FoldResult`` is the library API; ``bnfold`` the CLI.
Importing bnfold never imports torch, and imports onnx, onnx-ir and numpy only when one of
the names below is first used (so ``bnfold --help`` starts fast).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bnfold._lazy import lazy_attributes

if TYPE_CHECKING:
    from bnfold.api import FoldResult, fold, fold_file
    from bnfold.errors import BadInputError, BnfoldError, VerificationError
    from bnfold.folds.context import FoldOptions
    from bnfold.report import FoldReport

__version__ = "0.1.0"

__getattr__, __dir__ = lazy_attributes(
    __name__,
    {
        "FoldResult": "bnfold.api",
        "fold": "bnfold.api",
        "fold_file": "bnfold.api",
        "BadInputError": "bnfold.errors",
        "BnfoldError": "bnfold.errors",
        "VerificationError": "bnfold.errors",
        "FoldOptions": "bnfold.folds.context",
        "FoldReport": "bnfold.report",
    },
    globals(),
)

__all__ = [
    "BadInputError",
    "BnfoldError",
    "FoldOptions",
    "FoldReport",
    "FoldResult",
    "VerificationError",
    "__version__",
    "fold",
    "fold_file",
]
