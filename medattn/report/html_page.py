"""Self-contained HTML: one file that opens offline and can be mailed or archived on its own.

Images are embedded as base64 ``data:`` URIs, the style sheet is inline, there is no script and nothing is fetched
from the network, so the page shows the same thing on a laptop without a connection and in ten years. Links to
files written beside the report (NIfTI predictions, JSON) are relative and only followed when the reader clicks.

Every piece of text goes through :func:`html.escape`: case ids and file names come from the user's data.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence
from pathlib import Path

from medattn.data.io import atomic_write_text

Cell = str | int | float | None

_STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 72em;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { font-size: 1.25em; margin-top: 2em;
     border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
p.sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
caption { caption-side: top; text-align: left; color: #555; padding-bottom: 0.3em; }
figure { display: inline-block; margin: 0.6em 1em 0.6em 0; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; max-width: 40em; }
.bad { color: #b00020; font-weight: 600; } .good { color: #1b7f3b; font-weight: 600; }
code { background: #f5f5f5; padding: 0 0.2em; }
"""


def esc(text: object) -> str:
    """``text`` as HTML-safe text."""
    return html.escape(str(text), quote=True)


def data_uri(path: str | Path) -> str:
    """A PNG file as a ``data:image/png;base64,...`` URI (the page then needs no file beside it)."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def fmt(value: Cell, digits: int = 3) -> str:
    """A table cell: floats with ``digits`` decimals, None as an en dash, anything else as text."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return "–" if value != value else f"{value:.{digits}f}"
    return str(value)


class Markup(str):
    """Text that is already HTML (a link, a coloured word): :func:`table` inserts it unescaped."""


def table(headers: Sequence[str], rows: Iterable[Sequence[Cell]], caption: str | None = None) -> str:
    """An HTML table; cells are escaped (pass pre-rendered HTML through :class:`Markup`)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in row) + "</tr>" for row in rows)
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value: Cell) -> str:
    return str(value) if isinstance(value, Markup) else esc(fmt(value))


def link(href: str, text: str) -> Markup:
    """A relative link to a file written beside the report."""
    return Markup(f'<a href="{esc(href)}">{esc(text)}</a>')


def span(text: str, css_class: str) -> Markup:
    """Text in one of the page's classes (``good``, ``bad``)."""
    return Markup(f'<span class="{esc(css_class)}">{esc(text)}</span>')


def figure(path: str | Path, caption: str, alt: str | None = None) -> str:
    """A PNG embedded as a data URI, with its caption."""
    return (
        f'<figure><img src="{data_uri(path)}" alt="{esc(alt or caption)}">'
        f"<figcaption>{esc(caption)}</figcaption></figure>"
    )


def paragraph(text: str) -> str:
    return f"<p>{esc(text)}</p>"


def bullets(items: Iterable[str]) -> str:
    """An unordered list of plain-text items (escaped)."""
    return "<ul>" + "".join(f"<li>{esc(t)}</li>" for t in items) + "</ul>"


def section(title: str, *parts: str) -> str:
    """A titled section of already-rendered parts."""
    return f"<section><h2>{esc(title)}</h2>{''.join(parts)}</section>"


def page(title: str, subtitle: str, sections: Sequence[str]) -> str:
    """The whole document."""
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f"<style>{_STYLE}</style></head><body>"
        f'<h1>{esc(title)}</h1><p class="sub">{esc(subtitle)}</p>' + "".join(sections) + "</body></html>\n"
    )


def write_page(path: str | Path, title: str, subtitle: str, sections: Sequence[str]) -> Path:
    """Render :func:`page` and write it atomically."""
    return atomic_write_text(path, page(title, subtitle, sections))
