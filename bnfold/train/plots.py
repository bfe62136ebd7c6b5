"""PNG plots of training curves and of the BN comparison (matplotlib, headless).

Read without the docs: integer epoch ticks, the 90% target line labelled, legends outside the
data (below the panels).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bnfold import atomic
from bnfold.train.compare import CompareResult
from bnfold.train.training import TARGET_ACCURACY, TrainResult

__all__ = ["write_compare_plot", "write_training_curve"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def integer_ticks(ax: Any) -> None:
    """Whole numbers only on the x axis (epochs, rounds)."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def write_training_curve(result: TrainResult, path: str | os.PathLike) -> Path:
    """Train/test loss and (for classifiers) test accuracy per epoch."""
    plt = _pyplot()
    epochs = [s.epoch for s in result.history]
    has_acc = result.config.task == "classify"
    fig, axes = plt.subplots(1, 2 if has_acc else 1, figsize=(10 if has_acc else 5, 4))
    ax_loss = axes[0] if has_acc else axes
    ax_loss.plot(epochs, [s.train_loss for s in result.history], marker=".", label="train loss")
    ax_loss.plot(epochs, [s.test_loss for s in result.history], marker=".", label="test loss")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss", ylim=(0, None))
    integer_ticks(ax_loss)
    handles, labels = ax_loss.get_legend_handles_labels()
    if has_acc:
        ax = axes[1]
        ax.plot(epochs, [s.test_accuracy for s in result.history], marker=".", color="C2",
                label="test accuracy")  # fmt: skip
        ax.axhline(TARGET_ACCURACY, color="grey", linestyle=":", linewidth=1,
                   label=f"{TARGET_ACCURACY:.0%} target")  # fmt: skip
        ax.set(xlabel="epoch", ylabel="test accuracy", title="test accuracy", ylim=(0, 1.02))
        integer_ticks(ax)
        more_handles, more_labels = ax.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    c = result.config
    fig.suptitle(
        f"{c.model}, BN {'on (' + c.bn_position + ')' if c.bn else 'off'}, {c.activation}, lr {c.lr:g}"
    )
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return _save(fig, plt, path)


def write_compare_plot(result: CompareResult, path: str | os.PathLike) -> Path:
    """Test accuracy per epoch, one panel per activation, one colour per lr, dashed without BN;
    one legend below the panels."""
    plt = _pyplot()
    from matplotlib.lines import Line2D

    acts = list(result.options.activations)
    fig, axes = plt.subplots(1, len(acts), figsize=(5.5 * len(acts), 4.4), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    lr_colour = {lr: colours[i % len(colours)] for i, lr in enumerate(result.options.lrs)}
    for ax, act in zip(axes[0], acts, strict=True):
        for run in (r for r in result.runs if r.activation == act):
            epochs = range(1, len(run.accuracy_curve) + 1)
            ax.plot(
                epochs,
                run.accuracy_curve,
                color=lr_colour[run.lr],
                linestyle="-" if run.bn else "--",
            )
        ax.axhline(result.options.target, color="grey", linestyle=":", linewidth=1)
        ax.set(
            xlabel="epoch",
            ylabel="test accuracy",
            title=f"{result.options.model}, {act}",
            ylim=(0, 1.02),
        )
        integer_ticks(ax)
    handles = [Line2D([], [], color=lr_colour[lr], label=f"lr {lr:g}") for lr in lr_colour]
    handles += [
        Line2D([], [], color="black", linestyle="-", label="with BN"),
        Line2D([], [], color="black", linestyle="--", label="without BN"),
        Line2D([], [], color="grey", linestyle=":", label=f"{result.options.target:.0%} target"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return _save(fig, plt, path)


def _save(fig: Any, plt: Any, path: str | os.PathLike) -> Path:
    p = Path(path)
    with atomic.atomic_path(p) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return p
