"""Header geometry: what nibabel, MONAI and SimpleITK read from irregular NIfTI headers, what ``header_problems``
reports, and masks written on an input's grid reading back where each reader puts the input."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medattn.data.geometry import header_problems, nifti_readings
from medattn.data.io import read_header, sitk_affine_ras, write_volume
from medattn.errors import DataError

SHAPE = (6, 7, 8)
SPACING = (0.8, 0.9, 1.5)


# ---- inputs: NIfTI headers written field by field -------------------------------------------------------------


def _rot(axis: int, degrees: float) -> np.ndarray:
    t = np.deg2rad(degrees)
    c, s = np.cos(t), np.sin(t)
    i, j = [(1, 2), (0, 2), (0, 1)][axis]
    r = np.eye(3)
    r[i, i] = r[j, j] = c
    r[i, j], r[j, i] = -s, s
    return r


def _affine(linear: np.ndarray, origin: tuple[float, float, float]) -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = linear
    a[:3, 3] = origin
    return a


AFFINES = {
    "ras": _affine(np.diag(SPACING), (-10, 20, 5)),
    "lps": _affine(np.diag([-1, -1, 1]) * SPACING, (30, 40, -10)),
    "oblique": _affine(_rot(0, 20) @ _rot(2, 15) @ np.diag(SPACING), (5, -3, 8)),
    # i runs anterior, j inferior, k left: a sagittal acquisition stored in another axis order
    "permuted": _affine(np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]]) * SPACING, (50, -20, 60)),
    "unit": _affine(np.eye(3), (-10, 20, 5)),
}

Fields = dict[str, Any]


def fields(affine: np.ndarray, qform_code: int = 1, sform_code: int = 1) -> Fields:
    """The geometry fields nibabel writes for ``affine`` (qform and sform both from it)."""
    h = nib.Nifti1Header()
    h.set_qform(affine, code=qform_code)
    h.set_sform(affine, code=sform_code)
    keys = ("pixdim", "quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z")
    keys += ("srow_x", "srow_y", "srow_z", "qform_code", "sform_code", "xyzt_units")
    return {k: np.array(h[k]) for k in keys}


def with_pixdim(f: Fields, index: int, value: float) -> Fields:
    pixdim = np.array(f["pixdim"], dtype=np.float32)
    pixdim[index] = value
    return {**f, "pixdim": pixdim}


def with_sform(f: Fields, affine: np.ndarray, code: int | None = None) -> Fields:
    out = {**f, "srow_x": affine[0], "srow_y": affine[1], "srow_z": affine[2]}
    return out if code is None else {**out, "sform_code": np.array(code)}


def write_raw_nifti(path: Path, data: np.ndarray, f: Fields) -> Path:
    """A NIfTI-1 file whose header holds exactly ``f`` (nibabel would repair some of them on a normal save)."""
    h = nib.Nifti1Header()
    h.set_data_shape(data.shape)
    h.set_data_dtype(data.dtype)
    for k, v in f.items():
        h[k] = v
    h["vox_offset"] = 352
    h["scl_slope"], h["scl_inter"] = 1.0, 0.0
    path.parent.mkdir(parents=True, exist_ok=True)
    opener: Any = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wb") as out:
        h.write_to(out)
        out.write(np.asfortranarray(data).tobytes(order="F"))
    return path


def _sheared(pixdim_from_columns: bool) -> Fields:
    base = AFFINES["ras"]
    sheared = base.copy()
    sheared[0, 1] = 0.3  # axis j leans towards x
    f = with_sform(fields(base), sheared)
    if pixdim_from_columns:
        f = with_pixdim(f, 2, float(np.linalg.norm(sheared[:3, 1])))
    return f


def _qs(base: str, change: Callable[[np.ndarray], np.ndarray], sform_code: int) -> Fields:
    """qform from ``change(affine)``, sform from the affine."""
    a = AFFINES[base]
    return with_sform(fields(change(a.copy())), a, sform_code)


def _flip_x(a: np.ndarray) -> np.ndarray:
    a[:3, 0] *= -1
    return a


def _shift(a: np.ndarray) -> np.ndarray:
    a[:3, 3] += (10, 0, 0)
    return a


def _rotate(a: np.ndarray) -> np.ndarray:
    a[:3, :3] = _rot(2, 10) @ a[:3, :3]
    return a


def _parallel_axes() -> np.ndarray:
    a = AFFINES["ras"].copy()
    a[:3, 1] = a[:3, 0]
    return a


def _nan_entry() -> np.ndarray:
    a = AFFINES["ras"].copy()
    a[0, 0] = np.nan
    return a


@dataclass(frozen=True)
class Variant:
    """An input header: its fields, the worst severity ``header_problems`` gives it and words its message holds."""

    fields: Callable[[], Fields]
    expect: str | None
    words: tuple[str, ...] = ()

    @property
    def handled(self) -> bool:
        return self.expect != "error"


VARIANTS: dict[str, Variant] = {
    # regular headers
    "ras": Variant(lambda: fields(AFFINES["ras"]), None),
    "lps": Variant(lambda: fields(AFFINES["lps"]), None),
    "oblique": Variant(lambda: fields(AFFINES["oblique"]), None),
    "permuted": Variant(lambda: fields(AFFINES["permuted"]), None),
    "nibabel_default": Variant(lambda: fields(AFFINES["oblique"], 0, 2), None),
    "qform_only": Variant(lambda: fields(AFFINES["oblique"], 1, 0), None),
    "sform_only": Variant(lambda: fields(AFFINES["permuted"], 0, 1), None),
    # handled, with a warning
    "pixdim_neg_unit": Variant(
        lambda: with_pixdim(fields(AFFINES["unit"]), 1, -1.0), "warning", ("(-1, 1, 1)", "negative", "mirrored")
    ),
    "pixdim_neg_oblique": Variant(lambda: with_pixdim(fields(AFFINES["oblique"]), 1, -0.8), "warning", ("negative",)),
    "pixdim_neg_y_permuted": Variant(lambda: with_pixdim(fields(AFFINES["permuted"]), 2, -0.9), "warning", ("axis j",)),
    "pixdim_neg_qform_only": Variant(
        lambda: with_pixdim(fields(AFFINES["ras"], 1, 0), 1, -0.8), "warning", ("negative", "the qform")
    ),
    "qs_flip_x_scanner": Variant(lambda: _qs("ras", _flip_x, 1), "warning", ("disagree", "axis i reversed")),
    "qs_shift_scanner": Variant(lambda: _qs("lps", _shift, 1), "warning", ("10 mm", "uses the sform too")),
    "qs_shift_aligned": Variant(lambda: _qs("ras", _shift, 2), "warning", ("10 mm", "uses the qform")),
    "qs_rotation_aligned": Variant(lambda: _qs("oblique", _rotate, 2), "warning", ("rotation by 10 degrees",)),
    "qs_flip_x_oblique_aligned": Variant(lambda: _qs("oblique", _flip_x, 2), "warning", ("uses the qform",)),
    "qfac_flip": Variant(lambda: with_pixdim(fields(AFFINES["ras"]), 0, -1.0), "warning", ("axis k reversed",)),
    "qfac_zero": Variant(lambda: with_pixdim(fields(AFFINES["ras"]), 0, 0.0), "warning", ("qfac (pixdim[0]) is 0",)),
    "no_transform": Variant(lambda: fields(AFFINES["oblique"], 0, 0), "warning", ("neither", "LPS axes")),
    "units_metres": Variant(lambda: {**fields(AFFINES["ras"]), "xyzt_units": np.array(1)}, "warning", ("metres",)),
    "sheared_sform": Variant(lambda: _sheared(True), "warning", ("sheared", "uses the qform")),
    # refused
    "pixdim_zero": Variant(lambda: with_pixdim(fields(AFFINES["ras"]), 1, 0.0), "error", ("(0, 0.9, 1.5)", "zero")),
    "pixdim_nan": Variant(lambda: with_pixdim(fields(AFFINES["ras"]), 1, np.nan), "error", ("nan", "not finite")),
    "pixdim_inf": Variant(lambda: with_pixdim(fields(AFFINES["ras"]), 3, np.inf), "error", ("inf",)),
    "pixdim_not_sform": Variant(
        lambda: with_pixdim(fields(AFFINES["ras"]), 1, 0.5), "error", ("(0.5, 0.9, 1.5)", "(0.8, 0.9, 1.5)", "MONAI")
    ),
    "singular_sform": Variant(lambda: with_sform(fields(AFFINES["ras"]), _parallel_axes()), "error", ("singular",)),
    "zero_axis_sform": Variant(
        lambda: with_sform(fields(AFFINES["ras"]), AFFINES["ras"] @ np.diag([1, 1, 0, 1])), "error", ("singular",)
    ),
    "singular_sform_only": Variant(
        lambda: with_sform(fields(AFFINES["ras"], 0, 1), AFFINES["ras"] @ np.diag([1, 1, 0, 1])), "error", ()
    ),
    "nan_sform": Variant(lambda: with_sform(fields(AFFINES["ras"]), _nan_entry()), "error", ("NaN",)),
    "nan_qform": Variant(lambda: {**fields(AFFINES["ras"]), "quatern_b": np.array(np.nan)}, "error", ("qform",)),
    "sheared_sform_only": Variant(
        lambda: {**_sheared(True), "qform_code": np.array(0)}, "error", ("SimpleITK", "cannot read")
    ),
}


def write_variant(path: Path, name: str, data: np.ndarray | None = None) -> Path:
    """Input ``name`` of :data:`VARIANTS` at ``path`` (float32 data unless given)."""
    if data is None:
        data = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    return write_raw_nifti(path, data, VARIANTS[name].fields())


def assert_reads_like(out: Path, src: Path, expected: np.ndarray | None = None) -> None:
    """``out`` reads back in nibabel (NIfTI) with ``src``'s shape and affine, and in SimpleITK with ``src``'s size,
    origin, spacing and direction, each as that reader reads ``src``; its voxels are ``expected`` in both."""
    is_nifti = out.name.endswith((".nii", ".nii.gz"))
    if is_nifti and src.name.endswith((".nii", ".nii.gz")):
        o, s = nib.load(str(out)), nib.load(str(src))
        assert o.shape[:3] == s.shape[:3]
        np.testing.assert_allclose(o.affine, s.affine, rtol=0, atol=1e-6)
    if not is_nifti:
        np.testing.assert_allclose(read_header(out).affine, sitk_affine_ras(sitk.ReadImage(str(src))), atol=1e-6)
    so, ss = sitk.ReadImage(str(out)), sitk.ReadImage(str(src))
    assert so.GetSize()[:3] == ss.GetSize()[:3]
    np.testing.assert_allclose(so.GetOrigin()[:3], ss.GetOrigin()[:3], rtol=0, atol=1e-6)
    np.testing.assert_allclose(so.GetSpacing()[:3], ss.GetSpacing()[:3], rtol=0, atol=1e-6)
    d_o = np.asarray(so.GetDirection()).reshape(so.GetDimension(), -1)[:3, :3]
    d_s = np.asarray(ss.GetDirection()).reshape(ss.GetDimension(), -1)[:3, :3]
    np.testing.assert_allclose(d_o, d_s, rtol=0, atol=1e-6)
    if expected is not None:
        if is_nifti:
            np.testing.assert_array_equal(np.asarray(nib.load(str(out)).dataobj), expected)
        arr = sitk.GetArrayFromImage(so)  # (z, y, x[, c])
        np.testing.assert_array_equal(np.moveaxis(arr, (0, 1, 2), (2, 1, 0)), expected)


def _mask() -> np.ndarray:
    """Label values that differ under any flip or transposition of the 6x7x8 grid."""
    return (np.arange(np.prod(SHAPE)).reshape(SHAPE) % 7).astype(np.uint8)


# ---- the models of the readers ---------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # nibabel on an Inf pixdim
@pytest.mark.parametrize("name", list(VARIANTS))
def test_reader_models_match_nibabel_monai_and_simpleitk(tmp_path: Path, name: str) -> None:
    from medattn.data.readers import make_loader

    src = write_variant(tmp_path / f"{name}.nii.gz", name)
    r = nifti_readings(src)
    np.testing.assert_array_equal(np.nan_to_num(r.nibabel, nan=7), np.nan_to_num(nib.load(str(src)).affine, nan=7))
    monai = np.asarray(make_loader(image_only=False)(str(src))[1]["affine"], dtype=float)
    np.testing.assert_allclose(np.nan_to_num(r.monai, nan=7), np.nan_to_num(monai, nan=7), atol=1e-5)
    try:
        real = sitk_affine_ras(sitk.ReadImage(str(src)))
    except RuntimeError:
        assert r.sitk is None and r.sitk_transform == "refused"
    else:
        assert r.sitk is not None, f"SimpleITK reads {name}, the model says it refuses it"
        np.testing.assert_allclose(np.nan_to_num(r.sitk, nan=7), np.nan_to_num(real, nan=7), atol=1e-4)


@pytest.mark.parametrize("name", ["oblique", "pixdim_neg_oblique", "pixdim_not_sform", "qs_rotation_aligned"])
def test_reader_models_hold_for_4d_files(tmp_path: Path, name: str) -> None:
    """A 4D file (channels last, as MSD stores them): MONAI's pixdim check then covers 4 axes and never switches."""
    from medattn.data.readers import make_loader

    src = write_raw_nifti(tmp_path / "x.nii.gz", np.zeros((*SHAPE, 2), np.float32), VARIANTS[name].fields())
    r = nifti_readings(src)
    np.testing.assert_allclose(r.monai, np.asarray(make_loader()(str(src))[1]["affine"]), atol=1e-5)
    assert r.sitk is not None
    np.testing.assert_allclose(r.sitk, sitk_affine_ras(sitk.ReadImage(str(src))), atol=1e-4)


