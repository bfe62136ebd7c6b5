"""A folded weight that is computed only when it is written, block by block.

``FoldedWeight`` is an ``ir.LazyTensor``: ``numpy()`` / ``tobytes()`` compute the whole scaled
tensor (as any lazy tensor does), but ``tofile()`` (what ``ir.save`` calls for external data)
streams it: the source weight is read, scaled and written one chunk at a time through one
reused buffer, and pages of a memory-mapped source are released after each chunk. Saving a
model whose weights are all folded therefore holds about one chunk in memory, not one tensor.
"""

from __future__ import annotations

import sys
from typing import BinaryIO

import numpy as np
import onnx_ir as ir

from bnfold.arithmetic import WeightLayout, scale_weight, scaled_weight_blocks


class FoldedWeight(ir.LazyTensor):
    """``source`` with output channel ``o`` multiplied by ``scale[o]``, computed when written."""

    __slots__ = ("_source", "_scale", "_layout", "_groups")

    def __init__(
        self,
        source: np.ndarray,
        scale: np.ndarray,
        layout: WeightLayout,
        groups: int = 1,
        *,
        name: str | None = None,
    ) -> None:
        super().__init__(
            self._compute,
            dtype=ir.DataType.from_numpy(source.dtype),
            shape=ir.Shape(source.shape),
            name=name,
        )
        self._source = source
        self._scale = scale
        self._layout = layout
        self._groups = groups

    def _compute(self) -> ir.TensorProtocol:
        return ir.tensor(scale_weight(self._source, self._scale, self._layout, self._groups))

    def tofile(self, file: BinaryIO) -> None:
        """Write the little-endian bytes block by block (whole only when the layout needs it)."""
        blocks = None
        if sys.byteorder == "little":
            blocks = scaled_weight_blocks(self._source, self._scale, self._layout, self._groups)
        if blocks is None:
            super().tofile(file)
            return
        for block in blocks:
            file.write(block.reshape(-1).view(np.uint8).data)
