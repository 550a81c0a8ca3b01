"""Ensembles: several model files (or a run folder of folds) predict as one; the probabilities are the mean of the
members' own probabilities (checked against NumPy on each member's separate prediction), window by window, with
and without mirroring; members that disagree on labels, channels or preprocessing are refused naming the files."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medattn.cli import main
from medattn.models import build_model
from medattn.models.model_file import save_model
from tests.conftest import blob_case, write_nifti
from tests.infer.conftest import small_plan

SHAPE = (41, 37, 29)  # several windows of 16^3: the slab stitcher, not the one-window path


def _oblique() -> np.ndarray:
    c, s = np.cos(0.4), np.sin(0.4)
    aff = np.eye(4)
    aff[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])  # the plan's 1 mm: no resampling, so labels = arg-max
    aff[:3, 3] = (20.0, -7.0, 3.0)
    return aff


OBLIQUE = _oblique()


def _member(path: Path, seed: int, plan=None) -> Path:
    torch.manual_seed(seed)
    return save_model(path, build_model("ag_unet", 1, 3, channels=(4, 8, 16)), plan or small_plan())


def _probs(folder: Path, case: str = "scan") -> np.ndarray:
    return np.asarray(nib.load(str(folder / "probabilities" / f"{case}.nii.gz")).dataobj)


@pytest.mark.parametrize("tta", [False, True])
def test_an_ensemble_averages_its_members_probabilities(tmp_path: Path, tta: bool) -> None:
    for i in range(3):
        _member(tmp_path / "run" / f"fold_{i}" / "model.pt", seed=i)
    scan = write_nifti(tmp_path / "in" / "scan.nii.gz", blob_case(SHAPE, seed=3)[0], OBLIQUE)
    extra = ["--save-probabilities", "--quiet", *(["--tta"] if tta else [])]
    singles = []
    for i in range(3):
        out = tmp_path / f"single{i}"
        assert main(["predict", str(tmp_path / "run" / f"fold_{i}" / "model.pt"), str(scan), str(out), *extra]) == 0
        singles.append(_probs(out))
    assert main(["predict", str(tmp_path / "run"), str(scan), str(tmp_path / "ens"), *extra]) == 0
    expected = np.mean(singles, axis=0)
    assert np.abs(singles[0] - singles[1]).max() > 0.05  # the members differ, so the test can fail
    np.testing.assert_allclose(_probs(tmp_path / "ens"), expected, atol=2e-6)
    mask = nib.load(str(tmp_path / "ens" / "scan.nii.gz"))
    assert mask.shape == SHAPE
    np.testing.assert_allclose(mask.affine, OBLIQUE, atol=1e-5)
    agree = np.asarray(mask.dataobj) == expected.argmax(-1)
    assert agree.mean() > 0.999  # ties aside (float32 sums in another order)
    doc = json.loads((tmp_path / "ens" / "predictions.json").read_text())
    assert [Path(p).parent.name for p in doc["models"]] == ["fold_0", "fold_1", "fold_2"]
    assert doc["cases"][0]["windows"] > 8

    # the same members named one by one give the same masks
    files = [str(tmp_path / "run" / f"fold_{i}" / "model.pt") for i in range(3)]
    assert main(["predict", *files, str(scan), str(tmp_path / "ens2"), "--quiet", *(["--tta"] if tta else [])]) == 0
    np.testing.assert_array_equal(
        np.asarray(nib.load(str(tmp_path / "ens2" / "scan.nii.gz")).dataobj), np.asarray(mask.dataobj)
    )


def test_members_that_disagree_are_refused_naming_both_files(tmp_path: Path, capsys) -> None:
    scan = write_nifti(tmp_path / "scan.nii.gz", blob_case((20, 18, 14), seed=1)[0])
    a = _member(tmp_path / "a.pt", 0)
    b = _member(tmp_path / "b.pt", 1, small_plan(labels={0: "background", 1: "core", 2: "shell"}))
    assert main(["predict", str(a), str(b), str(scan), str(tmp_path / "out")]) != 0
    err = capsys.readouterr().err
    assert "ensemble members disagree on labels" in err and str(a) in err and str(b) in err
    c = _member(tmp_path / "c.pt", 2, small_plan(spacing=(1.0, 1.0, 2.0)))
    assert main(["predict", str(a), str(c), str(scan), str(tmp_path / "out")]) != 0
    assert "disagree on target_spacing" in capsys.readouterr().err
    assert not (tmp_path / "out" / "scan.nii.gz").exists()
    assert main(["predict", str(a), str(a), str(scan), str(tmp_path / "out")]) != 0
    assert "named twice" in capsys.readouterr().err
