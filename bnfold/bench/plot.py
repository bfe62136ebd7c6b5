"""A PNG chart of per-round latencies of both models at each level (matplotlib, Agg backend).

One panel per optimisation level on one shared latency axis, integer round ticks, the
speed-up and its 95% interval in each panel's title, one legend below the panels.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from bnfold import atomic
from bnfold.errors import UsageError

if TYPE_CHECKING:
    from bnfold.bench.bench import BenchResult

SIDE_STYLE = {"reference": ("o", "C0"), "candidate": ("s", "C1")}


def write_plot(result: BenchResult, path: str | os.PathLike[str]) -> None:
    """One panel per level: per-round median latency of reference and candidate."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'bnfold[plot]'") from None
    n = len(result.levels)
    fig, axes = plt.subplots(1, n, figsize=(4.8 * n, 4.4), squeeze=False, sharey=True)
    names = {side: Path(m.path).name for side, m in result.models.items()}
    top = max(max(t.round_medians_ms) for lv in result.levels for t in lv.sides.values())
    for ax, lv in zip(axes[0], result.levels, strict=True):
        for side, (marker, colour) in SIDE_STYLE.items():
            ys = lv.sides[side].round_medians_ms
            ax.plot(range(1, len(ys) + 1), ys, marker=marker, markersize=3, color=colour,
                    label=f"{side}: {names[side]}")  # fmt: skip
        s = lv.speedup
        ax.set_title(
            f"opt-level {lv.level}\nspeed-up {s.ratio:.3f} [{s.ci_low:.3f}, {s.ci_high:.3f}]: "
            f"{s.verdict}",
            fontsize=10,
        )
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("median latency per round (ms)")
    axes[0][0].set_ylim(0, top * 1.08)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, frameon=False)
    o = result.options
    fig.suptitle(
        f"speed-up = reference / candidate latency, 95% bootstrap interval; {o.provider}, "
        f"{o.threads or 'default'} thread(s), {o.rounds} rounds x {o.iters} runs",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
