"""Markdown tables: the one writer the package's reports and the experiments' tables use."""

from __future__ import annotations

from collections.abc import Sequence


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]], numbers_from: int | None = None) -> str:
    """``| a | b |`` lines: the header, the separator, one line per row (cells as ``str``).
    Columns from index ``numbers_from`` on are right-aligned (``---:``), as numbers read best;
    None leaves every column to the renderer's default. No trailing newline."""
    width = len(header)
    align = ["---:" if numbers_from is not None and i >= numbers_from else "---" for i in range(width)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
