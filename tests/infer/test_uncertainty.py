"""``medattn predict --save-uncertainty``: the entropy map is the normalised entropy of the probabilities, the TTA
disagreement map is the share of single mirrored passes (each run here as its own ``predict`` on a mirrored copy)
that disagree with the TTA mask, and ``predictions.json`` summarises both per case."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import nibabel as nib
import numpy as np

from medattn.cli import main
from medattn.infer.uncertainty import check_first
from tests.conftest import blob_case, write_nifti

SHAPE = (21, 17, 13)  # 1 mm, RAS: the plan's grid, so nothing is resampled and maps compare voxel for voxel


def _load(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


def test_entropy_map_is_the_normalised_entropy_of_the_probabilities(tmp_path: Path, model_file) -> None:
    src = write_nifti(tmp_path / "in" / "scan.nii.gz", blob_case(SHAPE, seed=3)[0])
    out = tmp_path / "out"
    argv = ["predict", str(model_file()), str(src), str(out), "--save-uncertainty", "--save-probabilities"]
    assert main([*argv, "--quiet"]) == 0
    probs = _load(out / "probabilities" / "scan.nii.gz").astype(np.float64)  # (X, Y, Z, K)
    expected = -(probs * np.log(np.clip(probs, 1e-12, None))).sum(-1) / np.log(probs.shape[-1])
    entropy = _load(out / "uncertainty" / "scan_entropy.nii.gz")
    np.testing.assert_allclose(entropy, expected, atol=1e-4)
    assert not (out / "uncertainty" / "scan_disagreement.nii.gz").exists()  # no TTA, no disagreement map
    doc = json.loads((out / "predictions.json").read_text())
    (case,) = doc["cases"]
    mask = _load(out / "scan.nii.gz") > 0
    summary = case["uncertainty"]
    assert summary["foreground_voxels"] == int(mask.sum())
    assert abs(summary["entropy_mean_foreground"] - float(entropy[mask].mean())) < 1e-4
    assert summary["uncertain_voxels"] == int((entropy >= 0.5).sum())
    assert case["uncertainty_maps"] == [str(out / "uncertainty" / "scan_entropy.nii.gz")]
    assert doc["check_first"] == ["scan"]


def test_tta_disagreement_is_the_share_of_mirrored_passes_that_disagree(tmp_path: Path, model_file) -> None:
    image = blob_case(SHAPE, seed=5)[0]
    src = write_nifti(tmp_path / "in" / "scan.nii.gz", image)
    model = str(model_file())
    out = tmp_path / "tta"
    assert main(["predict", model, str(src), str(out), "--tta", "--save-uncertainty", "--quiet"]) == 0
    tta_mask = _load(out / "scan.nii.gz")
    flips = [c for r in range(4) for c in itertools.combinations((0, 1, 2), r)]  # the identity and 7 mirrorings
    differ = np.zeros(SHAPE)
    for i, axes in enumerate(flips):
        mirrored = write_nifti(tmp_path / f"m{i}" / "scan.nii.gz", np.flip(image, axes).copy())
        assert main(["predict", model, str(mirrored), str(tmp_path / f"p{i}"), "--quiet"]) == 0
        differ += np.flip(_load(tmp_path / f"p{i}" / "scan.nii.gz"), axes) != tta_mask
    disagreement = _load(out / "uncertainty" / "scan_disagreement.nii.gz")
    np.testing.assert_allclose(disagreement, differ / len(flips), atol=1e-5)
    assert 0 < (disagreement > 0).sum() < disagreement.size  # an untrained net disagrees with itself somewhere
    summary = json.loads((out / "predictions.json").read_text())["cases"][0]["uncertainty"]
    assert summary["disagreeing_voxels"] == int((disagreement > 0).sum())


def test_cases_are_listed_most_uncertain_first() -> None:
    cases = [
        {"case": "a", "uncertainty": {"entropy_mean_foreground": 0.2}},
        {"case": "b", "uncertainty": {"entropy_mean_foreground": None}},
        {"case": "c", "uncertainty": {"entropy_mean_foreground": 0.7}},
        {"case": "d", "status": "failed", "uncertainty": None},
    ]
    assert check_first(cases) == ["c", "a", "b"]
