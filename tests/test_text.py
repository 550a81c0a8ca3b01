"""The one table formatter: widths, alignment, the rule, no trailing spaces."""

from __future__ import annotations

import pytest

from medattn.text import format_table, table_lines


def test_left_aligned_table_with_a_rule() -> None:
    text = format_table(["model", "params", "note"], [["ag_unet", 1.5, ""], ["u", "12", "x"]])
    assert text.splitlines() == ["model    params  note", "-------  ------  ----", "ag_unet  1.5", "u        12      x"]


def test_right_aligned_columns_without_a_rule() -> None:
    lines = table_lines(["scanner", "Dice"], [["A", "0.912"], ["Bb", "-"]], align="<>", rule=False)
    assert lines == ["scanner   Dice", "A        0.912", "Bb           -"]
    with pytest.raises(ValueError, match="align"):
        table_lines(["a"], [["b"]], align="^")


def test_markdown_table_is_github_flavoured() -> None:
    from medattn.text import markdown_table

    assert markdown_table(["method", "bwt"], [["replay", "+0.0100"], ["naive", None]]) == (
        "| method | bwt |\n|---|---|\n| replay | +0.0100 |\n| naive | None |"
    )
