"""One Dice, one rule for absent classes, in every command that scores: each caller is checked on the same pair of
masks against a NumPy computation written here.

The pair has five classes (background 0 and 1..4): class 1 overlaps partly, class 2 is predicted but absent from
the reference (Dice 0), class 3 is absent from both (undefined: NaN, left out of means and counted), class 4 is in
the reference but not predicted (Dice 0).
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from medattn.dice import confusion_counts, defined_mean, dice_from_counts, dice_per_class

K = 5
NAMES = ["background", "one", "two", "absent", "four"]
SHAPE = (12, 10, 9)


def _masks() -> tuple[np.ndarray, np.ndarray]:
    """(prediction, reference) class-index maps (X, Y, Z) int64 with the classes of the module docstring."""
    ref = np.zeros(SHAPE, np.int64)
    pred = np.zeros(SHAPE, np.int64)
    ref[2:8, 2:7, 2:6] = 1
    pred[3:9, 2:7, 1:6] = 1  # a shifted block: Dice strictly between 0 and 1
    pred[9:11, 7:9, 6:8] = 2  # predicted only
    ref[0:2, 7:10, 0:3] = 4  # in the reference only
    return pred, ref


def _numpy_dice(pred: np.ndarray, ref: np.ndarray) -> list[float]:
    """The rule, written out: 2|P∩G| / (|P| + |G|) per foreground class, NaN when |P| + |G| = 0."""
    out = []
    for c in range(1, K):
        p, g = pred == c, ref == c
        denom = int(p.sum()) + int(g.sum())
        out.append(2.0 * int((p & g).sum()) / denom if denom else math.nan)
    return out


EXPECTED = _numpy_dice(*_masks())
DEFINED_MEAN = float(np.mean([v for v in EXPECTED if not math.isnan(v)]))


def _same(got: list[float] | np.ndarray, expected: list[float] = EXPECTED) -> None:
    np.testing.assert_allclose(np.asarray(got, dtype=float), np.asarray(expected), rtol=0, atol=1e-12)


def test_the_pair_covers_every_case_of_the_rule() -> None:
    assert 0.0 < EXPECTED[0] < 1.0 and EXPECTED[1] == 0.0 and math.isnan(EXPECTED[2]) and EXPECTED[3] == 0.0


def test_dice_functions_follow_the_rule_on_numpy_and_torch_inputs() -> None:
    pred, ref = _masks()
    _same(dice_per_class(pred, ref, range(1, K)))
    _same(dice_per_class(torch.from_numpy(pred)[None], torch.from_numpy(ref).float()[None], range(1, K)))
    _same(dice_per_class(torch.from_numpy(pred).to(torch.uint8), torch.from_numpy(ref).float(), range(1, K)))
    tp, fp, fn = confusion_counts(pred, ref, [1, 2, 3, 4])
    assert tp.tolist()[2:] == [0, 0] and fp[1] > 0 and fn[3] > 0 and (tp[2], fp[2], fn[2]) == (0, 0, 0)
    _same(dice_from_counts(tp, fp, fn))
    assert math.isnan(float(dice_from_counts(0, 0, 0))) and float(dice_from_counts(0, 3, 0)) == 0.0
    assert defined_mean(EXPECTED) == (pytest.approx(DEFINED_MEAN, abs=1e-12), 1)
    assert math.isnan(defined_mean([math.nan, math.nan])[0]) and defined_mean([]) == (
        pytest.approx(math.nan, nan_ok=True),
        0,
    )
    with pytest.raises(ValueError, match="differ in shape"):
        dice_per_class(pred, ref[:-1], [1])


class _Echo(nn.Module):
    """A 'network' whose logits peak at the class index stored in its input: it predicts exactly its image."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        classes = torch.arange(K, dtype=x.dtype, device=x.device).view(1, K, 1, 1, 1)
        return -((x - classes) ** 2) * self.scale


def test_training_validation_follows_the_rule() -> None:
    from medattn.train.validation import validate

    pred, ref = _masks()
    case = {"image": torch.from_numpy(pred).float()[None], "label": torch.from_numpy(ref).float()[None], "case_id": "c"}
    res = validate(_Echo(), [case, case], (8, 8, 8), NAMES)  # several windows: the sliding-window path is exercised
    _same(res.per_class)
    _same(list(res.per_case["c"]))
    assert res.mean == pytest.approx(DEFINED_MEAN, abs=1e-12)
    assert res.num_empty == (0, 0, 2, 0) and res.num_cases == 2


