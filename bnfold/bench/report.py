"""Rich rendering of a BenchResult: tables that fit the terminal (columns dropped by priority)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Group
from rich.text import Text

from bnfold.bench.memory import PeakMemory
from bnfold.bench.stats import FASTER, SAME, SLOWER
from bnfold.tables import Column, FitTable

if TYPE_CHECKING:
    from bnfold.bench.bench import BenchResult

# The verdict as the table shows it (the JSON keeps the full words).
VERDICT_CELL = {
    FASTER: "[green]faster[/]",
    SLOWER: "[red]slower[/]",
    SAME: "[yellow]no difference[/]",
}


def render_bench(result: BenchResult) -> Group:
    """A facts table (size, nodes, BN), a timing table (one row per level) and notes."""
    facts = FitTable(
        [
            Column("side"),
            Column("file", wrap=True),
            Column("size MiB", "right"),
            Column("nodes", "right"),
            Column("BN", "right"),
        ],
        title="models",
    )
    for side, m in result.models.items():
        facts.add_row(
            side, Text(m.path), f"{m.size_bytes / 2**20:.2f}", str(m.nodes), str(m.batchnorm_nodes)
        )
    o = result.options
    timing = FitTable(
        [
            Column("opt level"),
            Column("ref ms", "right"),
            Column("cand ms", "right"),
            Column("speed-up [95% CI]", "right"),
            Column("verdict"),
            Column("create ms ref/cand", "right", drop=1),
            Column("peak MiB ref/cand", "right", drop=2),
        ],
        title=f"latency ({o.provider}, {o.threads or 'default'} intra-op thread(s), "
        f"{o.rounds} rounds x {o.iters} runs, median per round)",
    )
    for lv in result.levels:
        r, c, s = lv.sides["reference"], lv.sides["candidate"], lv.speedup
        timing.add_row(
            lv.level,
            f"{r.median_ms:.3f}",
            f"{c.median_ms:.3f}",
            f"{s.ratio:.3f} [{s.ci_low:.3f}, {s.ci_high:.3f}]",
            VERDICT_CELL.get(s.verdict, s.verdict),
            f"{r.creation_s * 1e3:.1f} / {c.creation_s * 1e3:.1f}",
            f"{_mem(r.memory)} / {_mem(c.memory)}",
        )
    lines = [
        "speed-up = reference latency / candidate latency (above 1: the candidate is faster); "
        "faster or slower when the whole 95% interval is above or below 1, else no measurable "
        "difference.",
    ]
    if any(lv.sides["reference"].memory for lv in result.levels):
        lines.append(
            "peak MiB: peak RSS of a child process that creates the session and runs it, in "
            "brackets the part above its RSS before session creation."
        )
    lines.append(
        "onnxruntime's basic level already folds Conv+BN, ConvTranspose+BN and MatMul+BN itself "
        "(not Gemm+BN), so at basic/extended/all an offline fold of those is expected to be "
        "within noise."
    )
    notes = [Text(f"note: {n}") for n in result.notes]
    return Group(facts, timing, *notes, Text(" ".join(lines), style="dim"))


def _mem(m: PeakMemory | None) -> str:
    return f"{m.peak_mib:.0f} ({m.session_mib:.0f})" if m else "-"
