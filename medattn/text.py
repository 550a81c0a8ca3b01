"""Plain text for the terminal: the one formatter behind every table a command or benchmark prints, and plurals.

Example::

    >>> print(format_table(["model", "params"], [["ag_unet", "1.2M"], ["unet", "0.9M"]], align="<>"))
    model    params
    -------  ------
    ag_unet    1.2M
    unet       0.9M
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def table_lines(
    header: Sequence[Any], rows: Sequence[Sequence[Any]], *, align: str = "", rule: bool = True
) -> list[str]:
    """The lines of a table: cells ``str()``-ed, columns two spaces apart, each as wide as its widest cell.

    Args:
        header: the column names.
        rows: the cells, one sequence per row, as many as ``header``.
        align: one character per column, ``<`` (left) or ``>`` (right); columns past its end are left-aligned.
        rule: a line of dashes under the header.

    Trailing spaces are stripped from every line but the rule.
    """
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    sides = [align[i] if i < len(align) else "<" for i in range(len(widths))]
    bad = sorted(set(sides) - {"<", ">"})
    if bad:
        raise ValueError(f"align: expected '<' or '>' per column, got {align!r}")
    lines = [
        "  ".join(c.rjust(w) if s == ">" else c.ljust(w) for c, w, s in zip(r, widths, sides)).rstrip() for r in cells
    ]
    if rule:
        lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def format_table(header: Sequence[Any], rows: Sequence[Sequence[Any]], *, align: str = "", rule: bool = True) -> str:
    """:func:`table_lines` joined by newlines (no newline at the end)."""
    return "\n".join(table_lines(header, rows, align=align, rule=rule))


def markdown_table(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table (``| a | b |``, then ``|---|---|``), cells ``str()``-ed, no newline at the
    end: the form of the tables medattn writes into ``.md`` files (``RUN/comparison.md``)."""
    lines = ["| " + " | ".join(str(c) for c in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def plural(n: int, word: str) -> str:
    """``"1 case"``, ``"3 cases"``: ``n`` and ``word``, with an ``s`` unless ``n`` is 1."""
    return f"{n} {word}" + ("" if n == 1 else "s")
