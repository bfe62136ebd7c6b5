"""Rich rendering of a CheckResult for people at a terminal."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from rich.console import Group, RenderableType
from rich.text import Text

from bnfold.tables import Column, FitTable

if TYPE_CHECKING:
    from bnfold.verify.check import CheckResult


def fmt(x: float, digits: int = 3) -> str:
    """A compact number: 0, 1.23e-06, inf."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return "0" if x == 0 else f"{x:.{digits}g}"


def render_check(result: CheckResult) -> Group:
    """The per-output table (columns dropped by priority to fit the width), then a verdict
    line, the tolerance rule, the locate finding and any notes."""
    calibrated = any(o.calibration for o in result.outputs)
    columns = [
        Column("output", wrap=True),
        Column("dtype", drop=6),
        Column("max abs", "right"),
        Column("max/range", "right"),
        Column("mean abs", "right", drop=4),
        Column("p99 abs", "right", drop=5),
        Column("cosine", "right", drop=7),
        Column("min atol", "right", drop=2),
        Column("min rtol", "right", drop=3),
        Column("tolerance", drop=1),
    ]
    if calibrated:
        columns.append(Column("x noise", "right"))
    columns.append(Column("result", wrap=True))
    table = FitTable(
        columns,
        title=f"bnfold check: {result.candidate} vs {result.reference}",
        dropped_note="left out to fit {width} columns: {names}; --json has every figure",
    )
    for o in result.outputs:
        s, t = o.stats, o.tolerance
        row: list[RenderableType] = [
            Text(o.name if o.name == o.candidate_name else f"{o.name} / {o.candidate_name}"),
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
            Text("pass", style="green")
            if o.passed
            else Text.assemble(("FAIL", "red"), f" {o.problem}" if o.problem else "")
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
    parts: list[RenderableType] = [table, verdict]
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
