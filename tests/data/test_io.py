"""Reading and writing volumes: geometry survives NIfTI and ITK formats; writes are atomic; bad files are named."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medattn.data.io import read_header, read_volume, write_volume
from medattn.data.readers import make_loader
from medattn.errors import DataError
from tests.conftest import write_nifti


def _oblique_affine() -> np.ndarray:
    """LPS-ish, anisotropic, rotated 20 degrees about z."""
    th = np.deg2rad(20)
    rot = np.array([[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([-0.8, -0.8, 3.0])
    aff[:3, 3] = [12.5, -40.0, 7.25]
    return aff


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".nii.gz"])
def test_round_trip_keeps_geometry_and_voxels(tmp_path: Path, suffix: str) -> None:
    rng = np.random.default_rng(0)
    arr = rng.normal(size=(9, 11, 7)).astype(np.float32)
    aff = _oblique_affine()
    out = write_volume(arr, aff, tmp_path / f"vol{suffix}")
    hdr = read_header(out)
    np.testing.assert_allclose(hdr.affine, aff, atol=1e-5)
    np.testing.assert_allclose(hdr.spacing, [0.8, 0.8, 3.0], atol=1e-6)
    back, _ = read_volume(out)
    np.testing.assert_array_equal(back, arr)
    # MONAI's loader (the path the pipelines use) agrees on voxels and affine.
    img = make_loader(image_only=True)(str(out))
    np.testing.assert_array_equal(np.asarray(img), arr)
    np.testing.assert_allclose(np.asarray(img.affine), aff, atol=1e-5)


def test_simpleitk_geometry_matches_independent_lps_computation(tmp_path: Path) -> None:
    """A file written by SimpleITK itself (LPS origin/direction) reads back with the RAS affine computed by hand."""
    im = sitk.GetImageFromArray(np.zeros((4, 5, 6), np.int16))  # numpy (z, y, x) -> size (6, 5, 4)
    im.SetSpacing((0.5, 0.7, 2.0))
    im.SetOrigin((10.0, 20.0, 30.0))
    im.SetDirection((0, 1, 0, 1, 0, 0, 0, 0, 1))
    path = tmp_path / "x.nrrd"
    sitk.WriteImage(im, str(path))
    hdr = read_header(path)
    assert hdr.shape == (6, 5, 4)
    lps = np.eye(4)
    lps[:3, :3] = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]]) @ np.diag([0.5, 0.7, 2.0])
    lps[:3, 3] = [10, 20, 30]
    np.testing.assert_allclose(hdr.affine, np.diag([-1, -1, 1, 1]) @ lps)


def test_write_nifti_like_source_keeps_header(tmp_path: Path) -> None:
    aff = _oblique_affine()
    src = write_nifti(tmp_path / "src.nii.gz", np.zeros((5, 6, 7), np.float32), aff)
    mask = np.zeros((5, 6, 7), np.uint8)
    mask[1:3, 2:4, 3:5] = 2
    out = write_volume(mask, aff, tmp_path / "pred.nii.gz", like=src, dtype=np.uint8)
    img = nib.load(str(out))
    assert img.get_data_dtype() == np.uint8
    np.testing.assert_allclose(img.affine, aff, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(img.dataobj), mask)


def test_never_overwrites_an_input(tmp_path: Path) -> None:
    src = write_nifti(tmp_path / "src.nii.gz", np.ones((3, 3, 3), np.float32))
    before = src.read_bytes()
    with pytest.raises(DataError, match="refusing to overwrite an input"):
        write_volume(np.zeros((3, 3, 3)), np.eye(4), src, like=src)
    assert src.read_bytes() == before


def test_failed_write_leaves_destination_and_no_temp(tmp_path: Path) -> None:
    dest = tmp_path / "out.nii.gz"
    dest.write_bytes(b"old")
    with pytest.raises(Exception):  # noqa: B017 - any failure inside the writer
        write_volume(np.zeros((3, 3, 3), dtype=object), np.eye(4), dest)
    assert dest.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nii.gz"]


def test_truncated_gzip_is_named(tmp_path: Path) -> None:
    good = write_nifti(tmp_path / "good.nii.gz", np.random.default_rng(1).normal(size=(20, 20, 20)).astype(np.float32))
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(DataError) as err:
        read_volume(bad)
    assert str(bad) in str(err.value) and "truncated" in str(err.value)


def test_missing_and_garbage_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        read_header(tmp_path / "nope.nii.gz")
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(gzip.compress(b"not a nifti header at all" * 3))
    with pytest.raises(DataError, match=r"junk\.nii\.gz"):
        read_header(junk)


def test_outputs_get_ordinary_file_permissions(tmp_path: Path) -> None:
    import os

    umask = os.umask(0o022)
    try:
        out = write_volume(np.zeros((3, 3, 3), np.float32), np.eye(4), tmp_path / "o.nii.gz")
    finally:
        os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o644
