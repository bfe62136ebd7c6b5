"""The paper's claims on the digits, measured: with and without BN, across learning rates and
activations, how many epochs to reach 90% test accuracy and the final accuracy."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from bnfold.errors import UsageError
from bnfold.train.training import TARGET_ACCURACY, TrainConfig, TrainResult, train
from bnfold.train.zoo import TASKS

__all__ = ["CompareOptions", "CompareResult", "CompareRun", "run_compare"]


@dataclass(frozen=True)
class CompareOptions:
    """The grid: every (activation, lr, bn) combination trains ``model`` for ``epochs``."""

    model: str = "mlp"
    lrs: tuple[float, ...] = (0.01, 0.05, 0.2, 1.0)
    activations: tuple[str, ...] = ("sigmoid", "relu")
    epochs: int = 40
    batch_size: int = 32
    seed: int = 0
    target: float = TARGET_ACCURACY

    def __post_init__(self) -> None:
        if TASKS.get(self.model) != "classify":
            raise UsageError(f"the comparison measures accuracy; {self.model!r} is no classifier")
        self.configs()  # validates the rest

    def configs(self) -> list[TrainConfig]:
        return [
            TrainConfig(
                model=self.model,
                bn=bn,
                activation=act,
                lr=lr,
                epochs=self.epochs,
                batch_size=self.batch_size,
                seed=self.seed,
            )
            for act, lr, bn in itertools.product(self.activations, self.lrs, (False, True))
        ]


@dataclass(frozen=True)
class CompareRun:
    """One cell of the grid; ``accuracy_curve`` is the test accuracy after each epoch."""

    activation: str
    lr: float
    bn: bool
    epochs_to_target: int | None
    final_accuracy: float
    best_accuracy: float
    accuracy_curve: list[float]

    @classmethod
    def from_result(cls, result: TrainResult, target: float) -> CompareRun:
        curve = [s.test_accuracy or 0.0 for s in result.history]
        c = result.config
        return cls(c.activation, c.lr, c.bn, result.epochs_to(target), curve[-1], max(curve), curve)


@dataclass
class CompareResult:
    options: CompareOptions
    runs: list[CompareRun] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"options": asdict(self.options), "runs": [asdict(r) for r in self.runs]}

    def table(self) -> str:
        """A Markdown table: one row per (activation, lr), BN off and on side by side."""
        pct = f"{self.options.target:.0%}"
        lines = [
            f"| activation | lr | epochs to {pct}, no BN | epochs to {pct}, BN "
            "| final acc., no BN | final acc., BN |",
            "|---|---|---|---|---|---|",
        ]
        cells: dict[tuple[str, float], dict[bool, CompareRun]] = {}
        for r in self.runs:
            cells.setdefault((r.activation, r.lr), {})[r.bn] = r
        for (act, lr), pair in cells.items():
            off, on = pair.get(False), pair.get(True)
            lines.append(
                f"| {act} | {lr:g} | {_epochs(off, self.options.epochs)} "
                f"| {_epochs(on, self.options.epochs)} | {_acc(off)} | {_acc(on)} |"
            )
        return "\n".join(lines)


def _epochs(run: CompareRun | None, epochs: int) -> str:
    if run is None:
        return "-"
    return f"never in {epochs}" if run.epochs_to_target is None else str(run.epochs_to_target)


def _acc(run: CompareRun | None) -> str:
    return "-" if run is None else f"{run.final_accuracy:.3f}"


def run_compare(
    options: CompareOptions | None = None,
    on_run: Callable[[CompareRun], None] | None = None,
) -> CompareResult:
    """Train every configuration of the grid (same seed, so the same init and batches per pair)."""
    options = options or CompareOptions()
    result = CompareResult(options)
    for config in options.configs():
        run = CompareRun.from_result(train(config), options.target)
        result.runs.append(run)
        if on_run is not None:
            on_run(run)
    return result
