"""Plain-text tables for a terminal: fixed columns, long cells cut, no colours."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

MAX_CELL = 60


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    text = text.replace("\n", " ")
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """Rows as an aligned table with a header; `(none)` when empty."""
    if not rows:
        return "(none)"
    cols = list(columns) or list(rows[0])
    cells = [[_cell(row.get(c)) for c in cols] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def vertical(record: Mapping[str, Any]) -> str:
    """One record as `key: value` lines (values not cut)."""
    if not record:
        return "(none)"
    width = max(len(k) for k in record)
    return "\n".join(f"{k.ljust(width)}  {'' if v is None else v}" for k, v in record.items())
