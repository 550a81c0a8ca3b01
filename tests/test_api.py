"""The Python API (``medattn.load_model``): every input kind gives the mask ``medattn predict`` writes for it, as
the same kind, on its own grid; refused inputs raise; the README's example runs as written."""

from __future__ import annotations

import os
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

import medattn
from medattn.cli import main
from medattn.errors import DataError
from medattn.models import build_model
from medattn.models.model_file import save_model
from tests.conftest import REPO, blob_case, write_dicom_series, write_nifti
from tests.infer.conftest import small_plan

SHAPE = (21, 17, 13)
AFFINE = np.array([[-0.9, 0.0, 0.0, 30.0], [0.0, 0.0, 1.8, -4.0], [0.0, 1.1, 0.0, 12.0], [0, 0, 0, 1]])


def _model(path: Path) -> Path:
    torch.manual_seed(0)
    return save_model(path, build_model("ag_unet", 1, 3, channels=(4, 8, 16)), small_plan())


@pytest.fixture
def setup(tmp_path: Path) -> dict:
    image, _ = blob_case(SHAPE, seed=4)
    scan = write_nifti(tmp_path / "scan.nii.gz", image, AFFINE)
    model = _model(tmp_path / "model.pt")
    assert main(["predict", str(model), str(scan), str(tmp_path / "cli"), "--quiet"]) == 0
    expected = np.asarray(nib.load(str(tmp_path / "cli" / "scan.nii.gz")).dataobj)
    assert len(np.unique(expected)) >= 2
    return {"image": image, "scan": scan, "model": model, "expected": expected, "tmp": tmp_path}


def test_every_input_kind_gets_the_cli_mask_as_its_own_kind(setup: dict) -> None:
    model = medattn.load_model(setup["model"], device="cpu")
    expected, image = setup["expected"], setup["image"]
    from_path = model.predict(setup["scan"])
    assert isinstance(from_path, nib.Nifti1Image)
    np.testing.assert_allclose(from_path.affine, AFFINE, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(from_path.dataobj), expected)

    from_nib = model.predict(nib.Nifti1Image(image, AFFINE))
    np.testing.assert_array_equal(np.asarray(from_nib.dataobj), expected)

    from_numpy = model.predict(image, affine=AFFINE)
    assert isinstance(from_numpy, np.ndarray) and from_numpy.shape == SHAPE
    np.testing.assert_array_equal(from_numpy, expected)

    itk = sitk.ReadImage(str(setup["scan"]))
    from_itk = model.predict(itk)
    assert isinstance(from_itk, sitk.Image)
    assert from_itk.GetSize() == itk.GetSize()
    np.testing.assert_allclose(from_itk.GetOrigin(), itk.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(from_itk.GetDirection(), itk.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(from_itk).transpose(2, 1, 0), expected)

    probs = model.predict_proba(image, affine=AFFINE)
    assert probs.shape == (*SHAPE, 3) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-4)
    cli = setup["tmp"] / "cli_probs"
    assert main(["predict", str(setup["model"]), str(setup["scan"]), str(cli), "--save-probabilities", "--quiet"]) == 0
    np.testing.assert_array_equal(probs, np.asarray(nib.load(str(cli / "probabilities" / "scan.nii.gz")).dataobj))


def test_refused_inputs_raise_with_the_reason(setup: dict) -> None:
    from medattn.errors import ConfigError

    model = medattn.load_model(setup["model"], device="cpu")
    bad = setup["image"].copy()
    bad[2, 3, 4] = np.nan
    with pytest.raises(DataError, match=r"1 NaN and 0 Inf voxels .*first at index \(2, 3, 4\)"):
        model.predict(bad, affine=AFFINE)
    with pytest.raises(ConfigError, match="needs its voxel-to-RAS affine"):
        model.predict(setup["image"])
    with pytest.raises(DataError, match="no such image file"):
        model.predict(setup["tmp"] / "missing.nii.gz")
    with pytest.raises(ConfigError, match="unknown prediction option"):
        medattn.load_model(setup["model"], overlapp=0.5)
    with pytest.raises(ConfigError, match="an empty list of models"):
        medattn.load_model([])
    with pytest.raises(ConfigError, match="as a str or Path, not bytes"):
        medattn.load_model(str(setup["model"]).encode())  # type: ignore[arg-type]
    # affines and arrays nibabel would have refused in its own words, or taken: each named as the argument's fault
    img = setup["image"]
    singular, last_row = AFFINE.copy(), AFFINE.copy()
    singular[:, 2], last_row[3, 2] = 0.0, 1.0
    for affine, said in (
        (AFFINE[:3, :3], "must be the 4x4 voxel-to-RAS matrix, got shape"),
        (singular, "affine= is singular"),
        (last_row, "last row must be 0 0 0 1"),
        (np.full((4, 4), np.nan), "NaN or infinite"),
    ):
        with pytest.raises(ConfigError, match=said):
            model.predict(img, affine=affine)
    for array in (img[..., None, None], img.astype(object)):
        with pytest.raises(ConfigError, match=r"a NumPy image is \(X, Y, Z\) or \(X, Y, Z, channels\) of numbers"):
            model.predict(array, affine=AFFINE)
    with pytest.raises(DataError, match="voxels stored as complex"):
        model.predict(img * (1 + 1j), affine=AFFINE)


