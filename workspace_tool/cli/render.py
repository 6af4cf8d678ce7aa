"""Render data for the CLI: aligned tables or JSON on stdout; messages on stderr. No click here."""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO


def _plain(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, float):
        return round(value, 3)
    return value


def to_json(data: Any) -> str:
    return json.dumps(data, default=_plain, indent=2, sort_keys=False)


def format_cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], headers: Sequence[str] | None = None) -> str:
    """An aligned plain-text table; '-' for missing values."""
    heads = list(headers or [c.upper().replace("_", " ") for c in columns])
    cells = [[format_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(heads)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def emit(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str], *, as_json: bool, out: TextIO | None = None
) -> None:
    out = out or sys.stdout
    if as_json:
        out.write(to_json([{k: _plain(v) for k, v in r.items()} for r in rows]) + "\n")
    elif rows:
        out.write(table(rows, columns) + "\n")