def test_the_issue_case_readers_disagree_on_x(tmp_path: Path) -> None:
    """pixdim (-1, 1, 1): nibabel repairs it silently, SimpleITK mirrors axis i (as 3D Slicer and ITK-SNAP do)."""
    src = write_variant(tmp_path / "in.nii.gz", "pixdim_neg_unit")
    assert nib.load(str(src)).header.get_zooms()[:3] == (1.0, 1.0, 1.0)
    np.testing.assert_allclose(nib.load(str(src)).affine, AFFINES["unit"])
    ras = sitk_affine_ras(sitk.ReadImage(str(src)))
    np.testing.assert_allclose(ras[:3, :3], np.diag([-1.0, 1.0, 1.0]))


# ---- header_problems ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(VARIANTS))
def test_header_problems_grade_each_variant(tmp_path: Path, name: str) -> None:
    v = VARIANTS[name]
    problems = header_problems(write_variant(tmp_path / f"{name}.nii.gz", name))
    severities = {sev for sev, _ in problems}
    assert severities <= {"error", "warning"}
    if v.expect is None:
        assert problems == []
        return
    worst = "error" if "error" in severities else "warning" if severities else None
    assert worst == v.expect, problems
    text = " | ".join(m for sev, m in problems if sev == v.expect)
    for w in v.words:
        assert w in text, (w, problems)