def _readme_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("### From Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]


def test_the_readme_python_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    _model(tmp_path / "runs" / "mine" / "model.pt")
    for i in range(6):
        write_nifti(tmp_path / "old" / f"o{i}.nii.gz", blob_case(SHAPE, seed=i)[0], AFFINE)
    for i in range(4):
        write_nifti(tmp_path / "new" / f"n{i}.nii.gz", 3.0 - blob_case(SHAPE, seed=10 + i)[0], AFFINE)
    write_nifti(tmp_path / "scan.nii.gz", blob_case(SHAPE, seed=4)[0], AFFINE)
    write_dicom_series(
        tmp_path / "dicom" / "t1_axial", np.round(blob_case(SHAPE, seed=5)[0] * 400).astype(np.int16), AFFINE
    )
    monkeypatch.chdir(tmp_path)
    before = sorted(os.listdir(tmp_path))
    exec(compile(_readme_example(), "README.md", "exec"), {})
    assert nib.load(str(tmp_path / "scan_mask.nii.gz")).shape == SHAPE
    assert sorted(os.listdir(tmp_path)) == sorted([*before, "scan_mask.nii.gz"])  # nothing else written here
    assert re.search(r"^(no drift|drift) 0\.\d+", capsys.readouterr().out, re.M)


def test_arrays_of_any_numeric_dtype_are_segmented_like_float32(setup: dict) -> None:
    """NIfTI cannot hold bool or float16, nor int64 without a declared type: the API stores them losslessly and
    predicts what it predicts on the same values as float32."""
    model = medattn.load_model(setup["model"], device="cpu")
    ints = np.round(setup["image"] * 100)
    ints -= ints.min()  # unsigned types too
    expected = model.predict(ints.astype(np.float32), affine=AFFINE)
    for dtype in (np.int64, np.uint64, np.int32):
        np.testing.assert_array_equal(model.predict(ints.astype(dtype), affine=AFFINE), expected, err_msg=str(dtype))
    halves = setup["image"].astype(np.float16)
    np.testing.assert_array_equal(
        model.predict(halves, affine=AFFINE), model.predict(halves.astype(np.float32), affine=AFFINE)
    )
    mask = setup["image"] > setup["image"].mean()
    np.testing.assert_array_equal(
        model.predict(mask, affine=AFFINE), model.predict(mask.astype(np.float32), affine=AFFINE)
    )
    np.testing.assert_array_equal(
        np.asarray(model.predict(nib.Nifti1Image(ints.astype(np.int64), AFFINE, dtype=np.int64)).dataobj), expected
    )


def test_drift_takes_two_files_with_the_same_name(setup: dict) -> None:
    """Files from different folders often share a name (``image.nii.gz``): each is its own volume."""
    tmp = setup["tmp"]
    paths = []
    for i in range(7):
        paths.append(write_nifti(tmp / f"site{i}" / "image.nii.gz", blob_case(SHAPE, seed=20 + i)[0], AFFINE))
    model = medattn.load_model(setup["model"], device="cpu")
    report = model.drift(paths[:4], paths[4:])
    doc = report.to_dict()
    assert doc["n_reference"] == 4 and doc["n_target"] == 3 and not doc["failures"]
    assert len(doc["volume_level"]["target_scores"]) == 3


def test_a_run_folder_of_folds_is_an_ensemble_with_its_postprocessing(tmp_path: Path) -> None:
    """``load_model(RUN)`` with ``fold_*/model.pt`` and a ``postprocessing.json``: its probabilities are the NumPy
    mean of the members' own, its mask is what ``medattn predict RUN`` writes (the rule applied: every label-1
    component under 10^6 mm3 removed, so no label 1 is left), ``postprocessing="none"`` gives the raw mask, and
    drift, which reads one model's features, refuses the ensemble."""
    from medattn.errors import ConfigError
    from medattn.infer.postprocess import ClassRule, Rule, save_rule

    run = tmp_path / "run"
    for i in range(2):
        torch.manual_seed(i)
        save_model(run / f"fold_{i}" / "model.pt", build_model("ag_unet", 1, 3, channels=(4, 8, 16)), small_plan())
    save_rule(Rule({1: ClassRule("min_volume", 1.0e6)}), run / "postprocessing.json")
    image, _ = blob_case(SHAPE, seed=4)
    scan = write_nifti(tmp_path / "scan.nii.gz", image, AFFINE)
    members = [medattn.load_model(run / f"fold_{i}" / "model.pt", device="cpu") for i in range(2)]
    singles = [m.predict_proba(image, affine=AFFINE) for m in members]
    assert np.abs(singles[0] - singles[1]).max() > 0.05  # the members differ, so the mean can be wrong
    ensemble = medattn.load_model(run, device="cpu")
    assert [p.name for p in ensemble.paths] == ["model.pt", "model.pt"] and ensemble.postprocessing is not None
    np.testing.assert_allclose(ensemble.predict_proba(image, affine=AFFINE), np.mean(singles, axis=0), atol=2e-6)
    assert main(["predict", str(run), str(scan), str(tmp_path / "cli"), "--quiet"]) == 0
    cli = np.asarray(nib.load(str(tmp_path / "cli" / "scan.nii.gz")).dataobj)
    mask = ensemble.predict(image, affine=AFFINE)
    np.testing.assert_array_equal(mask, cli)
    raw = medattn.load_model(run, device="cpu", postprocessing="none").predict(image, affine=AFFINE)
    assert (raw == 1).any() and not (mask == 1).any()
    np.testing.assert_array_equal(mask[raw != 1], raw[raw != 1])  # the rule touches label 1 only
    same = medattn.load_model([run / "fold_0" / "model.pt", run / "fold_1" / "model.pt"], device="cpu")
    np.testing.assert_array_equal(same.predict(image, affine=AFFINE), raw)  # files as a list: no run folder rule
    with pytest.raises(ConfigError, match="ensemble of 2"):
        ensemble.drift([scan] * 4, [scan] * 3)