def test_continual_metrics_follow_the_rule() -> None:
    from medattn.continual.metrics import DiceMatrix
    from medattn.continual.plugin_metrics import EpochDice, ExperienceDice

    pred, ref = _masks()
    p, y = torch.from_numpy(pred)[None, None], torch.from_numpy(ref).float()[None, None]
    metric = ExperienceDice(NAMES)
    metric.reset()
    metric.after_eval_iteration(SimpleNamespace(mb_output=p, mb_y=y, mbatch=SimpleNamespace(meta={"case_id": ["c"]})))
    _same(metric.per_class())
    assert metric.result() == pytest.approx(DEFINED_MEAN, abs=1e-12) and metric.n_empty() == [0, 0, 1, 0]

    epoch = EpochDice(K)
    epoch.reset()
    logits = nn.functional.one_hot(p[:, 0], K).permute(0, 4, 1, 2, 3).float()
    epoch.after_training_iteration(SimpleNamespace(mb_output=[logits], mb_y=y))
    assert epoch.result() == pytest.approx(DEFINED_MEAN, abs=1e-12)

    matrix = DiceMatrix("naive", ["A"], NAMES[1:], ["A"], np.asarray([[metric.per_class()]]))
    assert matrix.matrix()[0, 0] == pytest.approx(DEFINED_MEAN, abs=1e-12)
    assert math.isnan(matrix.matrix("absent")[0, 0])


def test_drift_per_volume_dice_and_drop_follow_the_rule() -> None:
    from medattn.drift.analysis import _dice_summary
    from medattn.drift.features import VolumeFeatures, class_dice, count_undefined_dice, mean_dice

    pred, ref = _masks()
    dice = class_dice(pred, ref, dict(enumerate(NAMES)))
    assert list(dice) == NAMES[1:]
    _same(list(dice.values()))

    def volume(case: str, d: dict[str, float] | None) -> VolumeFeatures:
        return VolumeFeatures(case, "A", np.zeros(2), {}, {}, {}, dice=d)

    vol = volume("v", dice)
    assert vol.mean_dice == pytest.approx(DEFINED_MEAN, abs=1e-12)
    assert vol.to_dict()["dice"]["absent"] is None  # valid JSON: no NaN
    empty = volume("e", class_dice(np.zeros(SHAPE, np.int64), np.zeros(SHAPE, np.int64), dict(enumerate(NAMES))))
    assert empty.mean_dice is None  # every class absent from both: left out of the set mean, and counted
    ref_set, tgt_set = [vol, empty, volume("u", None)], [volume("t", class_dice(ref, ref, dict(enumerate(NAMES))))]
    assert mean_dice(ref_set) == pytest.approx(DEFINED_MEAN, abs=1e-12) and count_undefined_dice(ref_set) == 1
    summary = _dice_summary(ref_set, tgt_set)
    assert summary["target_mean"] == pytest.approx(1.0) and summary["drop"] == pytest.approx(DEFINED_MEAN - 1.0)
    assert (summary["reference_n_empty"], summary["target_n_empty"]) == (1, 0)


def test_evaluate_scores_and_summaries_follow_the_rule(tmp_path: Path) -> None:
    from medattn.evaluate.case import CaseRow
    from medattn.evaluate.metrics import segmentation_scores
    from medattn.evaluate.options import EvaluateOptions
    from medattn.evaluate.results import build_report

    pred, ref = _masks()
    scores = segmentation_scores(pred, ref, [1, 2, 3, 4], (1.0, 1.0, 1.0))
    _same([scores[c].dice for c in (1, 2, 3, 4)])
    absent = scores[3]
    assert math.isnan(absent.hd95) and math.isnan(absent.nsd) and (absent.gt_voxels, absent.pred_voxels) == (0, 0)
    assert math.isinf(scores[2].hd95) and scores[2].nsd == 0.0 and math.isinf(scores[4].hd95)

    labels = dict(enumerate(NAMES))
    del labels[0]
    rows = [
        CaseRow("c", "p", "l", scores=scores),
        CaseRow("d", "p", "l", scores=segmentation_scores(ref, ref, labels, (1, 1, 1))),
    ]
    doc = build_report(rows, labels, EvaluateOptions(resamples=10), tmp_path)
    s = doc["summary"]["3"]
    for m in ("dice", "hd95", "nsd"):  # undefined in both cases: left out and counted
        assert (s[m]["n"], s[m]["n_empty"]) == (0, 2) and math.isnan(s[m]["mean"])
    one = doc["summary"]["1"]["dice"]
    assert (one["n"], one["n_empty"]) == (2, 0) and one["mean"] == pytest.approx((EXPECTED[0] + 1.0) / 2, abs=1e-12)
    mean = doc["summary"]["mean"]["dice"]  # per case over the defined classes, then over cases
    assert mean["mean"] == pytest.approx((DEFINED_MEAN + 1.0) / 2, abs=1e-12) and mean["n_empty"] == 0
    assert doc["conventions"]["both_empty"] == {"dice": None, "hd95": None, "nsd": None}
