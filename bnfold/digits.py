"""The bundled handwritten digits (scikit-learn's copy of the UCI data) and a seeded split.

The 1797 8x8 images ship inside the package (``bnfold/data/digits.npz``, see
``bnfold/data/DIGITS-LICENSE.txt``), so neither scikit-learn nor a download is needed. numpy only:
``bnfold quantize`` calibrates the zoo models on these without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import numpy as np

__all__ = ["INPUT_NAME", "INPUT_SHAPE", "NUM_CLASSES", "DigitsSplit", "load_digits", "split_digits"]

NUM_CLASSES = 10
INPUT_NAME = "input"  # the zoo models' input: float32 (N, 1, 8, 8)
INPUT_SHAPE = (1, 8, 8)


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)``: uint8 (1797, 8, 8) pixel counts 0..16 and uint8 (1797,) digits."""
    with (
        resources.files("bnfold").joinpath("data/digits.npz").open("rb") as f,
        np.load(f) as npz,
    ):
        return npz["images"], npz["labels"]


@dataclass(frozen=True)
class DigitsSplit:
    """Float32 (N, 1, 8, 8) images scaled to [0, 1] and int64 labels, for training and test."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def split_digits(test_fraction: float = 0.25, seed: int = 0) -> DigitsSplit:
    """Stratified split: each digit contributes ``round(test_fraction * count)`` test images."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    images, labels = load_digits()
    rng = np.random.default_rng(seed)
    test_idx: list[np.ndarray] = []
    train_idx: list[np.ndarray] = []
    for digit in range(NUM_CLASSES):
        idx = rng.permutation(np.flatnonzero(labels == digit))
        n_test = round(test_fraction * len(idx))
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    tr = rng.permutation(np.concatenate(train_idx))
    te = np.sort(np.concatenate(test_idx))
    x = (images.astype(np.float32) / 16.0)[:, None, :, :]
    y = labels.astype(np.int64)
    return DigitsSplit(x[tr], y[tr], x[te], y[te])
