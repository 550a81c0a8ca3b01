"""The Dice-matrix metrics against a hand-made matrix, computed independently here, and the files written."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from medattn.continual.metrics import (
    DiceMatrix,
    average_dice,
    backward_transfer,
    forgetting,
    forward_transfer,
    plasticity,
)


def approx6(value: float) -> object:
    return pytest.approx(value, abs=1e-6)  # summaries are rounded to 6 decimals


# Three domains; row i = after training on domain i, column j = evaluated on domain j.
R = np.array(
    [
        [0.80, 0.30, 0.20],
        [0.60, 0.85, 0.40],
        [0.50, 0.70, 0.90],
    ]
)
BEFORE = np.array([0.75, 0.10, 0.05])
NAIVE = np.array(
    [
        [0.82, 0.20, 0.10],
        [0.30, 0.88, 0.30],
        [0.20, 0.40, 0.95],
    ]
)


def test_formulas_match_a_hand_computation() -> None:
    assert average_dice(R) == pytest.approx((0.50 + 0.70 + 0.90) / 3)
    # BWT: final minus just-trained, over the first two domains
    assert backward_transfer(R) == pytest.approx(((0.50 - 0.80) + (0.70 - 0.85)) / 2)
    # forgetting: best before the end (rows 0..1) minus final
    assert forgetting(R) == pytest.approx(((0.80 - 0.50) + (0.85 - 0.70)) / 2)
    # FWT: model just before training on j (row j-1) against the start model
    assert forward_transfer(R, BEFORE) == pytest.approx(((0.30 - 0.10) + (0.40 - 0.05)) / 2)
    # plasticity: diagonal against naive's diagonal
    assert plasticity(R, NAIVE) == pytest.approx(((0.80 - 0.82) + (0.85 - 0.88) + (0.90 - 0.95)) / 3)


def test_forgetting_uses_the_best_earlier_row_not_the_diagonal() -> None:
    r = np.array([[0.5, 0.0], [0.9, 0.6]])  # domain 0 improved after training on domain 1: nothing forgotten
    r3 = np.array([[0.5, 0.1, 0.0], [0.9, 0.8, 0.1], [0.4, 0.7, 0.9]])
    assert forgetting(r) == pytest.approx(0.5 - 0.9)  # only row 0 counts for T=2 (l < T-1)
    assert forgetting(r3) == pytest.approx(((0.9 - 0.4) + (0.8 - 0.7)) / 2)
    assert backward_transfer(r3) == pytest.approx(((0.4 - 0.5) + (0.7 - 0.8)) / 2)


def test_one_domain_and_missing_inputs_give_nan() -> None:
    one = np.array([[0.7]])
    assert average_dice(one) == pytest.approx(0.7)
    for value in (backward_transfer(one), forgetting(one), forward_transfer(R, None), plasticity(R, None)):
        assert math.isnan(value)
    with pytest.raises(ValueError, match="square"):
        backward_transfer(np.zeros((2, 3)))


def test_nan_entries_are_skipped() -> None:
    r = R.copy()
    r[2, 0] = np.nan  # class absent from domain 0 in the final evaluation
    assert backward_transfer(r) == pytest.approx(0.70 - 0.85)


def _matrix(values: np.ndarray, before: np.ndarray | None, method: str = "m") -> DiceMatrix:
    return DiceMatrix(method, ["A", "B", "C"], ["left", "right"], ["A", "B", "C"], values, before)


def test_dice_matrix_summary_overall_and_per_class() -> None:
    left, right = R, R - 0.1
    values = np.stack([left, right], axis=-1)
    before = np.stack([BEFORE, BEFORE], axis=-1)
    naive = _matrix(np.stack([NAIVE, NAIVE], axis=-1), before, "naive")
    s = _matrix(values, before).summary(naive)
    overall = (left + right) / 2
    assert s["left"]["bwt"] == approx6(backward_transfer(left))
    assert s["right"]["average_dice"] == approx6(average_dice(right))
    assert s["overall"]["forgetting"] == approx6(forgetting(overall))
    assert s["overall"]["fwt"] == approx6(forward_transfer(overall, BEFORE))
    assert s["overall"]["plasticity"] == approx6(plasticity(overall, NAIVE))
    joint = DiceMatrix("joint", ["A", "B", "C"], ["left", "right"], ["joint"], values[-1:], None).summary()
    assert joint["overall"]["average_dice"] == approx6(float(overall[-1].mean()))
    assert joint["overall"]["bwt"] is None


def test_outputs_json_csv_png_round_trip(tmp_path: Path) -> None:
    values = np.stack([R, R], axis=-1)
    values[0, 2, 1] = np.nan
    m = _matrix(values, np.stack([BEFORE, BEFORE], axis=-1))
    paths = m.write(tmp_path)
    doc = json.loads(paths["json"].read_text())  # strict JSON: NaN written as null
    assert doc["matrix"]["overall"][0][2] == pytest.approx(0.20)  # the NaN class is skipped in the mean
    assert doc["matrix"]["right"][0][2] is None
    assert doc["summary"]["overall"]["bwt"] == approx6(backward_transfer(R))
    back = DiceMatrix.from_dict(doc)
    np.testing.assert_allclose(back.values, np.round(values, 6), equal_nan=True)
    rows = list(csv.DictReader(paths["matrix_csv"].open()))
    assert {r["after"] for r in rows} == {"before", "A", "B", "C"}
    assert len(rows) == 4 * 3 * 3  # rows x domains x (mean + 2 classes)
    assert (
        next(r for r in rows if (r["after"], r["evaluated_on"], r["class"]) == ("B", "C", "left"))["dice"] == "0.4000"
    )
    summary = list(csv.reader(paths["summary_csv"].open()))
    assert summary[0] == ["metric", "overall", "left", "right"]
    png = paths["png"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
