"""Calibration of the drift decision: the feature cache and the repeated-split rates on generated features."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medattn.drift import calibration
from medattn.drift.calibration import calibrate, load_features, rate_interval, save_features
from medattn.drift.features import VolumeFeatures
from medattn.drift.options import DriftOptions

MIX = np.random.default_rng(42).normal(size=(3, 12))  # low-rank structure, as bottleneck features have


def _volumes(n: int, seed: int, shift: float = 0.0, dice: float = 0.8, prefix: str = "v") -> list[VolumeFeatures]:
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 3)) + np.array([shift, 0.0, 0.0])
    model = latent @ MIX + 0.3 * rng.normal(size=(n, 12))
    return [
        VolumeFeatures(
            case_id=f"{prefix}{i}",
            domain="d",
            model=model[i],
            prediction={"entropy": float(0.1 + 0.01 * rng.normal()), "volume_fg": float(1000 + 50 * rng.normal())},
            image={"q50": float(rng.normal()), "noise_rel": 0.01},
            metadata={"spacing": [1.0, 1.0, 1.0], "Manufacturer": "Acme"},
            dice={"fg": dice + 0.01 * rng.normal(), "bg2": dice},
        )
        for i in range(n)
    ]


def test_features_round_trip_through_npz(tmp_path: Path) -> None:
    feats = _volumes(5, 0)
    feats[2].dice = None  # a volume without a label
    feats[3].prediction = {"entropy": 0.2}  # a class never predicted has no volume key
    path = save_features(tmp_path / "f.npz", feats, [{"case": "bad", "file": "bad.nii.gz", "reason": "x"}], {"k": 1})
    back, failures, info = load_features(path)
    assert [f.case_id for f in back] == [f.case_id for f in feats] and info["k"] == 1
    assert failures == [{"case": "bad", "file": "bad.nii.gz", "reason": "x"}]
    for a, b in zip(feats, back):
        np.testing.assert_array_equal(a.model, b.model)
        assert (a.prediction, a.image, a.metadata, a.dice) == (b.prediction, b.image, b.metadata, b.dice)
        assert a.domain == b.domain


def test_cache_is_reused_only_for_the_same_model_and_volumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def fake_extract(loaded: Any, items: Any, **kw: Any) -> tuple[list[VolumeFeatures], list[dict[str, str]]]:
        calls.append([it["case_id"] for it in items])
        return _volumes(len(items), len(calls)), []

    import medattn.drift.extract as extract
    import medattn.models.model_file as model_file

    monkeypatch.setattr(extract, "extract_features", fake_extract)
    monkeypatch.setattr(model_file, "load_model", lambda *a, **k: None)
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights 1")
    items = [{"case_id": f"c{i}", "image": [f"c{i}.nii.gz"]} for i in range(4)]
    cache = tmp_path / "cache" / "ref.npz"
    first, _ = calibration.cached_features(cache, model, items)
    again, _ = calibration.cached_features(cache, model, items)
    assert len(calls) == 1 and cache.is_file()
    np.testing.assert_array_equal(first[0].model, again[0].model)
    calibration.cached_features(cache, model, items[:3])  # other volumes
    model.write_bytes(b"weights 2")  # another model
    calibration.cached_features(cache, model, items[:3])
    assert len(calls) == 3


def test_false_alarms_stay_near_alpha_and_a_shift_is_found() -> None:
    reference = _volumes(40, 1)
    null = _volumes(30, 2, prefix="v")  # same scanner, other volumes
    shifted = {
        "far": _volumes(30, 3, shift=4.0, dice=0.6, prefix="v"),  # ids pair with the null's: v0_far ... below
        "none": _volumes(30, 4),
    }
    for f in shifted["far"]:
        f.case_id = f"{f.case_id}_far"
    res = calibrate(reference, shifted, null, options=DriftOptions(permutations=200), repeats=60, n_target=10)
    doc = res.to_dict()
    fpr = doc["false_positive_rate"]
    assert fpr["rate"] <= 0.12 and fpr["rate_ci95"][0] <= 0.05  # at most alpha, up to the spread of 60 repeats
    assert doc["shifts"]["none"]["rate"] <= 0.12  # a "shift" that is not one is not found either
    far = doc["shifts"]["far"]
    assert far["rate"] >= 0.9 and far["auroc"] > 0.9 and far["flagged_fraction"] > 0.5
    assert far["dice_drop"] == pytest.approx(0.2, abs=0.02)
    assert far["dice_drop_paired"] == pytest.approx(0.2, abs=0.02) and far["n_paired"] == 30
    assert doc["shifts"]["none"]["n_paired"] == 0
    assert len(doc["p_values"]["null"]["mmd"]) == 60
    assert 0.0 <= fpr["flagged_fraction"] <= 0.15  # volume level: near the calibrated 5%
    table = res.markdown()
    assert "| far | 30 | 10 | power" in table and "FPR" in table


def test_null_held_out_of_the_reference_and_small_sets() -> None:
    reference = _volumes(24, 5)
    tiny = {"site": _volumes(3, 6, shift=3.0)}  # fewer volumes than n_target: the whole set, every repeat
    res = calibrate(reference, tiny, None, options=DriftOptions(permutations=200), repeats=20, n_target=10)
    doc = res.to_dict()
    assert res.reference_size == 14 and "held out" in doc["null_mode"]
    site = doc["shifts"]["site"]
    assert site["whole_set"] is True and site["n_target"] == 10 and site["n_volumes"] == 3
    assert "| site | 3 | 3 |" in res.markdown()
    with pytest.raises(ValueError, match="at least 4 reference"):
        calibrate(_volumes(12, 7), tiny, None, repeats=2, n_target=10)


def test_rate_interval_is_the_exact_binomial_one() -> None:
    lo, hi = rate_interval(0, 200)
    assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** (1 / 200), rel=1e-6)
    lo, hi = rate_interval(10, 200)
    assert lo < 0.05 < hi
