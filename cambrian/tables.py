"""One way to print a table, for every command.

Why: rich shrinks columns to nothing when the table is wider than the console (80 columns when the
output is a file or a pipe), so scores were printed with the persona, phase and verdict blank. A
terminal now gets a rich table whose columns fold instead of vanishing; anything else (file, pipe,
`| grep`) gets tab-separated text with a header line and every cell complete.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Sequence


@dataclass(frozen=True)
class Column:
    name: str
    wide: bool = False  # free text (delta, reason): takes the space left over, folded across lines


def plain_cell(value: Any) -> str:
    # Tabs and newlines inside a cell would break the one-row-per-line format.
    return " ".join(str("" if value is None else value).split())


def plain_table(columns: Sequence[Column], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["\t".join(c.name for c in columns)]
    lines += ["\t".join(plain_cell(v) for v in row) for row in rows]
    return "\n".join(lines) + "\n"


def _width(column: Column, rows: Sequence[Sequence[Any]], i: int) -> int:
    return max([len(column.name), *(len(plain_cell(r[i])) for r in rows)])


def rich_table(columns: Sequence[Column], rows: Sequence[Sequence[Any]], *, title: str | None = None,
               styles: Sequence[str] | None = None, width: int | None = None):
    """The rich table for a terminal of `width` columns: short columns never wrap or shrink; free-text
    columns fold in the space left, or (too narrow for them) follow the table as `id: text` lines."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    short = [i for i, c in enumerate(columns) if not c.wide]
    wide = [i for i, c in enumerate(columns) if c.wide]
    needed = sum(_width(columns[i], rows, i) + 3 for i in short) + 1
    fits = width is None or width - needed >= 24 * len(wide)
    if width is not None and needed > width:  # not even the short columns fit: one folded record per row
        records = [Text(" · ".join([plain_cell(row[0])] + [f"{columns[i].name} {plain_cell(row[i])}"
                                                           for i in range(1, len(columns)) if plain_cell(row[i])]),
                        style=(styles[n] if styles else "") or "", overflow="fold")
                   for n, row in enumerate(rows)]
        return Group(*([Text(title, style="bold")] if title else []), *records)
    keep = list(range(len(columns))) if fits else short
    table = Table(title=title, expand=True)
    for i in keep:
        c = columns[i]
        if c.wide:
            table.add_column(c.name, overflow="fold", ratio=1)
        else:
            table.add_column(c.name, no_wrap=True, min_width=_width(c, rows, i))
    for n, row in enumerate(rows):
        table.add_row(*("" if row[i] is None else str(row[i]) for i in keep),
                      style=(styles[n] if styles else None) or None)
    if fits:
        return table
    notes = [Text(f"{row[0]} {columns[i].name}: {plain_cell(row[i])}", overflow="fold")
             for row in rows for i in wide if plain_cell(row[i])]
    return Group(table, *notes)


def print_table(columns: Sequence[Column], rows: Sequence[Sequence[Any]], *, title: str | None = None,
                styles: Sequence[str] | None = None, console=None) -> None:
    """A rich table on a terminal; tab-separated text with a header anywhere else."""
    from rich.console import Console

    console = console or Console()
    if not console.is_terminal:
        (console.file or sys.stdout).write(plain_table(columns, rows))
        return
    console.print(rich_table(columns, rows, title=title, styles=styles, width=console.width))