def test_header_problems_reads_only_the_header(tmp_path: Path) -> None:
    """A header with the voxel data cut off still gets its geometry checked."""
    src = write_variant(tmp_path / "in.nii", "pixdim_neg_unit")
    src.write_bytes(src.read_bytes()[:352])
    assert [sev for sev, _ in header_problems(src)] == ["warning"]


def test_header_problems_names_an_unreadable_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a nifti")
    with pytest.raises(DataError, match=r"bad\.nii\.gz"):
        header_problems(bad)
    with pytest.raises(DataError, match="does not exist"):
        header_problems(tmp_path / "missing.nii.gz")


def _itk_file(path: Path, spacing: str, direction: str = "1 0 0 0 1 0 0 0 1") -> Path:
    """A MetaImage written by hand, so spacing and direction can hold what SimpleITK would not write."""
    data = np.zeros(SHAPE[::-1], np.uint8)
    head = (
        "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
        f"TransformMatrix = {direction}\nOffset = 1 2 3\nElementSpacing = {spacing}\n"
        f"DimSize = {SHAPE[0]} {SHAPE[1]} {SHAPE[2]}\nElementType = MET_UCHAR\nElementDataFile = LOCAL\n"
    )
    path.write_bytes(head.encode() + data.tobytes())
    return path


