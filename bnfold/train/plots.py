"""PNG plots of training curves and of the BN comparison (matplotlib, headless)."""

from __future__ import annotations

import os
from pathlib import Path

from bnfold import atomic
from bnfold.train.compare import CompareResult
from bnfold.train.training import TARGET_ACCURACY, TrainResult

__all__ = ["write_compare_plot", "write_training_curve"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_training_curve(result: TrainResult, path: str | os.PathLike) -> Path:
    """Train/test loss and (for classifiers) test accuracy per epoch."""
    plt = _pyplot()
    epochs = [s.epoch for s in result.history]
    has_acc = result.config.task == "classify"
    fig, axes = plt.subplots(1, 2 if has_acc else 1, figsize=(10 if has_acc else 5, 3.6))
    ax_loss = axes[0] if has_acc else axes
    ax_loss.plot(epochs, [s.train_loss for s in result.history], marker=".", label="train")
    ax_loss.plot(epochs, [s.test_loss for s in result.history], marker=".", label="test")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_loss.legend()
    if has_acc:
        axes[1].plot(epochs, [s.test_accuracy for s in result.history], marker=".")
        axes[1].axhline(TARGET_ACCURACY, color="grey", linestyle=":", linewidth=1)
        axes[1].set(xlabel="epoch", ylabel="test accuracy", title="test accuracy", ylim=(0, 1))
    c = result.config
    fig.suptitle(
        f"{c.model}, BN {'on (' + c.bn_position + ')' if c.bn else 'off'}, {c.activation}, lr {c.lr:g}"
    )
    fig.tight_layout()
    return _save(fig, plt, path)


def write_compare_plot(result: CompareResult, path: str | os.PathLike) -> Path:
    """Test accuracy per epoch, one panel per activation, one colour per lr, dashed without BN."""
    plt = _pyplot()
    acts = list(result.options.activations)
    fig, axes = plt.subplots(1, len(acts), figsize=(5.5 * len(acts), 4), squeeze=False)
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
                label=f"lr {run.lr:g}, {'BN' if run.bn else 'no BN'}",
            )
        ax.axhline(result.options.target, color="grey", linestyle=":", linewidth=1)
        ax.set(
            xlabel="epoch",
            ylabel="test accuracy",
            title=f"{result.options.model}, {act}",
            ylim=(0, 1),
        )
        ax.legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    return _save(fig, plt, path)


def _save(fig, plt, path: str | os.PathLike) -> Path:
    p = Path(path)
    with atomic.atomic_path(p) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return p
