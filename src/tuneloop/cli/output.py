"""How commands show results: aligned tables for people, JSON for programs."""

from __future__ import annotations

import json
from typing import Any, Iterable, Sequence

import typer


def show_json(value: Any) -> None:
    """Print a value as indented JSON on stdout."""
    typer.echo(json.dumps(value, indent=2, default=str))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "-"
    return str(value)


def show_table(rows: Iterable[dict], columns: Sequence[str], widths: dict[str, int] | None = None) -> None:
    """Print dict rows as an aligned table; long cells are cut to `widths[column]` characters."""
    widths = widths or {}
    cells = [[_cell(row.get(c))[: widths.get(c, 10**6)] for c in columns] for row in rows]
    sizes = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    typer.echo("  ".join(c.upper().ljust(sizes[i]) for i, c in enumerate(columns)).rstrip())
    for row in cells:
        typer.echo("  ".join(v.ljust(sizes[i]) for i, v in enumerate(row)).rstrip())
