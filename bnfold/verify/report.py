"""Rich rendering of a CheckResult for people at a terminal."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from rich.console import Group
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from bnfold.verify.check import CheckResult


def fmt(x: float, digits: int = 3) -> str:
    """A compact number: 0, 1.23e-06, inf."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return "0" if x == 0 else f"{x:.{digits}g}"


def render_check(result: CheckResult) -> Group:
    """The per-output table, then a verdict line, the locate finding and any notes."""
    calibrated = any(o.calibration for o in result.outputs)
    table = Table(
        title=f"bnfold check: {result.candidate} vs {result.reference}", title_justify="left"
    )
    for col in (
        "output",
        "dtype",
        "max abs",
        "max/range",
        "mean abs",
        "p99 abs",
        "cosine",
        "min atol",
        "min rtol",
        "tolerance",
    ):
        table.add_column(
            col, justify="left" if col in ("output", "dtype", "tolerance") else "right"
        )
    if calibrated:
        table.add_column("x noise", justify="right")
    table.add_column("result")
    for o in result.outputs:
        s, t = o.stats, o.tolerance
        row = [
            o.name if o.name == o.candidate_name else f"{o.name} / {o.candidate_name}",
            o.dtype,
            fmt(s.max_abs),
            fmt(s.max_rel_range),
            fmt(s.mean_abs),
            fmt(s.p99_abs),
            f"{s.cosine:.9f}",
            fmt(s.min_atol),
            fmt(s.min_rtol),
            f"{fmt(t.atol)} + {fmt(t.rtol)}·{'max|ref|' if t.mode == 'range' else '|ref|'}",
        ]
        if calibrated:
            row.append(fmt(o.calibration.error_vs_noise, 2) if o.calibration else "-")
        row.append(
            "[green]pass[/green]" if o.passed else f"[red]FAIL[/red] {o.problem or ''}".rstrip()
        )
        table.add_row(*row)
    n = len(result.input_sets)
    verdict = (
        Text(
            f"equivalent: {len(result.outputs)} output(s) within tolerance on {n} input set(s)",
            "green",
        )
        if result.passed
        else Text(
            f"NOT equivalent: {', '.join(result.failed_outputs)} beyond tolerance "
            f"on {n} input set(s)",
            "bold red",
        )
    )
    parts: list = [table, verdict]
    if calibrated:
        setting = next(o.calibration.setting for o in result.outputs if o.calibration)
        parts.append(
            Text(
                f"x noise: candidate max abs error / the reference's own noise ({setting}, "
                "at least one float epsilon of the range); about 1 or below is rounding"
            )
        )
    rules = list(dict.fromkeys(o.rule for o in result.outputs if o.rule))
    if rules:
        parts.append(Text(f"tolerance: {'; '.join(rules)}", "dim"))
    if result.divergence:
        parts.append(Text(result.divergence.describe(), "yellow"))
    parts.extend(Text(f"note: {note}") for note in result.notes)
    return Group(*parts)
