"""Rich rendering of a QuantizeResult: settings, fold, dead channels, proof, float ops."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Group
from rich.text import Text

from bnfold.tables import Column, FitTable

if TYPE_CHECKING:
    from bnfold.quantize.prove import Proof
    from bnfold.quantize.quantize import QuantizeResult


def render_proof(proof: Proof) -> FitTable:
    """One row per output: agreement, accuracies, errors (columns dropped to fit the width)."""
    table = FitTable(
        [
            Column("output", wrap=True),
            Column("agreement", "right"),
            Column("acc fp32", "right", drop=2),
            Column("acc int8", "right"),
            Column("max |err|", "right", drop=3),
            Column("mean |err|", "right", drop=1),
            Column("max err/range", "right", drop=4),
        ],
        title=f"int8 against fp32 on {proof.data['source']}",
    )
    for o in proof.outputs:
        table.add_row(
            Text(o.name),
            _f(o.agreement),
            _f(o.accuracy_fp32),
            _f(o.accuracy_int8),
            f"{o.max_abs:.3g}",
            f"{o.mean_abs:.3g}",
            f"{o.max_rel_range:.3g}",
        )
    return table


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def render_quantize(result: QuantizeResult) -> Group:
    """Everything ``bnfold quantize`` prints (without --json)."""
    t = result.types
    lines = [
        f"types         {t.activation} activations, {t.weight} weights per channel"
        f"{', reduce_range' if t.reduce_range else ''}: {t.reason}",
        f"calibration   {result.options.method} on {result.calibration.source}",
    ]
    fold_line = f"fold          {result.fold.report.summary()} (forward: {result.forward})"
    if result.fold_check is not None:
        worst = max(
            (o.get("max_rel_range") or 0.0 for o in result.fold_check["outputs"]), default=0
        )
        fold_line += f"; fp32 check passed (max err/range {worst:.2e})"
    lines.append(fold_line)
    for name, dead in result.dead_channels.items():
        ch = result.channels[name]
        lines.append(
            f"dead channels {name}: {len(dead)} of {ch.range.min.size} constant over the "
            "calibration data"
        )
    if result.options.exclude:
        lines.append(f"excluded      {', '.join(result.options.exclude)}")
    lines.append(f"float ops     {result.float_ops.summary()} (after onnxruntime's optimisation)")
    s = result.sizes
    lines.append(
        f"size          fp32 {s['fp32'] / 1024:.1f} KiB, folded {s['folded'] / 1024:.1f} KiB, "
        f"int8 {s['int8'] / 1024:.1f} KiB"
    )
    parts: list = [Text("\n".join(lines))]
    if result.proof is not None:
        parts.append(render_proof(result.proof))
        colour = "green" if result.proof.passed else "red"
        verdict = result.proof.verdict()
        if result.forced:
            verdict += " (written with --force)"
        parts.append(Text(f"verdict       {verdict}", style=colour))
        for note in result.proof.notes:
            parts.append(Text(f"note: {note}", style="dim"))
    for note in result.notes:
        parts.append(Text(f"note: {note}", style="dim"))
    return Group(*parts)
