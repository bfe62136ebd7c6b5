"""What a fold proposes, as data: new tensors (inputs to pure arithmetic) and graph edits.

A fold's ``match`` only reads the graph. It returns a :class:`Plan`, a :class:`Refusal` saying
why its pattern is there but cannot be folded exactly, or None when its pattern is not there.
Only the engine changes the graph, by applying a plan's edits in order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import onnx_ir as ir

from bnfold.arithmetic import WeightLayout

if TYPE_CHECKING:
    from bnfold.folds.affine import AffineChain
    from bnfold.folds.context import FoldContext


@dataclass(frozen=True)
class Refusal:
    """Why something was not folded (shown to the user)."""

    reason: str

    def __str__(self) -> str:
        return self.reason

    def within(self, what: str) -> Refusal:
        """The same refusal, saying where it happened ("through Flatten: ...")."""
        return Refusal(f"{what}: {self.reason}")


class Refused(Exception):
    """Raised by a helper too deep to return a Refusal (an attribute that is a reference to a
    function attribute); the engine turns it back into its ``refusal``."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.reason)
        self.refusal = refusal


@dataclass(frozen=True, eq=False)
class ScaledWeight:
    """A new weight: ``array`` with channel c of the ``layout`` axis times ``scale[c]``.

    Computed by :func:`bnfold.arithmetic.scale_weight` when applied (or, if large, when written).
    ``source`` is the value it replaces (its name, dtype, IR 3 graph-input status);
    ``scales_outputs`` is False when the scaled axis is the layer's input axis (forward folds).
    """

    source: ir.Value
    array: np.ndarray
    scale: np.ndarray
    layout: WeightLayout
    groups: int = 1
    hint: str = "folded_weight"
    scales_outputs: bool = True


@dataclass(frozen=True, eq=False)
class NewTensor:
    """A new small tensor: float64 ``values`` rounded once to ``dtype`` when applied.

    ``original`` holds the values it replaces (or None), for the range check.
    """

    values: np.ndarray
    dtype: np.dtype
    original: np.ndarray | None = None
    hint: str = "folded_bias"


NewValue = ScaledWeight | NewTensor
Operand = ir.Value | ScaledWeight | NewTensor | None


@dataclass(frozen=True, eq=False)
class SetInput:
    """``node.inputs[index]`` becomes ``value`` (inputs are added up to ``index`` if needed)."""

    node: ir.Node
    index: int
    value: Operand


@dataclass(frozen=True, eq=False)
class SetAttribute:
    node: ir.Node
    attr: ir.Attr


@dataclass(frozen=True, eq=False)
class ReplaceNode:
    """``node`` becomes a new default-domain ``op_type`` node on its inputs as they are when
    the edit is applied, with ``changes`` (index -> operand) made; whatever read its outputs
    reads the new node's, which take over their names, types and shapes."""

    node: ir.Node
    op_type: str
    changes: tuple[tuple[int, Operand], ...]
    attributes: tuple[ir.Attr, ...] = ()


@dataclass(frozen=True, eq=False)
class Remove:
    """Remove ``node``; whatever read its (first) output reads ``keep`` instead.

    With ``rename``, ``keep`` takes over the removed output's name, type and shape (so a graph
    output keeps its public name); the engine never renames a graph input or initializer.
    """

    node: ir.Node
    keep: ir.Value
    rename: bool = False


Edit = SetInput | SetAttribute | ReplaceNode | Remove


@dataclass(eq=False)
class Plan:
    """One fold, ready to apply.

    ``folded`` are the nodes that disappear into ``into``, each with its fold label ("conv+bn";
    one report entry each); ``edits`` are
    applied in order; ``stale`` are values the fold stops reading (removed if nothing else does).
    ``label`` names the new tensors (``<label>/folded_weight``). ``details`` go into the report.
    """

    fold: str
    direction: str
    folded: list[tuple[ir.Node, str]]
    into: list[ir.Node]
    edits: list[Edit]
    stale: list[ir.Value]
    label: str
    details: dict[str, Any] = field(default_factory=dict)

    def new_values(self) -> list[NewValue]:
        """Every new tensor the plan creates, in edit order."""
        out: list[NewValue] = []
        for edit in self.edits:
            operands: tuple[Operand, ...] = ()
            if isinstance(edit, SetInput):
                operands = (edit.value,)
            elif isinstance(edit, ReplaceNode):
                operands = tuple(value for _, value in edit.changes)
            out.extend(v for v in operands if isinstance(v, ScaledWeight | NewTensor))
        return out


class Fold(Protocol):
    """A fold strategy: ``match`` one affine chain, propose a plan or say why not."""

    name: str  # registry name
    direction: str  # prefixes its refusals in the report: "backward: ..."

    def enabled(self, ctx: FoldContext) -> bool: ...

    def match(self, chain: AffineChain, ctx: FoldContext) -> Plan | Refusal | None: ...
