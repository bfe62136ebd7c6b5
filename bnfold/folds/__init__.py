"""The folds, in the order the engine tries them on each affine chain.

A new fold strategy is a module here with a ``FOLD`` object implementing
:class:`bnfold.folds.plan.Fold` (``match(chain, ctx) -> Plan | Refusal | None``), listed in
``REGISTRY``; a new linear op goes into :mod:`bnfold.folds.layers`.
"""

from __future__ import annotations

from bnfold.folds import activation, backward, forward, merge
from bnfold.folds.affine import AffineChain, chain_at
from bnfold.folds.context import FORWARD_MODES, FoldContext, FoldOptions, all_graphs
from bnfold.folds.plan import Fold, Plan, Refusal

# Backward first (never touches another layer's input axis), then the scale back through an
# activation with the shift forward (keeps the consumers' weights), then all of it forward,
# and last, merging what is left into one BatchNormalization.
REGISTRY: tuple[Fold, ...] = (backward.FOLD, activation.FOLD, forward.FOLD, merge.FOLD)

anchor = chain_at

__all__ = [
    "FORWARD_MODES",
    "REGISTRY",
    "AffineChain",
    "Fold",
    "FoldContext",
    "FoldOptions",
    "Plan",
    "Refusal",
    "all_graphs",
    "anchor",
]
