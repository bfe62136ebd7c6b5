"""bnfold: fold BatchNormalization into neighbouring linear layers of ONNX models.

``bnfold.fold(path_or_model) -> FoldResult`` is the library API; ``bnfold`` the CLI.
Importing bnfold never imports torch.
"""

from __future__ import annotations

from bnfold.api import FoldResult, fold, fold_file
from bnfold.errors import BadInputError, BnfoldError, VerificationError
from bnfold.folds.context import FoldOptions
from bnfold.report import FoldReport

__version__ = "0.1.0"

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
