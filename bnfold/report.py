"""What a fold did, as data (JSON) and as rich renderables that fit the terminal."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import RenderableType

DIRECTIONS = ("backward", "through the activation", "forward", "merge")
_DIRECTION_SPLIT = re.compile(r"; (?=(?:backward|through the activation|forward|merge): )")

# Refusals that only say there is no linear layer on that side (nothing to fold into there).
_NO_NEIGHBOUR = (
    "not a linear layer",
    "is a graph input",
    "is a graph output",
    "nothing reads its output",
    "its input comes from",
)
NO_NEIGHBOUR = "no linear layer beside it"
# (text in a refusal, its short name in the summary), first match wins
_SHORT = (
    ("training_mode=1", "training mode"),
    ("is_test=0", "training mode"),
    ("consumed_inputs", "old BatchNormalization"),
    ("spatial=0", "spatial=0"),
    ("optional output", "statistics outputs used"),
    ("int8:", "int8 guard"),
    ("negative scale", "negative BN scale"),
    ("pads its input", "next Conv pads"),
    ("counts padding", "padded AveragePool"),
    ("also feeds", "layer output shared"),
    ("also a graph output", "layer output is a graph output"),
    ("would not be exact", "not exact in its dtype"),
    ("function body", "function body would grow"),
    ("is not a constant", "parameters not constant"),
    ("is missing", "parameters missing"),
    ("not floating point", "integer weights"),
    ("not static", "unknown shapes"),
    ("unknown", "unknown shapes"),
    ("channels meet", "channel count mismatch"),
    ("features meet", "channel count mismatch"),
)


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
    reason: str  # every direction tried: "backward: ...; forward: ..."
    graph: str

    @property
    def short(self) -> str:
        """The decisive reason in a few words (see :func:`short_reason`)."""
        return short_reason(self.reason)


def reason_parts(reason: str) -> list[tuple[str | None, str]]:
    """``"backward: a; forward: b"`` -> [("backward", "a"), ("forward", "b")]; a reason from
    one direction only has None as its direction."""
    parts: list[tuple[str | None, str]] = []
    for part in _DIRECTION_SPLIT.split(reason):
        direction = next((d for d in DIRECTIONS if part.startswith(f"{d}: ")), None)
        parts.append((direction, part[len(direction) + 2 :] if direction else part))
    return parts


def short_reason(reason: str) -> str:
    """The decisive reason, abbreviated: the last direction's refusal that is not merely "no
    linear layer on this side" (else that), named by a known phrase or its first clause. The
    last: the forward fold is the most general one, so what stops it stops the BN (a negative
    scale stops the fold through a ReLU, but a padded Conv after it stops every fold)."""
    texts = [text for _, text in reason_parts(reason)]
    decisive = next((t for t in reversed(texts) if not any(p in t for p in _NO_NEIGHBOUR)), None)
    if decisive is None:
        return NO_NEIGHBOUR
    for phrase, short in _SHORT:
        if phrase in decisive:
            return short
    clause = re.split(r"[:;(]", re.sub(r"'[^']*' ?", "", decisive), maxsplit=1)[0].strip()
    return clause if len(clause) <= 40 else clause[:39] + "…"


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
    forward: str | None = None  # the forward mode folded with
    ops_before: dict[str, int] = field(default_factory=dict)
    ops_after: dict[str, int] = field(default_factory=dict)
    weights_before: int = 0  # bytes of initializers and Constant tensors
    weights_after: int = 0
    file_bytes_before: int | None = None  # the model file(s) on disk
    file_bytes_after: int | None = None  # the files written
    files_written: list[str] = field(default_factory=list)  # the model, then its external data
    inputs: list[dict[str, Any]] = field(default_factory=list)  # name, dtype, shape
    outputs: list[dict[str, Any]] = field(default_factory=list)
    initializer_inputs: int = 0  # IR < 4: graph inputs that are initializers (not listed)

    @property
    def bn_folded(self) -> int:
        return sum(1 for f in self.folded if f.op == "BatchNormalization")

    @property
    def other_folded(self) -> int:
        return len(self.folded) - self.bn_folded

    def skipped_by_reason(self) -> dict[str, int]:
        """Skipped nodes counted by their decisive reason (abbreviated), most frequent first."""
        counts: dict[str, int] = {}
        for s in self.skipped:
            counts[s.short] = counts.get(s.short, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))

    def ops_changed(self) -> dict[str, tuple[int, int]]:
        """Op types whose count changed: op -> (before, after)."""
        names = sorted(set(self.ops_before) | set(self.ops_after))
        return {
            op: (self.ops_before.get(op, 0), self.ops_after.get(op, 0))
            for op in names
            if self.ops_before.get(op, 0) != self.ops_after.get(op, 0)
        }

    def summary(self) -> str:
        """One short line: "folded 3 of 4 BatchNormalization nodes; 1 skipped (next Conv
        pads); nodes 15 -> 12" (the full reasons are in the table and the JSON)."""
        text = f"folded {self.bn_folded} of {self.bn_before} BatchNormalization nodes"
        if self.skipped:
            counts = self.skipped_by_reason()
            if len(counts) == 1:
                reasons = next(iter(counts))
            else:
                reasons = ", ".join(f"{r} {n}" for r, n in counts.items())
            text += f"; {len(self.skipped)} skipped ({reasons})"
        if self.other_folded:
            ops: dict[str, int] = {}
            for f in self.folded:
                if f.op != "BatchNormalization":
                    ops[f.op] = ops.get(f.op, 0) + 1
            text += "; also folded " + ", ".join(f"{n} {op}" for op, n in ops.items())
        text += f"; nodes {self.nodes_before} -> {self.nodes_after}"
        return text

    def nothing_folded(self) -> str | None:
        """The line saying nothing was folded (None when something was)."""
        if self.folded:
            return None
        if self.bn_before == 0:
            return "nothing to fold: the model has no BatchNormalization node"
        return (
            f"nothing folded: all {self.bn_before} BatchNormalization node(s) stay (reasons above)"
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for entry, skipped in zip(data["skipped"], self.skipped, strict=True):
            entry["short"] = skipped.short
        data["summary"] = self.summary()
        data["bn_folded"] = self.bn_folded
        data["skipped_by_reason"] = self.skipped_by_reason()
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)


