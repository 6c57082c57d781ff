"""The one table renderer: the CLI's aligned text tables, the Markdown tables of compare and
tune-decision, and the HTML tables of the run report."""
from __future__ import annotations

import html
import math
from collections.abc import Sequence


def format_value(value: object, digits: int = 4) -> str:
    """A cell: integers with thousands separators, floats to `digits` decimals (large ones as
    integers), NaN and None as "nan" and "–"."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.{digits}f}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def render_table(header: Sequence[str], rows: Sequence[Sequence[object]], style: str = "text") -> str:
    """`style` "markdown": a GitHub table; "html": a <table> with escaped cells, numbers in cells of
    class "num"; "text": columns padded to a common width, text left-aligned and numbers right-
    aligned, for a terminal. Cells go through `format_value`."""
    cells = [[format_value(c) for c in row] for row in rows]
    if style == "html":
        return _html_table(header, rows, cells)
    if style == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(header)]
    numeric = [all(_is_number(row[i]) for row in rows) and bool(rows) for i in range(len(header))]

    def line(values: Sequence[str]) -> str:
        padded = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "  ".join(padded).rstrip()

    return "\n".join([line(list(header))] + [line(row) for row in cells])


def _html_table(header: Sequence[str], rows: Sequence[Sequence[object]], cells: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for row, texts in zip(rows, cells):
        tds = "".join(f'<td class="num">{html.escape(t)}</td>' if _is_number(v) and v is not None
                      else f"<td>{html.escape(t)}</td>" for v, t in zip(row, texts))
        body.append(f"<tr>{tds}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) or value is None
