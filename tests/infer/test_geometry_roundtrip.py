"""``medattn predict`` on irregular NIfTI headers: every mask reads back in nibabel with the input's shape and affine
and in SimpleITK with the input's size, origin, spacing and direction, and equals the mask of the same scan with a
clean header."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medattn.cli import main
from tests.conftest import blob_case
from tests.data.test_geometry import AFFINES, SPACING, VARIANTS, assert_reads_like, fields, write_raw_nifti

SHAPE = (15, 13, 11)
ORIENTATIONS = ["ras", "lps", "oblique", "permuted"]
HANDLED = [
    "pixdim_neg_unit",
    "pixdim_neg_oblique",
    "pixdim_neg_y_permuted",
    "pixdim_neg_qform_only",
    "qs_flip_x_scanner",
    "qs_shift_aligned",
    "qs_rotation_aligned",
    "qs_flip_x_oblique_aligned",
    "qfac_flip",
    "qfac_zero",
    "no_transform",
    "units_metres",
    "sheared_sform",
]


def _image() -> np.ndarray:
    image, _ = blob_case(SHAPE, seed=4)
    return image


def _inputs(folder: Path, names: list[str]) -> dict[str, tuple[Path, Path]]:
    """For each variant: its file, and its twin (the same voxels; a regular qform and sform from nibabel's affine)."""
    image = _image()
    out = {}
    for name in names:
        src = write_raw_nifti(folder / f"{name}.nii.gz", image, VARIANTS[name].fields())
        twin = write_raw_nifti(folder / f"twin-{name}.nii.gz", image, fields(nib.load(str(src)).affine))
        np.testing.assert_allclose(nib.load(str(twin)).affine, nib.load(str(src)).affine, atol=1e-6)
        out[name] = (src, twin)
    return out


def _mask(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


@pytest.fixture(scope="module")
def predicted(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, tuple[Path, Path]], Path, Path]:
    """One predict run over every variant and twin (one model load): (inputs, output folder, model)."""
    import torch

    from medattn.models import build_model
    from medattn.models.model_file import save_model
    from tests.infer.conftest import small_plan

    root = tmp_path_factory.mktemp("geometry")
    plan = small_plan()
    torch.manual_seed(0)
    net = build_model("ag_unet", plan.num_channels, plan.num_classes, channels=(4, 8, 16))
    model = save_model(root / "model.pt", net, plan)
    inputs = _inputs(root / "in", ORIENTATIONS + HANDLED)
    out = root / "out"
    assert main(["predict", str(model), str(root / "in"), str(out), "--quiet"]) == 0
    return inputs, out, model


@pytest.mark.parametrize("name", ORIENTATIONS + HANDLED)
def test_predicted_mask_reads_back_like_the_input_in_both_readers(predicted, name: str) -> None:
    inputs, out, _ = predicted
    src, _ = inputs[name]
    mask_path = out / f"{name}.nii.gz"
    mask = _mask(mask_path)
    assert mask.shape == SHAPE
    assert_reads_like(mask_path, src, mask)
    # medattn reads the variant as nibabel does, so it segments it exactly like the clean twin.
    np.testing.assert_array_equal(mask, _mask(out / f"twin-{name}.nii.gz"))


def test_masks_are_not_trivial(predicted) -> None:
    """The twin comparison above means something only if the masks hold more than one label."""
    inputs, out, _ = predicted
    for name in inputs:
        assert len(np.unique(_mask(out / f"{name}.nii.gz"))) >= 2, name


def test_nrrd_masks_of_nifti_inputs_read_back_like_them_in_simpleitk(predicted, tmp_path: Path) -> None:
    inputs, out, model = predicted
    names = ["ras", "pixdim_neg_unit", "qs_rotation_aligned", "no_transform"]
    folder = tmp_path / "in"
    folder.mkdir()
    for name in names:
        (folder / f"{name}.nii.gz").symlink_to(inputs[name][0])
    assert main(["predict", str(model), str(folder), str(tmp_path / "out"), "--format", "nrrd", "--quiet"]) == 0
    for name in names:
        assert_reads_like(tmp_path / "out" / f"{name}.nrrd", inputs[name][0], _mask(out / f"{name}.nii.gz"))
    # where the readers disagree on the input's header, the case says which reading the NRRD took; not elsewhere
    import json

    cases = {c["case"]: c for c in json.loads((tmp_path / "out" / "predictions.json").read_text())["cases"]}
    noted = {
        n for n, c in cases.items() if any("written as .nrrd with the geometry SimpleITK" in w for w in c["warnings"])
    }
    assert noted == {"pixdim_neg_unit", "qs_rotation_aligned", "no_transform"}, noted  # not "ras"


@pytest.mark.parametrize("geometry", ORIENTATIONS)
def test_nrrd_inputs_get_nrrd_masks_on_their_grid(model_file, tmp_path: Path, geometry: str) -> None:
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ AFFINES[geometry]
    im = sitk.GetImageFromArray(np.ascontiguousarray(_image().transpose(2, 1, 0)))
    im.SetSpacing(SPACING)
    im.SetDirection((lps[:3, :3] / np.asarray(SPACING)).ravel().tolist())
    im.SetOrigin(lps[:3, 3].tolist())
    src = tmp_path / "in" / "scan.nrrd"
    src.parent.mkdir()
    sitk.WriteImage(im, str(src))
    assert main(["predict", str(model_file()), str(src), str(tmp_path / "out"), "--format", "input", "--quiet"]) == 0
    out = tmp_path / "out" / "scan.nrrd"
    mask = np.moveaxis(sitk.GetArrayFromImage(sitk.ReadImage(str(out))), (0, 1, 2), (2, 1, 0))
    assert mask.shape == SHAPE
    assert_reads_like(out, src, mask)