@pytest.mark.parametrize(
    ("spacing", "direction", "expect", "words"),
    [
        ("0.8 0.9 1.5", "1 0 0 0 1 0 0 0 1", None, ""),
        ("0.8 0.9 1.5", "0 1 0 0 0 -1 -1 0 0", None, ""),
        ("0 0.9 1.5", "1 0 0 0 1 0 0 0 1", "error", "(0, 0.9, 1.5)"),
        ("-0.8 0.9 1.5", "1 0 0 0 1 0 0 0 1", "error", "negative"),
        ("0.8 0.9 1.5", "1 0 0 1 0 0 0 0 1", "error", "singular"),
        ("0.8 0.9 1.5", "1 0 0 0.3 0.95 0 0 0 1", "warning", "sheared"),
    ],
)
def test_header_problems_of_itk_formats(tmp_path: Path, spacing: str, direction: str, expect: str, words: str) -> None:
    problems = header_problems(_itk_file(tmp_path / "x.mha", spacing, direction))
    if expect is None:
        assert problems == []
    else:
        assert [sev for sev, _ in problems] == [expect]
        assert words in problems[0][1]


# ---- write_volume on the input's grid -----------------------------------------------------------------------------

HANDLED = [n for n, v in VARIANTS.items() if v.handled]


@pytest.mark.parametrize("name", HANDLED)
def test_mask_reads_back_like_its_input_in_nibabel_and_simpleitk(tmp_path: Path, name: str) -> None:
    src = write_variant(tmp_path / "in" / "scan.nii.gz", name)
    mask = _mask()
    out = write_volume(mask, nib.load(str(src)).affine, tmp_path / "out" / "scan.nii.gz", dtype=np.uint8, like=src)
    assert_reads_like(out, src, mask)
    assert nib.load(str(out)).get_data_dtype() == np.uint8


