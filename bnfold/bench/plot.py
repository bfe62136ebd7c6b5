"""A PNG chart of per-round latencies of both models at each level (matplotlib, Agg backend)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from bnfold import atomic
from bnfold.errors import UsageError

if TYPE_CHECKING:
    from bnfold.bench.bench import BenchResult


def write_plot(result: BenchResult, path: str | os.PathLike[str]) -> None:
    """One panel per level: per-round median latency of reference and candidate, speed-up in the title."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'bnfold[plot]'") from None
    n = len(result.levels)
    fig, axes = plt.subplots(1, n, figsize=(5.5 * n, 4), squeeze=False)
    for ax, lv in zip(axes[0], result.levels, strict=True):
        for side, marker in (("reference", "o"), ("candidate", "s")):
            ys = lv.sides[side].round_medians_ms
            ax.plot(range(1, len(ys) + 1), ys, marker=marker, markersize=3, label=side)
        s = lv.speedup
        ax.set_title(
            f"opt-level {lv.level}: speed-up {s.ratio:.3f}\n"
            f"95% CI [{s.ci_low:.3f}, {s.ci_high:.3f}], {s.verdict}",
            fontsize=10,
        )
        ax.set_xlabel("round")
        ax.set_ylabel("median latency per round (ms)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
    names = {side: Path(m.path).name for side, m in result.models.items()}
    fig.suptitle(
        f"{names['candidate']} (candidate) vs {names['reference']} (reference), "
        f"{result.options.provider}, {result.options.threads or 'default'} thread(s)",
        fontsize=10,
    )
    fig.tight_layout()
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
