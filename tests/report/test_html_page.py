"""Self-contained HTML: embedded images decode to the file's bytes, and text from the data cannot inject markup."""

from __future__ import annotations

import base64
import re
from pathlib import Path

from medattn.report import html_page as h


def _png(path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1, 1))
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png")
    return path


def test_figures_are_embedded_byte_for_byte(tmp_path: Path) -> None:
    png = _png(tmp_path / "f.png")
    out = h.write_page(tmp_path / "r.html", "t", "s", [h.section("S", h.figure(png, "a caption"))])
    src = re.findall(r'src="data:image/png;base64,([^"]+)"', out.read_text())
    assert len(src) == 1 and base64.b64decode(src[0]) == png.read_bytes()
    png.unlink()  # the page needs nothing beside it
    assert "a caption" in out.read_text()


def test_text_from_the_data_is_escaped_but_markup_cells_are_not() -> None:
    evil = '<script>alert("x")</script>'
    page = h.page(evil, evil, [h.table([evil], [[evil, h.link("predictions/a.nii.gz", "a"), 0.12345, None]])])
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert '<a href="predictions/a.nii.gz">a</a>' in page
    assert "<td>0.123</td>" in page and "<td>–</td>" in page