@pytest.mark.parametrize("name", ["ras", "oblique", "permuted", "pixdim_neg_unit", "qs_rotation_aligned"])
@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_itk_format_mask_of_a_nifti_input_reads_back_like_it_in_simpleitk(
    tmp_path: Path, name: str, suffix: str
) -> None:
    src = write_variant(tmp_path / "scan.nii.gz", name)
    mask = _mask()
    out = write_volume(mask, nib.load(str(src)).affine, tmp_path / f"mask{suffix}", like=src)
    assert_reads_like(out, src, mask)


@pytest.mark.parametrize("geometry", ["ras", "lps", "oblique", "permuted"])
@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_masks_of_itk_inputs_read_back_like_them(tmp_path: Path, geometry: str, suffix: str) -> None:
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ AFFINES[geometry]
    im = sitk.GetImageFromArray(np.zeros(SHAPE[::-1], np.float32))
    im.SetSpacing(SPACING)
    im.SetDirection((lps[:3, :3] / np.asarray(SPACING)).ravel().tolist())
    im.SetOrigin(lps[:3, 3].tolist())
    src = tmp_path / f"scan{suffix}"
    sitk.WriteImage(im, str(src))
    mask = _mask()
    affine = read_header(src).affine
    for out_suffix in (suffix, ".nii.gz"):
        out = write_volume(mask, affine, tmp_path / "out" / f"mask{out_suffix}", like=src)
        assert_reads_like(out, src, mask)
        np.testing.assert_allclose(read_header(out).affine, affine, atol=1e-5)


