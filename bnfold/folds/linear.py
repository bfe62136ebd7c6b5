"""A linear layer as a fold sees it: its weight, which axis holds which channels, its bias.

Each op module (conv.py, conv_transpose.py, gemm.py, matmul.py) reads its node into a
:class:`Producer` (the layer whose OUTPUT channels a fold scales: backward folds) and/or a
:class:`Consumer` (the layer whose INPUT channels a fold scales: forward folds). Both are
plain data; the folds turn them into plan edits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from bnfold.arithmetic import WeightLayout


@dataclass(frozen=True, eq=False)
class BiasSlot:
    """Where a layer's new bias goes: input ``index`` of ``node`` (a Conv's or Gemm's bias, or
    the constant of a MatMul's bias Add); with ``becomes_gemm`` a bare rank-2 MatMul is
    replaced by a Gemm that takes the new weight and the bias."""

    node: ir.Node
    index: int
    becomes_gemm: bool = False


@dataclass(frozen=True, eq=False)
class Producer:
    """A layer whose output channels can be scaled: ``W'[o] = m * s[o] * W[o]``, ``b' = s*b + t``.

    ``output`` is where the data path leaves the layer (a MatMul's bias Add output when it has
    one); ``feature_axis`` is where its channels live in ``output`` (normalised; ``rank`` None
    when unknown). ``bias`` is the current bias in float64 (None: absent); ``multiplier`` a
    factor the new weight absorbs (Gemm's alpha). ``after_weight``/``after_bias`` are attributes
    to set once the weight / the bias is replaced (Gemm: alpha=1 / beta=1).
    """

    kind: str
    node: ir.Node
    output: ir.Value
    weight: ir.Value
    array: np.ndarray
    layout: WeightLayout
    groups: int
    channels: int
    feature_axis: int
    rank: int | None
    bias: np.ndarray | None
    slot: BiasSlot | None
    multiplier: float = 1.0
    after_weight: tuple[ir.Attr, ...] = ()
    after_bias: tuple[ir.Attr, ...] = ()
    bias_source: ir.Value | None = None

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype


@dataclass(frozen=True, eq=False)
class Consumer:
    """A layer reading the chain's output whose input channels can be scaled.

    ``W' = W diag(s[index])`` along ``layout`` (its input axis) and ``b' = b + m * W t[index]``;
    ``index[f]`` is the chain channel feeding input feature f. ``shift_refusal`` says why a
    non-zero shift cannot be folded exactly (padding), None when it can. ``out_axis`` is the
    weight's output-channel axis (per-channel int8 quantisation runs along it).
    """

    kind: str
    node: ir.Node
    weight: ir.Value
    array: np.ndarray
    layout: WeightLayout
    groups: int
    index: np.ndarray
    bias: np.ndarray | None
    slot: BiasSlot | None
    out_axis: int
    multiplier: float = 1.0
    shift_refusal: str | None = None
    after_bias: tuple[ir.Attr, ...] = ()
    bias_source: ir.Value | None = None

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype
