"""Aligned text tables for the list commands (no third-party formatting)."""

from collections.abc import Iterable, Sequence
from typing import Any

import typer


def print_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Rows under a header line, columns aligned; None prints as an empty cell."""
    cells = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    for row in [list(headers), *cells]:
        typer.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
