"""Train a zoo model on the bundled digits with plain minibatch SGD, deterministically."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bnfold.errors import UsageError
from bnfold.train.data import DigitsSplit, split_digits
from bnfold.train.zoo import TASKS, ZooOptions, build_model

__all__ = ["EpochStats", "TrainConfig", "TrainResult", "evaluate", "train"]

TARGET_ACCURACY = 0.9


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (with the seed, the run is reproducible)."""

    model: str = "digits_cnn"
    bn: bool = True
    bn_position: str = "before"
    activation: str = "relu"
    bn_impl: str = "reference"
    lr: float = 0.1
    momentum: float = 0.0
    epochs: int = 10
    batch_size: int = 32
    seed: int = 0
    test_fraction: float = 0.25
    max_steps_per_epoch: int | None = None

    def __post_init__(self) -> None:
        """Reject unusable settings with a UsageError (exit 2 on the command line)."""
        if self.model not in TASKS:
            raise UsageError(f"model must be one of {', '.join(TASKS)}; got {self.model!r}")
        try:  # the zoo's own check of bn_position, activation and bn_impl
            ZooOptions(self.bn, self.bn_position, self.activation, self.bn_impl)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if self.epochs < 1 or self.batch_size < 2:
            raise UsageError("epochs must be >= 1 and batch_size >= 2")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            raise UsageError(f"max_steps_per_epoch must be >= 1, got {self.max_steps_per_epoch}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UsageError(f"lr must be a positive number, got {self.lr}")
        if not 0.0 < self.test_fraction < 1.0:
            raise UsageError(f"test_fraction must be in (0, 1), got {self.test_fraction}")

    @property
    def task(self) -> str:
        """``"classify"`` or ``"reconstruct"`` (the autoencoder)."""
        return TASKS[self.model]

    def build(self) -> nn.Module:
        """A freshly initialised model for this config (seeded by the caller)."""
        return build_model(
            self.model,
            bn=self.bn,
            bn_position=self.bn_position,
            activation=self.activation,
            bn_impl=self.bn_impl,
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class EpochStats:
    """Metrics after one epoch; ``test_accuracy`` is None for the autoencoder."""

    epoch: int
    train_loss: float
    test_loss: float
    test_accuracy: float | None
    seconds: float


@dataclass
class TrainResult:
    """A trained model (in eval mode) with its per-epoch history."""

    config: TrainConfig
    model: nn.Module
    history: list[EpochStats] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def final_accuracy(self) -> float | None:
        return self.history[-1].test_accuracy if self.history else None

    @property
    def final_test_loss(self) -> float | None:
        return self.history[-1].test_loss if self.history else None

    def epochs_to(self, target: float = TARGET_ACCURACY) -> int | None:
        """First epoch (1-based) whose test accuracy reached ``target``; None if never."""
        for s in self.history:
            if s.test_accuracy is not None and s.test_accuracy >= target:
                return s.epoch
        return None

    def to_dict(self) -> dict:
        return {
            "config": self.config.to_dict(),
            "final_accuracy": self.final_accuracy,
            "final_test_loss": self.final_test_loss,
            "epochs_to_90": self.epochs_to(TARGET_ACCURACY),
            "seconds": round(self.seconds, 3),
            "history": [dataclasses.asdict(s) for s in self.history],
        }


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str) -> torch.Tensor:
    out = model(x)
    return F.cross_entropy(out, y) if task == "classify" else F.mse_loss(out, x)


@torch.no_grad()
def evaluate(
    model: nn.Module, x: np.ndarray, y: np.ndarray, task: str
) -> tuple[float, float | None]:
    """``(loss, accuracy)`` in eval mode; accuracy is None for reconstruction."""
    model.eval()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    out = model(xt)
    if task == "reconstruct":
        return F.mse_loss(out, xt).item(), None
    accuracy = (out.argmax(dim=1) == yt).float().mean().item()
    return F.cross_entropy(out, yt).item(), accuracy


def train(
    config: TrainConfig,
    data: DigitsSplit | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
    *,
    threads: int = 1,
) -> TrainResult:
    """Train ``config.model`` on the digits with SGD; call ``on_epoch`` after every epoch.

    Deterministic for a given config: the seed fixes the initial weights, the split and the
    order of minibatches (the last partial batch is dropped, so BatchNorm never sees a batch of 1).
    Runs with ``threads`` torch intra-op threads (restored afterwards): the zoo models are so
    small that one thread is fastest, and the results then do not depend on the core count.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _train(config, data, on_epoch)
    finally:
        torch.set_num_threads(previous)


def _train(
    config: TrainConfig,
    data: DigitsSplit | None,
    on_epoch: Callable[[EpochStats], None] | None,
) -> TrainResult:
    data = data if data is not None else split_digits(config.test_fraction, config.seed)
    torch.manual_seed(config.seed)
    model = config.build()
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
    rng = np.random.default_rng(config.seed)
    x_train, y_train = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    n_batches = len(x_train) // config.batch_size
    if n_batches < 1:
        raise UsageError(
            f"batch_size {config.batch_size} exceeds the {len(x_train)} training images"
        )
    if config.max_steps_per_epoch is not None:
        n_batches = min(n_batches, config.max_steps_per_epoch)
    result = TrainResult(config, model)
    start = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        order = torch.from_numpy(rng.permutation(len(x_train)))
        total = 0.0
        for b in range(n_batches):
            idx = order[b * config.batch_size : (b + 1) * config.batch_size]
            loss = _loss(model, x_train[idx], y_train[idx], config.task)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item()
        test_loss, accuracy = evaluate(model, data.x_test, data.y_test, config.task)
        stats = EpochStats(epoch, total / n_batches, test_loss, accuracy, time.perf_counter() - t0)
        result.history.append(stats)
        if on_epoch is not None:
            on_epoch(stats)
    result.seconds = time.perf_counter() - start
    model.eval()
    return result
