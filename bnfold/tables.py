"""Rich tables that fit the width they are printed at: columns are dropped by priority.

A ``FitTable`` is built once (columns and rows) and decides at render time, from the console's
width, which columns it can show without breaking a cell over lines: it drops the column with
the highest ``drop`` rank until the rest fits, then says below the table which columns it left
out. Only columns marked ``wrap`` (free text such as a reason) may wrap, at word boundaries.
Where even the columns that are never dropped do not fit (long node names), the rows are
stacked instead: each row's first cell on a line of its own, the others below it, one per line.
Nothing forces a width: piped output gets rich's default (80, or ``COLUMNS``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

_UNBOUNDED = 100_000
WRAP_FLOOR = 16  # a wrapping column is not squeezed below this (or its longest word)


@dataclass(frozen=True)
class Column:
    """One column. ``drop``: 0 never dropped; among the others the highest goes first.
    ``wrap``: the cell may wrap at word boundaries (otherwise it stays on one line)."""

    header: str
    justify: Literal["left", "right"] = "left"
    drop: int = 0
    wrap: bool = False


@dataclass
class FitTable:
    """A table that drops columns to fit its width; see the module docstring."""

    columns: list[Column]
    title: str | None = None
    rows: list[list[RenderableType]] = field(default_factory=list)
    dropped_note: str = "left out to fit {width} columns: {names}"

    def add_row(self, *cells: RenderableType) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"{len(cells)} cells for {len(self.columns)} columns")
        self.rows.append(list(cells))

    def table(self, keep: Iterable[int], widths: dict[int, int] | None = None) -> Table:
        """The rich Table with the columns at indices ``keep``; ``widths`` fixes their widths
        (rich's own shrinking, given least widths, can come out a column wider than the
        console, which then crops the table's right edge)."""
        kept = list(keep)
        table = Table()
        for i in kept:
            col = self.columns[i]
            table.add_column(
                col.header,
                justify=col.justify,
                no_wrap=not col.wrap,
                overflow="fold" if col.wrap else "ellipsis",
                width=(widths or {}).get(i),
            )
        for row in self.rows:
            table.add_row(*(row[i] for i in kept))
        return table

    def _widths(self, console: Console) -> tuple[dict[int, int], dict[int, int]]:
        """Each column's least and natural width: one-line columns their widest cell (both),
        wrapping columns at least their longest word and ``WRAP_FLOOR`` (or their widest
        cell, if narrower)."""
        wide = console.options.update_width(_UNBOUNDED)
        least, naturals = {}, {}
        for i, col in enumerate(self.columns):
            cells: list[RenderableType] = [col.header, *(row[i] for row in self.rows)]
            natural = max(Measurement.get(console, wide, c).maximum for c in cells)
            naturals[i] = least[i] = natural
            if col.wrap:
                word = max(Measurement.get(console, wide, c).minimum for c in cells)
                least[i] = min(natural, max(word, WRAP_FLOOR, len(col.header)))
        return least, naturals

    def _spread(
        self, keep: list[int], least: dict[int, int], naturals: dict[int, int], width: int
    ) -> dict[int, int]:
        """Widths for ``keep`` within ``width``: the least ones, then what is left shared out
        among the wrapping columns, none beyond its natural width."""
        widths = {i: least[i] for i in keep}
        spare = width - 1 - sum(w + 3 for w in widths.values())  # borders and padding
        growing = [i for i in keep if widths[i] < naturals[i]]
        while spare > 0 and growing:
            share = max(1, spare // len(growing))
            for i in list(growing):
                add = min(share, naturals[i] - widths[i], spare)
                widths[i] += add
                spare -= add
                if widths[i] >= naturals[i]:
                    growing.remove(i)
        return widths

    def fitted(self, console: Console, width: int) -> tuple[Table | Group, list[str]]:
        """The table for ``width`` and the headers of the columns left out (every column
        when even the ones never dropped do not fit: then the rows are stacked)."""
        widths, naturals = self._widths(console)
        keep = list(range(len(self.columns)))
        while sum(widths[i] + 3 for i in keep) + 1 > width:
            droppable = [i for i in keep if self.columns[i].drop > 0]
            if not droppable:
                return self.stacked(), []
            keep.remove(max(droppable, key=lambda i: (self.columns[i].drop, i)))
        dropped = [c.header for i, c in enumerate(self.columns) if i not in keep]
        return self.table(keep, self._spread(keep, widths, naturals, width)), dropped

    def stacked(self) -> Group:
        """Every row as a block: its first cell on a line of its own, then one line per other
        (non-empty) cell, ``header  value``, values wrapping at words."""
        blocks: list[RenderableType] = []
        for row in self.rows:
            first = row[0] if isinstance(row[0], Text) else Text.from_markup(str(row[0]))
            blocks.append(Text.assemble((f"{self.columns[0].header} ", "dim"), first))
            grid = Table.grid(padding=(0, 2))
            grid.add_column(no_wrap=True, style="dim")
            grid.add_column(overflow="fold")
            for col, cell in zip(self.columns[1:], row[1:], strict=True):
                if cell != "" and not (isinstance(cell, Text) and not cell.plain):
                    grid.add_row(f"  {col.header}", cell)
            blocks.append(grid)
        return Group(*blocks)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        table, dropped = self.fitted(console, options.max_width)
        if self.title:
            yield Text(self.title, style="italic")
        yield table
        if dropped:
            note = self.dropped_note.format(width=options.max_width, names=", ".join(dropped))
            yield Text(f"({note})", style="dim")

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        table, _ = self.fitted(console, options.max_width)
        return Measurement.get(console, options, table)
