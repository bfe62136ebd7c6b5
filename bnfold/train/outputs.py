"""Run training or the BN comparison and write their files (checkpoint, metrics JSON, plots)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bnfold import atomic
from bnfold.train.checkpoint import save_checkpoint
from bnfold.train.compare import CompareOptions, CompareResult, CompareRun, run_compare
from bnfold.train.plots import write_compare_plot, write_training_curve
from bnfold.train.training import EpochStats, TrainConfig, TrainResult, train

__all__ = [
    "COMPARE_NAMES",
    "CompareFiles",
    "TrainFiles",
    "compare_to_dir",
    "run_name",
    "train_paths",
    "train_to_dir",
    "write_json",
]

COMPARE_NAMES = ("compare.md", "compare.json", "compare.png")  # what compare_to_dir writes


def write_json(data: dict, path: str | os.PathLike) -> Path:
    """Write ``data`` as indented JSON with a trailing newline (atomically)."""
    return atomic.write_json(path, data)


def run_name(config: TrainConfig) -> str:
    """File stem for a run: ``digits_cnn``, ``mlp-nobn-sigmoid``, ``resnet-bnafter``..."""
    parts = [config.model]
    if not config.bn:
        parts.append("nobn")
    elif config.bn_position == "after":
        parts.append("bnafter")
    if config.activation != "relu":
        parts.append(config.activation)
    return "-".join(parts)


def train_paths(config: TrainConfig, out_dir: str | os.PathLike) -> tuple[Path, Path, Path]:
    """The checkpoint, metrics JSON and curve PNG ``train_to_dir`` writes."""
    out, stem = Path(out_dir), run_name(config)
    return out / f"{stem}.pt", out / f"{stem}.metrics.json", out / f"{stem}.curve.png"


@dataclass(frozen=True)
class TrainFiles:
    result: TrainResult
    checkpoint: Path
    metrics: Path
    curve: Path


def train_to_dir(
    config: TrainConfig,
    out_dir: str | os.PathLike,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> TrainFiles:
    """Train, then write ``NAME.pt``, ``NAME.metrics.json`` and ``NAME.curve.png`` in ``out_dir``."""
    checkpoint, metrics, curve = train_paths(config, out_dir)
    result = train(config, on_epoch=on_epoch)
    return TrainFiles(
        result,
        save_checkpoint(result, checkpoint),
        write_json(result.to_dict(), metrics),
        write_training_curve(result, curve),
    )


@dataclass(frozen=True)
class CompareFiles:
    result: CompareResult
    table: Path
    metrics: Path
    plot: Path


def compare_to_dir(
    options: CompareOptions,
    out_dir: str | os.PathLike,
    on_run: Callable[[CompareRun], None] | None = None,
) -> CompareFiles:
    """Run the comparison; write ``compare.md``, ``compare.json`` and ``compare.png``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = run_compare(options, on_run=on_run)
    table, metrics, plot = (out / name for name in COMPARE_NAMES)
    atomic.write_text(table, result.table() + "\n")
    return CompareFiles(
        result,
        table,
        write_json(result.to_dict(), metrics),
        write_compare_plot(result, plot),
    )
