"""Progress bars: one call, silent when disabled."""

from __future__ import annotations

import pytest

from medattn.progress import progress_bar


def test_disabled_bar_prints_nothing_and_enabled_bar_counts(capsys: pytest.CaptureFixture[str]) -> None:
    bar = progress_bar(3, desc="predict", unit="case", enabled=False)
    bar.update(1)
    bar.set_postfix_str("case_1")
    bar.close()
    assert capsys.readouterr().err == ""
    bar = progress_bar(3, desc="predict", unit="case")
    bar.update(3)
    bar.close()
    assert "predict" in capsys.readouterr().err and bar.n == 3
