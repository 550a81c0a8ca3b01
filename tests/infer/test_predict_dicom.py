"""``medattn predict`` on DICOM series folders: the mask lands on the series' grid, as it does for the same volume
stored as NIfTI, and a series that is not one regular volume fails alone."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from medattn.cli import main
from tests.conftest import blob_case, write_dicom_series, write_nifti
from tests.infer.conftest import small_plan

SHAPE = (21, 17, 13)


def _scan(seed: int) -> np.ndarray:
    image, _ = blob_case(SHAPE, seed=seed)
    return np.round(image * 400).astype(np.int16)  # a scanner stores integers


def test_a_series_folder_predicts_the_mask_its_nifti_twin_gets(tmp_path: Path, model_file) -> None:
    aff = np.array([[0.0, 0.0, 1.5, -20.0], [-1.0, 0.0, 0.0, 35.0], [0.0, -1.0, 0.0, 10.0], [0, 0, 0, 1]])  # sagittal
    vol = _scan(4)
    write_dicom_series(tmp_path / "in" / "t1_sag", vol, aff)
    twin = write_nifti(tmp_path / "nifti" / "t1_sag.nii.gz", vol, aff)
    model = model_file()
    assert main(["predict", str(model), str(tmp_path / "in" / "t1_sag"), str(tmp_path / "out"), "--quiet"]) == 0
    assert main(["predict", str(model), str(twin), str(tmp_path / "out_nifti"), "--quiet"]) == 0
    out, ref = (
        nib.load(str(tmp_path / "out" / "t1_sag.nii.gz")),
        nib.load(str(tmp_path / "out_nifti" / "t1_sag.nii.gz")),
    )
    assert out.shape == SHAPE
    np.testing.assert_allclose(out.affine, aff, atol=1e-4)
    mask = np.asarray(out.dataobj)
    np.testing.assert_array_equal(mask, np.asarray(ref.dataobj))
    assert len(np.unique(mask)) >= 2
    assert sorted(p.name for p in (tmp_path / "in" / "t1_sag").iterdir()) == [f"slice{k:03d}.dcm" for k in range(13)]


def test_a_folder_of_series_folders_predicts_each_and_refuses_the_broken_one(tmp_path: Path, model_file) -> None:
    inp = tmp_path / "series"
    for name, seed in (("a", 1), ("b", 2), ("broken", 3)):
        files = write_dicom_series(inp / name, _scan(seed), np.diag([1.0, 1.0, 2.0, 1.0]))
    files[5].unlink()  # broken: slice 5 missing
    assert main(["predict", str(model_file()), str(inp), str(tmp_path / "out"), "--quiet"]) == 1
    assert sorted(p.name for p in (tmp_path / "out").glob("*.nii.gz")) == ["a.nii.gz", "b.nii.gz"]
    summary = json.loads((tmp_path / "out" / "predictions.json").read_text())
    (failed,) = summary["failed"]
    assert failed["case"] == "broken" and "a slice may be missing" in failed["reason"]


def test_predict_into_the_series_folder_is_refused(tmp_path: Path, model_file, capsys) -> None:
    write_dicom_series(tmp_path / "s", _scan(5), np.eye(4))
    before = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert main(["predict", str(model_file()), str(tmp_path / "s"), str(tmp_path / "s" / "pred"), "--quiet"]) == 2
    assert "inside the input series folder" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == before


def test_predict_on_real_scanner_series_writes_masks_on_the_dcm2niix_grid(
    tmp_path: Path, shared_data: Path, model_file
) -> None:
    """Every series of ../shared/data/DICOM through predict (a 4 mm model, to stay fast): each NIfTI mask has the
    voxel grid of the dcm2niix reference in world coordinates (its corners within 0.02 mm of the reference's)."""
    import pytest

    root = shared_data / "DICOM"
    if not root.is_dir():
        pytest.skip(f"no DICOM data at {root}")
    names = sorted(p.name for p in (root / "reference").iterdir())
    inp = tmp_path / "in"
    inp.mkdir()
    for name in names:
        (inp / name).symlink_to(root / name)
    model = model_file(small_plan(spacing=(4.0, 4.0, 4.0)))
    # the MR series through an MR model; the CT (refused there: its header says CT) through a CT one
    assert main(["predict", str(model), str(inp), str(tmp_path / "out"), "--quiet"]) == 1
    failed = json.loads((tmp_path / "out" / "predictions.json").read_text())["failed"]
    assert [f["case"] for f in failed] == ["ge_ct_3slice"] and "the series is CT (DICOM Modality)" in failed[0][
        "reason"
    ]
    ct_model = model_file(small_plan(spacing=(4.0, 4.0, 4.0), modality="CT"))
    assert main(["predict", str(ct_model), str(inp / "ge_ct_3slice"), str(tmp_path / "out_ct"), "--quiet"]) == 0
    (tmp_path / "out_ct" / "ge_ct_3slice.nii.gz").rename(tmp_path / "out" / "ge_ct_3slice.nii.gz")
    for name in names:
        ref = nib.load(str(next((root / "reference" / name).glob("*.nii.gz"))))
        out = nib.load(str(tmp_path / "out" / f"{name}.nii.gz"))
        assert sorted(out.shape) == sorted(ref.shape[:3]), name
        corners = [
            np.array([[i, j, k, 1.0] for i in (0, s[0] - 1) for j in (0, s[1] - 1) for k in (0, s[2] - 1)])
            for s in (out.shape, ref.shape)
        ]
        ours = (out.affine @ corners[0].T).T[:, :3]
        theirs = (ref.affine @ corners[1].T).T[:, :3]
        assert np.linalg.norm(theirs[:, None] - ours[None], axis=2).min(axis=1).max() < 0.02, name


def test_a_ct_series_is_refused_by_an_mr_model_and_read_by_a_ct_one(tmp_path: Path, model_file) -> None:
    """The series' header says CT; the model's channel was trained on MR: refused by name (Hounsfield units through
    an MR normalisation mean nothing); an MR series beside it is predicted; a CT model reads the CT series."""
    inp = tmp_path / "in"
    write_dicom_series(inp / "ct", _scan(1), np.diag([1.0, 1.0, 2.0, 1.0]), extra={"Modality": "CT"})
    write_dicom_series(inp / "mr", _scan(2), np.diag([1.0, 1.0, 2.0, 1.0]))
    assert main(["predict", str(model_file()), str(inp), str(tmp_path / "out"), "--quiet"]) == 1
    (failed,) = json.loads((tmp_path / "out" / "predictions.json").read_text())["failed"]
    assert failed["case"] == "ct" and "the series is CT (DICOM Modality)" in failed["reason"]
    assert "'MRI' was trained on MR" in failed["reason"] and failed["file"].endswith("ct")
    assert sorted(p.name for p in (tmp_path / "out").glob("*.nii.gz")) == ["mr.nii.gz"]
    ct_model = model_file(small_plan(modality="CT"))
    assert main(["predict", str(ct_model), str(inp / "ct"), str(tmp_path / "out_ct"), "--quiet"]) == 0
