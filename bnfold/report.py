"""What a fold did, as data (JSON) and as a rich table."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Folded:
    node: str  # the folded node (a BatchNormalization, or a Mul/Add/Sub/Div)
    op: str
    into: str  # the node(s) that absorbed it, comma-separated
    fold: str  # e.g. "conv+bn", "bn+gemm", "conv+relu+bn+conv", "conv+mul", "bn+mul"
    graph: str
    direction: str = "backward"  # backward, forward, through the activation, merge
    details: dict[str, Any] | None = None  # e.g. a forward fold's scale spread


@dataclass
class Skipped:
    node: str
    reason: str
    graph: str


@dataclass
class FoldReport:
    model: str | None = None
    output: str | None = None
    folded: list[Folded] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    bn_before: int = 0
    bn_after: int = 0
    nodes_before: int = 0
    nodes_after: int = 0
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # seconds
    verify: dict[str, Any] | None = None
    forced: bool = False

    @property
    def bn_folded(self) -> int:
        return sum(1 for f in self.folded if f.op == "BatchNormalization")

    @property
    def other_folded(self) -> int:
        return len(self.folded) - self.bn_folded

    def summary(self) -> str:
        """One line: "folded 52 of 53 BatchNormalization nodes; 1 skipped: ..."."""
        text = f"folded {self.bn_folded} of {self.bn_before} BatchNormalization nodes"
        if self.skipped:
            reasons: dict[str, int] = {}
            for s in self.skipped:
                reasons[s.reason] = reasons.get(s.reason, 0) + 1
            first = "; ".join(
                f"{r}" + (f" (x{n})" if n > 1 else "") for r, n in list(reasons.items())[:2]
            )
            more = "" if len(reasons) <= 2 else f"; and {len(reasons) - 2} other reason(s)"
            text += f"; {len(self.skipped)} skipped: {first}{more}"
        if self.other_folded:
            text += f"; also folded {self.other_folded} per-channel Mul/Add/Sub/Div"
        text += f"; nodes {self.nodes_before} -> {self.nodes_after}"
        return text

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["summary"] = self.summary()
        data["bn_folded"] = self.bn_folded
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)


def render_table(report: FoldReport):
    """A rich Table of every BatchNormalization (and other folded node)."""
    from rich.table import Table

    table = Table(title=f"bnfold: {report.model or 'model'}", show_lines=False)
    table.add_column("node", overflow="fold")
    table.add_column("op")
    table.add_column("result")
    table.add_column("into / reason", overflow="fold")
    for f in report.folded:
        where = f.into if f.graph in ("", "main") else f"{f.into} (in {f.graph})"
        table.add_row(f.node, f.op, f"[green]folded[/] {f.fold}", where)
    for s in report.skipped:
        where = s.reason if s.graph in ("", "main") else f"{s.reason} (in {s.graph})"
        table.add_row(s.node, "BatchNormalization", "[yellow]skipped[/]", where)
    return table