def test_probability_maps_on_the_grid_keep_the_stored_geometry(tmp_path: Path) -> None:
    """A 4D (X, Y, Z, K) float map written like a pixdim -1 input reads back on its grid in both readers."""
    src = write_variant(tmp_path / "scan.nii.gz", "pixdim_neg_oblique")
    probs = np.random.default_rng(1).random((*SHAPE, 3)).astype(np.float32)
    out = write_volume(probs, nib.load(str(src)).affine, tmp_path / "p.nii.gz", dtype=np.float32, like=src)
    assert nib.load(str(out)).shape == (*SHAPE, 3)
    assert_reads_like(out, src)
    np.testing.assert_array_equal(np.asarray(nib.load(str(out)).dataobj), probs)


def test_nifti2_and_big_endian_inputs_keep_their_stored_geometry(tmp_path: Path) -> None:
    n2 = nib.Nifti2Image(np.zeros(SHAPE, np.float32), AFFINES["oblique"])
    n2.header["pixdim"][1] = -0.8  # nibabel saves what it holds; it repairs only on load
    nib.save(n2, tmp_path / "n2.nii.gz")
    assert [sev for sev, m in header_problems(tmp_path / "n2.nii.gz") if "NIfTI-2" in m] == ["warning"]
    out = write_volume(_mask(), AFFINES["oblique"], tmp_path / "m2.nii.gz", like=tmp_path / "n2.nii.gz")
    assert isinstance(nib.load(str(out)), nib.Nifti2Image)
    np.testing.assert_allclose(nib.load(str(out)).affine, nib.load(str(tmp_path / "n2.nii.gz")).affine, atol=1e-6)
    with gzip.open(out) as f:
        assert nib.Nifti2Header.from_fileobj(f, check=False)["pixdim"][1] == -0.8  # NIfTI-2 stores float64

    be = nib.Nifti1Image(np.zeros(SHAPE, ">f4"), AFFINES["permuted"], header=nib.Nifti1Header(endianness=">"))
    nib.save(be, tmp_path / "be.nii")
    assert header_problems(tmp_path / "be.nii") == []
    out = write_volume(_mask(), AFFINES["permuted"], tmp_path / "mbe.nii.gz", like=tmp_path / "be.nii")
    assert_reads_like(out, tmp_path / "be.nii", _mask())


def test_an_array_off_the_input_grid_gets_the_affine_it_was_given(tmp_path: Path) -> None:
    src = write_variant(tmp_path / "scan.nii.gz", "pixdim_neg_unit")
    half = np.diag([2.0, 2.0, 2.0, 1.0]) @ AFFINES["unit"]  # another grid: the stored header must not be copied
    out = write_volume(np.zeros((3, 4, 4), np.uint8), half, tmp_path / "m.nii.gz", like=src)
    np.testing.assert_allclose(nib.load(str(out)).affine, half, atol=1e-6)
    np.testing.assert_allclose(sitk_affine_ras(sitk.ReadImage(str(out))), half, atol=1e-5)
    assert nib.load(str(out)).header["pixdim"][1] == 2.0  # rebuilt, positive


def test_a_non_finite_affine_off_the_grid_is_refused_with_the_file_named(tmp_path: Path) -> None:
    bad = AFFINES["ras"].copy()
    bad[0, 0] = np.nan
    for suffix in (".nii.gz", ".nrrd"):
        with pytest.raises(DataError, match=rf"m{suffix}.*NaN or Inf"):
            write_volume(np.zeros(SHAPE, np.uint8), bad, tmp_path / f"m{suffix}")
