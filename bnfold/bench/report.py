"""Rich rendering of a BenchResult."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Group
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from bnfold.bench.bench import BenchResult


def render_bench(result: BenchResult) -> Group:
    """A facts table (size, nodes, BN) and a timing table (one row per level)."""
    facts = Table(title="models", title_justify="left")
    for col in ("side", "file", "size MiB", "nodes", "BN nodes"):
        facts.add_column(col, justify="right" if col not in ("side", "file") else "left")
    for side, m in result.models.items():
        facts.add_row(
            side, m.path, f"{m.size_bytes / 2**20:.2f}", str(m.nodes), str(m.batchnorm_nodes)
        )
    o = result.options
    timing = Table(
        title=f"latency ({o.provider}, {o.threads or 'default'} intra-op thread(s), {o.rounds} rounds "
        f"x {o.iters} runs, median per round)",
        title_justify="left",
    )
    cols = (
        "opt level",
        "ref ms",
        "cand ms",
        "speed-up [95% CI]",
        "verdict",
        "ref create ms",
        "cand create ms",
        "ref mem MiB",
        "cand mem MiB",
    )
    for col in cols:
        timing.add_column(col, justify="left" if col in ("opt level", "verdict") else "right")
    for lv in result.levels:
        r, c, s = lv.sides["reference"], lv.sides["candidate"], lv.speedup
        colour = {"faster": "green", "slower": "red"}.get(s.verdict, "yellow")
        timing.add_row(
            lv.level,
            f"{r.median_ms:.3f}",
            f"{c.median_ms:.3f}",
            f"{s.ratio:.3f} [{s.ci_low:.3f}, {s.ci_high:.3f}]",
            f"[{colour}]{s.verdict}[/{colour}]",
            f"{r.creation_s * 1e3:.1f}",
            f"{c.creation_s * 1e3:.1f}",
            _mem(r.memory),
            _mem(c.memory),
        )
    note = Text(
        "mem MiB: peak RSS of a child process that creates the session and runs it, in brackets "
        "the part above its RSS before session creation. "
        "speed-up = reference latency / candidate latency (above 1: the candidate is faster). "
        "Note: onnxruntime's basic level already folds Conv+BN, ConvTranspose+BN and MatMul+BN "
        "itself (not Gemm+BN), so at basic/extended/all an offline fold of those is expected "
        "to be within noise.",
        style="dim",
    )
    return Group(facts, timing, note)


def _mem(m) -> str:
    return f"{m.peak_mib:.0f} ({m.session_mib:.0f})" if m else "-"
