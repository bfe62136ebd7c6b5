"""Channels that are dead in calibration data: constant over every sample and position.

A ReLU unit that never fires feeds its BatchNormalization exact zeros; the BN's running variance
is then ~1e-20 and its scale s = γ/√(var + eps) ≈ γ/√eps, hundreds of times a typical one. numpy
only: :class:`ChannelRange` gathers per-channel minima and maxima batch by batch.
"""

from __future__ import annotations

import numpy as np

__all__ = ["DEAD_RTOL", "ChannelRange", "dead_channels"]

# A channel is dead when its range over the data is at most this share of the widest channel's.
DEAD_RTOL = 1e-6


class ChannelRange:
    """Running per-channel minimum and maximum of activations, channel axis ``axis``."""

    def __init__(self, channels: int, axis: int = 1) -> None:
        self.axis = axis
        self.min = np.full(channels, np.inf)
        self.max = np.full(channels, -np.inf)
        self.samples = 0

    def update(self, x: np.ndarray) -> None:
        """Fold one batch (any rank; channels on ``self.axis``) into the ranges."""
        x = np.asarray(x)
        if x.ndim == 0 or x.shape[self.axis] != self.min.size:
            raise ValueError(
                f"expected {self.min.size} channels on axis {self.axis}, got shape {x.shape}"
            )
        rows = np.moveaxis(x, self.axis, 0).reshape(self.min.size, -1).astype(np.float64)
        if rows.shape[1] == 0:
            return
        np.minimum(self.min, rows.min(axis=1), out=self.min)
        np.maximum(self.max, rows.max(axis=1), out=self.max)
        self.samples += x.shape[0] if self.axis != 0 else 1

    @property
    def ptp(self) -> np.ndarray:
        """max − min per channel (0 where constant; NaN before any update)."""
        if self.samples == 0:
            return np.full(self.min.size, np.nan)
        return self.max - self.min

    def dead(self, rtol: float = DEAD_RTOL) -> np.ndarray:
        """True for channels whose range is at most ``rtol`` x the widest channel's (or 0)."""
        if self.samples == 0:
            raise ValueError("no data seen")
        ptp = self.ptp
        widest = float(ptp.max())
        return ptp <= rtol * widest


def dead_channels(x: np.ndarray, axis: int = 1, rtol: float = DEAD_RTOL) -> np.ndarray:
    """Bool per channel of ``x`` (all samples at once): constant over the data (see ChannelRange)."""
    x = np.asarray(x)
    r = ChannelRange(x.shape[axis], axis)
    r.update(x)
    return r.dead(rtol)