def size_text(nbytes: int) -> str:
    """Bytes as B, KiB, MiB or GiB, 3 significant figures."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.3g} {unit}"
    return f"{nbytes} B"


def _in_graph(text: str, graph: str) -> str:
    return text if graph in ("", "main") else f"{text} (in {graph})"


_RESULT = {
    "backward": "backward",
    "forward": "forward",
    "through the activation": "through act.",
    "merge": "merge",
}


def forward_figures(details: dict[str, Any] | None) -> str | None:
    """A forward fold's scale spread and int8 zero share before -> after (the reader whose
    share grows most), e.g. "scale spread 1.26; int8 zeros 0.0% -> 0.0%"."""
    if not details or "scale_spread" not in details:
        return None
    parts = [f"scale spread {details['scale_spread']:.3g}"]
    readers = [r for r in details.get("int8") or [] if "zero_share_after" in r]
    if readers:
        worst = max(readers, key=lambda r: r["zero_share_after"] - r["zero_share_before"])
        parts.append(
            f"int8 zeros {worst['zero_share_before']:.1%} -> {worst['zero_share_after']:.1%}"
            + (f" ({worst['consumer']})" if len(readers) > 1 else "")
        )
    return "; ".join(parts)


def render_table(report: FoldReport) -> RenderableType:
    """Every BatchNormalization (and other folded node): folded how and into what, or skipped
    with every direction's reason on its own line; columns dropped to fit the width."""
    from rich.text import Text

    from bnfold.tables import Column, FitTable

    with_op = any(f.op != "BatchNormalization" for f in report.folded)
    columns = (
        [Column("node", wrap=True), Column("op", drop=2)] if with_op else [Column("BN", wrap=True)]
    )
    table = FitTable(
        [
            *columns,
            Column("result"),
            Column("fold", drop=1),
            Column("into / reason", wrap=True),
        ],
        title=f"bnfold: {report.model or 'model'}",
    )
    for f in report.folded:
        into = Text(_in_graph(f.into, f.graph))
        figures = forward_figures(f.details)
        if figures:
            into.append(f"\n{figures}", style="dim")
        result = Text(_RESULT.get(f.direction, f.direction), style="green")
        op = [Text(f.op)] if with_op else []
        table.add_row(Text(f.node), *op, result, Text(f.fold), into)
    for s in report.skipped:
        lines = [f"{d}: {t}" if d else t for d, t in reason_parts(s.reason)]
        reason = Text(_in_graph("\n".join(lines), s.graph))
        op = [Text("BatchNormalization")] if with_op else []
        table.add_row(Text(s.node), *op, Text("skipped", style="yellow"), Text(""), reason)
    return table


def render_facts(report: FoldReport, *, signature: bool = False) -> RenderableType:
    """What changed besides the BNs: op counts (changed ones), nodes, size, elapsed time; with
    ``signature`` the inputs and outputs too."""
    from rich.table import Table
    from rich.text import Text

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    changed = report.ops_changed()
    if changed:
        ops = ", ".join(f"{op} {a} -> {b}" for op, (a, b) in changed.items())
        grid.add_row("ops", Text(ops))
    grid.add_row("nodes", f"{report.nodes_before} -> {report.nodes_after}")
    grid.add_row("size", Text(_size_line(report)))
    total = sum(report.timings.values())
    parts = ", ".join(f"{k} {v:.2f}" for k, v in report.timings.items())
    grid.add_row("time", f"{total:.2f} s ({parts})")
    if signature:
        for label, values in (("inputs", report.inputs), ("outputs", report.outputs)):
            text = "; ".join(_value_text(v) for v in values) or "none"
            if label == "inputs" and report.initializer_inputs:
                text += f" (and {report.initializer_inputs} initializer inputs, IR < 4)"
            grid.add_row(label, Text(text))
    return grid


def _value_text(v: dict[str, Any]) -> str:
    shape = "?" if v.get("shape") is None else "[" + ", ".join(map(str, v["shape"])) + "]"
    return f"{v['name']} {v.get('dtype') or '?'} {shape}"


def _size_line(report: FoldReport) -> str:
    weights = f"weights {size_text(report.weights_before)} -> {size_text(report.weights_after)}"
    if report.file_bytes_before is None:
        return weights
    before = size_text(report.file_bytes_before)
    if report.file_bytes_after is not None:
        return f"{before} -> {size_text(report.file_bytes_after)} on disk ({weights})"
    estimate = max(0, report.file_bytes_before - report.weights_before + report.weights_after)
    return f"{before} on disk -> about {size_text(estimate)} ({weights})"


def render_report(report: FoldReport, *, signature: bool = False) -> RenderableType:
    """The BN table, the facts, notes, the summary line and, when nothing was folded, the line
    that says so."""
    from rich.console import Group
    from rich.text import Text

    parts: list[RenderableType] = []
    if report.folded or report.skipped:
        parts.append(render_table(report))
    parts.append(render_facts(report, signature=signature))
    parts.extend(Text.assemble(("note: ", "dim"), note) for note in report.notes)
    parts.append(Text(report.summary()))
    nothing = report.nothing_folded()
    if nothing:
        parts.append(Text(nothing, style="yellow"))
    return Group(*parts)
