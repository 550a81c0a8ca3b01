"""DICOM series in: a folder of DICOM files read as one volume with its geometry, or refused with the reason.

Generated series (written with pydicom by :func:`tests.conftest.write_dicom_series`, so a user's clone tests them)
check the reading against the volume and affine they were made from; the real scanner series of
``../shared/data/DICOM`` are compared with the dcm2niix NIfTI made from each.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from medattn.cli import main
from medattn.errors import DataError
from tests.conftest import blob_case, write_dicom_series, write_nifti

SHAPE = (12, 10, 7)


def _oblique_affine() -> np.ndarray:
    th = np.deg2rad(20)
    rot = np.array([[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0], [0, 0, 1]])
    tilt = np.array([[1, 0, 0], [0, np.cos(0.3), -np.sin(0.3)], [0, np.sin(0.3), np.cos(0.3)]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ tilt @ np.diag([0.9, 1.1, 2.5])
    aff[:3, 3] = [-40.0, 12.5, 30.0]
    return aff


def _volume(seed: int = 0, shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).integers(-200, 3000, shape).astype(np.int16)


def test_a_series_reads_as_the_volume_and_affine_it_was_written_from(tmp_path: Path) -> None:
    """Files named against their position order (slice 0 last by name): read by position, each reader path
    (the header reader, the voxel reader, MONAI's loader) gives the written voxels and grid."""
    from medattn.data.io import read_header, read_volume
    from medattn.data.readers import make_loader

    vol, aff = _volume(), _oblique_affine()
    paths = write_dicom_series(tmp_path / "s", vol, aff, names="img{:03d}.dcm")
    for p in paths:  # names reversed against the slice order
        p.rename(p.with_name(f"x{len(paths) - int(p.stem[3:]):03d}.dcm"))
    header = read_header(tmp_path / "s")
    assert header.shape == SHAPE
    np.testing.assert_allclose(header.affine, aff, atol=1e-4)
    np.testing.assert_allclose(header.spacing, (0.9, 1.1, 2.5), atol=1e-5)
    arr, _ = read_volume(tmp_path / "s", dtype=None)
    np.testing.assert_array_equal(arr, vol)
    img, meta = make_loader()(str(tmp_path / "s"))
    np.testing.assert_array_equal(np.asarray(img), vol)
    np.testing.assert_allclose(np.asarray(meta["affine"]), aff, atol=1e-4)


def _write_case(tmp_path: Path, problem: str) -> Path:
    from pydicom import dcmread

    folder = tmp_path / problem
    vol, aff = _volume(1), _oblique_affine()
    paths = write_dicom_series(folder, vol, aff)
    if problem == "two_series":
        write_dicom_series(folder, vol, aff, names="other{:03d}.dcm", extra={"SeriesDescription": "t2 other"})
    elif problem == "missing_slice":
        paths[3].unlink()
    elif problem == "two_of_three":  # an even gap left: the uneven-gap check cannot see it
        for p in [*paths[3:], paths[1]]:
            p.unlink()
    elif problem == "every_other_slice":
        for p in paths[1::2]:
            p.unlink()
    elif problem == "duplicated_slice":
        shutil.copy(paths[2], folder / "copy_of_slice002.dcm")
    elif problem == "multi_echo":
        uid = dcmread(paths[0]).SeriesInstanceUID
        for p in paths:
            p.unlink()
        write_dicom_series(folder, vol, aff, series_uid=uid, names="e1_{:03d}.dcm", extra={"EchoNumbers": 1})
        write_dicom_series(folder, vol, aff, series_uid=uid, names="e2_{:03d}.dcm", extra={"EchoNumbers": 2})
    elif problem == "gantry_tilt":
        lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ aff
        shift = lps[:3, 1] / np.linalg.norm(lps[:3, 1]) * 0.8  # each slice 0.8 mm further along the columns
        positions = [lps[:3, 3] + k * lps[:3, 2] + k * shift for k in range(SHAPE[2])]
        for p in paths:
            p.unlink()
        write_dicom_series(folder, vol, aff, positions=positions)
    elif problem == "not_an_image":
        ds = dcmread(paths[0])
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        del ds.ImagePositionPatient
        ds.save_as(folder / "seg.dcm")
    elif problem == "not_dicom":
        (folder / "notes.txt").write_text("scanned on Tuesday\n")
    elif problem == "single_slice":
        for p in paths[1:]:
            p.unlink()
    elif problem == "small_shear":
        # 0.004 mm a slice sideways: 0.09 degrees (under the angle tolerance) but 0.024 mm over the stack, more
        # than the grid agreement SimpleITK's grid is held to
        lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ aff
        shift = lps[:3, 1] / np.linalg.norm(lps[:3, 1]) * 0.004
        positions = [lps[:3, 3] + k * lps[:3, 2] + k * shift for k in range(SHAPE[2])]
        for p in paths:
            p.unlink()
        write_dicom_series(folder, vol, aff, positions=positions)
    elif problem in ("not_orthonormal", "zero_orientation"):
        iop = ["1", "0", "0", "0.1", "1", "0"] if problem == "not_orthonormal" else ["0"] * 6
        for p in paths:
            ds = dcmread(p)
            ds.ImageOrientationPatient = iop
            ds.save_as(p)
    elif problem == "no_pixel_spacing":
        ds = dcmread(paths[4])
        del ds.PixelSpacing
        ds.save_as(paths[4])
    elif problem == "enhanced":
        ds = dcmread(paths[0])
        ds.NumberOfFrames = 2
        ds.save_as(paths[0])
    elif problem == "enhanced_one_frame":  # e.g. highdicom's legacy conversion, one frame per object
        for p in paths:
            ds = dcmread(p)
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4.4"
            ds.save_as(p)
    elif problem == "modality_lut":
        from pydicom.dataset import Dataset

        ds = dcmread(paths[2])
        item = Dataset()
        item.LUTDescriptor = [4, 0, 16]
        item.add_new(0x00283006, "US", [0, 10, 20, 30])  # LUTData
        ds.ModalityLUTSequence = [item]
        ds.save_as(paths[2])
    elif problem == "derived_slice":  # a secondary capture of the series' UID, one gap past the last slice
        lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ aff
        extra = folder / "extra"
        write_dicom_series(extra, vol[:, :, :1], aff, positions=[lps[:3, 3] + SHAPE[2] * lps[:3, 2]])
        ds = dcmread(next(extra.iterdir()))
        ds.SeriesInstanceUID, ds.ImageType, ds.InstanceNumber = (
            dcmread(paths[0]).SeriesInstanceUID,
            ["DERIVED", "SECONDARY"],
            99,
        )
        ds.save_as(folder / "zz_derived.dcm")
        shutil.rmtree(extra)
        for p in paths:
            ds = dcmread(p)
            ds.ImageType = ["ORIGINAL", "PRIMARY", "M"]
            ds.save_as(p)
    return folder


REFUSALS = {
    "two_series": r"holds 2 series, one is expected: series 3 't1 test': 7 files .*series 3 't2 other': 7 files",
    "missing_slice": r"uneven slice spacing: 5\.000 mm between slice002\.dcm and slice004\.dcm, 2\.500 mm elsewhere"
    r".*a slice may be missing",
    "two_of_three": r"lie 5\.000 mm apart, 2\.0 times their thickness \(2\.5 mm\), and their instance numbers skip at "
    r"every step \(1, 3\)",
    "every_other_slice": r"instance numbers skip at every step \(1, 3, 5, 7\): slices are missing",
    "duplicated_slice": r"slice position\(s\) hold more than one file, e\.g\. .*slice002\.dcm.*duplicated slice",
    "multi_echo": r"holds 2 volumes at the same 7 slice positions, told apart by EchoNumbers \(1, 2\)",
    "gantry_tilt": r"not stacked along their normal: tilted by 17\.7\d degrees",
    "not_an_image": r"non-image DICOM objects \(1 x Segmentation Storage, e\.g\. seg\.dcm\)",
    "not_dicom": r"not readable DICOM: notes\.txt",
    "single_slice": r"a single slice: not a 3D volume",
    "small_shear": r"not stacked along their normal: tilted by 0\.0\d degrees, the last slice 0\.024 mm beside",
    "not_orthonormal": r"not two perpendicular unit vectors \(lengths 1\.0000 and 1\.0050, dot product 0\.1000\)",
    "zero_orientation": r"not two perpendicular unit vectors \(lengths 0\.0000 and 0\.0000",
    "no_pixel_spacing": r"1 slice\(s\) lack the geometry a volume needs \(slice004\.dcm has no PixelSpacing\)",
    "enhanced": r"multi-frame \(enhanced\) DICOM is not supported yet \(slice000\.dcm: 2 frames\)",
    "enhanced_one_frame": r"enhanced DICOM objects are not supported yet \(7 file\(s\), e\.g\. slice000\.dcm: "
    r"Legacy Converted Enhanced MR Image Storage",
    "modality_lut": r"1 slice\(s\) map their values through a Modality LUT Sequence \(e\.g\. slice002\.dcm\)",
    "derived_slice": r"slices of different kinds in one series \(ImageType ORIGINAL or DERIVED: ORIGINAL: 7 file\(s\); "
    r"DERIVED: 1 file\(s\), e\.g\. zz_derived\.dcm\)",
}


@pytest.mark.parametrize("problem", sorted(REFUSALS))
def test_a_folder_that_is_not_one_regular_volume_is_refused_with_the_reason(tmp_path: Path, problem: str) -> None:
    from medattn.data.io import read_header, read_volume

    folder = _write_case(tmp_path, problem)
    for read in (read_header, read_volume):
        with pytest.raises(DataError, match=REFUSALS[problem]) as err:
            read(folder)
        assert str(err.value).startswith(f"folder {folder}: ")


def test_validate_refuses_the_bad_series_by_name_and_passes_the_good(tmp_path: Path, capsys) -> None:
    """A folder of three series folders, one with a slice missing: validate fails that case alone, naming it."""
    root = tmp_path / "data"
    write_dicom_series(root / "good_a", _volume(2), _oblique_affine())
    write_dicom_series(root / "good_b", _volume(3), np.diag([1.0, 1.0, 3.0, 1.0]))
    bad = write_dicom_series(root / "broken", _volume(4), np.diag([1.0, 1.0, 3.0, 1.0]))
    bad[2].unlink()
    assert main(["validate", str(root), "-o", str(tmp_path / "v.json")]) != 0
    report = json.loads((tmp_path / "v.json").read_text())
    failed = {c["case"] for c in report["cases"] if not c["ok"]}
    assert failed == {"broken"}
    assert "a slice may be missing" in json.dumps(report)


def test_manifest_makes_domains_from_a_header_attribute_and_finds_labels_beside_series(tmp_path: Path) -> None:
    """``medattn manifest ROOT --domain-from Manufacturer`` over series from two scanners; a NIfTI label named after
    its series becomes the case's label, and the metadata carries the headers' acquisition attributes."""
    root = tmp_path / "pacs"
    aff = np.diag([1.0, 1.0, 3.0, 1.0])
    write_dicom_series(root / "p1" / "s1", _volume(5), aff, manufacturer="Acme", extra={"MagneticFieldStrength": 3})
    write_dicom_series(root / "p2" / "s1", _volume(6), aff, manufacturer="Zenith", extra={"EchoTime": 4.5})
    write_dicom_series(root / "p2" / "s2", _volume(7), aff, manufacturer="Zenith")
    write_nifti(root / "p2" / "s2_seg.nii.gz", np.zeros(SHAPE, np.uint8), aff)
    out = tmp_path / "m.json"
    assert main(["manifest", str(root), "--domain-from", "Manufacturer", "-o", str(out)]) == 0
    doc = json.loads(out.read_text())
    cases = {d["name"]: {c["id"]: c for c in d["cases"]} for d in doc["domains"]}
    assert set(cases) == {"Acme", "Zenith"} and set(cases["Zenith"]) == {"p2_s1", "p2_s2"}
    assert cases["Zenith"]["p2_s2"]["label"] == "p2/s2_seg.nii.gz" and "label" not in cases["Zenith"]["p2_s1"]
    assert cases["Acme"]["p1_s1"]["images"] == ["p1/s1"]
    assert cases["Acme"]["p1_s1"]["metadata"]["MagneticFieldStrength"] == 3.0
    assert cases["Zenith"]["p2_s1"]["metadata"]["EchoTime"] == 4.5
    assert main(["manifest", str(root), "--domain-from", "folder", "-o", str(tmp_path / "f.json")]) == 0
    assert [d["name"] for d in json.loads((tmp_path / "f.json").read_text())["domains"]] == ["p1", "p2"]
    assert main(["manifest", str(root), "-o", str(tmp_path / "n.json")]) == 0  # one domain, not one per patient
    assert [d["name"] for d in json.loads((tmp_path / "n.json").read_text())["domains"]] == ["pacs"]
    assert main(["validate", str(out), "-o", str(tmp_path / "v.json")]) == 0  # the label lies on its series' grid


def test_drift_metadata_comes_from_the_series_headers(tmp_path: Path) -> None:
    from medattn.drift.features import header_metadata

    write_dicom_series(tmp_path / "s", _volume(8), np.eye(4), manufacturer="Zenith", extra={"InstitutionName": "X"})
    got = header_metadata({"filename_or_obj": str(tmp_path / "s"), "affine": np.eye(4)}, None)
    assert got["Manufacturer"] == "Zenith" and got["InstitutionName"] == "X"
    assert header_metadata({"filename_or_obj": str(tmp_path / "s")}, {"Manufacturer": "given"})["Manufacturer"] == (
        "given"
    )


def test_no_output_may_land_inside_an_input_series_folder(tmp_path: Path) -> None:
    from medattn.data.guard import InputGuard
    from medattn.errors import ConfigError

    write_dicom_series(tmp_path / "s", _volume(9), np.eye(4))
    guard = InputGuard.of([tmp_path / "s"])
    for target in (tmp_path / "s" / "mask.nii.gz", tmp_path / "s" / "sub" / "mask.nii.gz"):
        with pytest.raises(ConfigError, match="inside the input series folder"):
            guard.check_file(target, "-o")
    with pytest.raises(ConfigError, match="inside the input series folder"):
        guard.check_dir(tmp_path / "s" / "out", "output")
    guard.check_dir(tmp_path / "elsewhere", "output")


# ---- the real scanner series ---------------------------------------------------------------------------------------


def _corners(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    idx = np.array([[i, j, k, 1.0] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)])
    return (np.asarray(affine) @ idx.T).T[:, :3]


def _index_map(ours: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Our voxel index of each reference voxel index, as a 4x4 (a signed permutation with integer offsets)."""
    m = np.linalg.inv(ours) @ ref
    assert np.abs(m - np.round(m)).max() < 0.02, m  # dcm2niix rounds slice positions (see the data's README)
    return np.round(m).astype(int)


def _on_reference_grid(arr: np.ndarray, affine: np.ndarray, ref: Any) -> np.ndarray:
    """``arr`` (on ``affine``'s grid) resampled onto the reference NIfTI's voxel order by the index map."""
    m = _index_map(affine, ref.affine)
    ijk = np.indices(ref.shape[:3]).reshape(3, -1)
    return arr[tuple(m[:3, :3] @ ijk + m[:3, 3:4])].reshape(ref.shape[:3])


def _reference_series(shared_data: Path) -> list[tuple[str, Path]]:
    root = shared_data / "DICOM"
    if not root.is_dir():
        pytest.skip(f"no DICOM data at {root}")
    return [(name, next((root / "reference" / name).glob("*.nii.gz"))) for name in sorted(_EXPECTED)]


#: Voxel ratio (medattn / dcm2niix) per series: Philips' display scaling against its floating-point value (README).
_EXPECTED = {
    "ge_ct_3slice": 1.0,
    "philips_t1w_ffe_ax": 1.792889,
    "siemens_xa30_gre_oblique": 1.0,
    "siemens_xa30_t1w_sag_3d": 1.0,
}


def test_real_series_have_the_geometry_and_voxels_of_their_dcm2niix_reference(shared_data: Path) -> None:
    """Every series of ../shared/data/DICOM: the grid's corners land within 0.02 mm of the reference NIfTI's
    (after the reference's axis order), and the voxels equal it through the index map (Philips: times its
    constant scaling ratio)."""
    from medattn.data.io import read_header, read_volume

    for name, ref_path in _reference_series(shared_data):
        folder = shared_data / "DICOM" / name
        header = read_header(folder)
        ref = nib.load(str(ref_path))
        ref_corners = _corners(ref.shape[:3], ref.affine)
        ours = _corners(header.shape, header.affine)
        dist = np.linalg.norm(ref_corners[:, None] - ours[None], axis=2).min(axis=1)
        assert dist.max() < 0.02, (name, dist.max())
        arr, _ = read_volume(folder, dtype=np.float64)
        ref_arr = np.asarray(ref.dataobj, dtype=np.float64)
        np.testing.assert_allclose(
            _on_reference_grid(arr, header.affine, ref), ref_arr * _EXPECTED[name], rtol=1e-5, atol=1e-3, err_msg=name
        )
        assert sorted(header.shape) == sorted(ref.shape[:3])


def test_the_real_ct_series_marked_monochrome1_reads_the_hu_of_its_dcm2niix_reference(
    shared_data: Path, tmp_path: Path
) -> None:
    """The GE CT series of ../shared/data with PhotometricInterpretation MONOCHROME1 (a copy): the same HU as the
    unaltered series' dcm2niix NIfTI, voxel for voxel (SimpleITK alone reads -2049 - HU)."""
    from pydicom import dcmread

    from medattn.data.io import read_volume

    name, ref_path = next(r for r in _reference_series(shared_data) if r[0] == "ge_ct_3slice")
    copy = tmp_path / name
    shutil.copytree(shared_data / "DICOM" / name, copy)
    for p in copy.iterdir():
        ds = dcmread(p)
        ds.PhotometricInterpretation = "MONOCHROME1"
        ds.save_as(p)
    arr, header = read_volume(copy, dtype=np.float64)
    want, _ = read_volume(shared_data / "DICOM" / name, dtype=np.float64)
    np.testing.assert_array_equal(arr, want)
    ref = nib.load(str(ref_path))
    np.testing.assert_allclose(_on_reference_grid(arr, header.affine, ref), np.asarray(ref.dataobj, np.float64))


def test_malformed_geometry_values_are_a_refusal_not_a_traceback(tmp_path: Path) -> None:
    from pydicom import dcmread

    from medattn.data.io import read_header

    paths = write_dicom_series(tmp_path / "s", _volume(10), np.eye(4))
    ds = dcmread(paths[2])
    ds.ImagePositionPatient = ["1.0", "2.0"]  # two values where three belong
    ds.save_as(paths[2])
    with pytest.raises(DataError, match="malformed DICOM header values"):
        read_header(tmp_path / "s")


def test_orientation_stored_with_few_decimals_is_not_read_as_a_tilt(tmp_path: Path) -> None:
    """Scanners store the direction cosines rounded (5 decimals here): they are not quite unit vectors, which must
    not read as a tilted stack; the grid is the written one within the rounding."""
    from medattn.data.dicom import scan_series

    vol, aff = _volume(11, (12, 10, 40)), _oblique_affine()  # 40 slices: a 97.5 mm stack
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ aff
    cosines = [*(lps[:3, 0] / np.linalg.norm(lps[:3, 0])), *(lps[:3, 1] / np.linalg.norm(lps[:3, 1]))]
    write_dicom_series(tmp_path / "s", vol, aff, extra={"ImageOrientationPatient": [f"{v:.5f}" for v in cosines]})
    info = scan_series(tmp_path / "s")
    np.testing.assert_allclose(info.affine, aff, atol=2e-4)


def test_a_refused_series_is_not_read_by_another_monai_reader(tmp_path: Path) -> None:
    """MONAI's LoadImage tries its next reader when one fails: a series with a missing slice must still be refused
    by the loader every pipeline uses, not stacked by MONAI's own DICOM reader."""
    from medattn.data.readers import make_loader
    from medattn.data.transforms import _load

    folder = _write_case(tmp_path, "missing_slice")
    with pytest.raises(DataError, match="a slice may be missing"):
        make_loader()(str(folder))
    with pytest.raises(DataError, match="a slice may be missing"):
        _load(["image"])[0]({"image": str(folder)})


def test_a_dicomdir_beside_series_folders_is_not_a_series(tmp_path: Path) -> None:
    """A DICOM export's root holds DICOMDIR (a DICOM file) and the series below it: the root is no series."""
    from medattn.data.dicom import is_series_folder
    from medattn.data.importers.dicom import find_series_folders

    write_dicom_series(tmp_path / "export" / "S1", _volume(12), np.eye(4))
    shutil.copy(next((tmp_path / "export" / "S1").iterdir()), tmp_path / "export" / "DICOMDIR")
    assert not is_series_folder(tmp_path / "export")
    assert find_series_folders(tmp_path / "export") == [tmp_path / "export" / "S1"]


def test_a_series_reached_through_a_link_reports_the_links_paths(tmp_path: Path) -> None:
    """The header cache is keyed on the path given: the same series through a link and directly gives each
    caller its own spelling of the files."""
    from medattn.data.io import series_info

    write_dicom_series(tmp_path / "s", _volume(13), np.eye(4))
    (tmp_path / "link").symlink_to(tmp_path / "s", target_is_directory=True)
    direct, linked = series_info(tmp_path / "s"), series_info(tmp_path / "link")
    assert all(p.parent == tmp_path / "s" for p in direct.files)
    assert all(p.parent == tmp_path / "link" for p in linked.files)
    assert linked.folder == tmp_path / "link"


def test_a_root_that_is_itself_a_series_leaves_the_label_beside_it_out(tmp_path: Path, caplog) -> None:
    """``medattn manifest pacs/s2`` where ``pacs/s2_seg.nii.gz`` lies beside the root: a one-case manifest without
    a label (the label is outside the data root), said in the log, not a ManifestError."""
    aff = np.diag([1.0, 1.0, 3.0, 1.0])
    write_dicom_series(tmp_path / "pacs" / "s2", _volume(14), aff)
    write_nifti(tmp_path / "pacs" / "s2_seg.nii.gz", np.zeros(SHAPE, np.uint8), aff)
    out = tmp_path / "m.json"
    with caplog.at_level("WARNING"):
        assert main(["manifest", str(tmp_path / "pacs" / "s2"), "-o", str(out)]) == 0
    (domain,) = json.loads(out.read_text())["domains"]
    assert [c["id"] for c in domain["cases"]] == ["s2"] and "label" not in domain["cases"][0]
    assert "s2_seg.nii.gz: left out, it lies outside the data root" in caplog.text


def test_a_gapped_acquisition_with_consecutive_numbers_is_read(tmp_path: Path) -> None:
    """Thin slices with gaps between them (1 mm thick, 2.5 mm apart, as the Philips series of ../shared/data) and
    consecutive instance numbers are a whole series: read, on the positions' grid."""
    from medattn.data.io import read_volume

    vol, aff = _volume(1), _oblique_affine()
    write_dicom_series(tmp_path / "gapped", vol, aff, extra={"SliceThickness": "1.0"})
    got, header = read_volume(tmp_path / "gapped", dtype=None)
    np.testing.assert_array_equal(got, vol)
    np.testing.assert_allclose(header.affine, aff, atol=1e-4)


def test_modality_option_cannot_contradict_the_series_headers(tmp_path: Path) -> None:
    """DICOM carries its modality: ``--modality CT`` on MR series (or the reverse) would normalise them as the
    other one; refused naming both. Agreeing with the headers, it is accepted."""
    from medattn.data.importers import load_dataset
    from medattn.errors import ManifestError

    for i in range(2):
        image, _ = blob_case((8, 9, 10), seed=i)
        write_dicom_series(tmp_path / "pacs" / f"p{i}", np.round(image * 500).astype(np.int16), np.eye(4))
    with pytest.raises(ManifestError, match="--modality CT but the series' headers say MR"):
        load_dataset(tmp_path / "pacs", modality="CT")
    assert load_dataset(tmp_path / "pacs", modality="MR").channels[0].modality == "MR"


def _bare(path: Path, out: Path) -> None:
    """``path`` as a bare data set: no 128-byte preamble, no ``DICM`` marker, no file meta (older scanners and PACS
    exports write these, with names such as ``IM0001``)."""
    from pydicom import dcmread
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    ds = dcmread(path)
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    out.write_bytes(buf.getvalue())


def test_series_without_a_preamble_or_behind_notes_are_found_not_dropped(tmp_path: Path) -> None:
    """A folder of bare data sets named IM0000... and one whose first eight files are notes were passed over as
    not series: `validate ROOT` checked one case of three and said nothing. Now the bare series is found and reads
    as written; the one with notes is found and refused by name (a series folder holds only its series)."""
    from medattn.data.importers.dicom import find_series_folders
    from medattn.data.io import read_volume

    root = tmp_path / "root"
    vol, aff = _volume(3), _oblique_affine()
    write_dicom_series(root / "good", vol, aff)
    written = write_dicom_series(tmp_path / "tmp", vol, aff)
    (root / "bare").mkdir()
    for i, p in enumerate(written):
        _bare(p, root / "bare" / f"IM{i:04d}")
    write_dicom_series(root / "notes", vol, aff, names="s{:03d}.dcm")
    for i in range(8):
        (root / "notes" / f"0{i}.txt").write_text("note\n")
    assert find_series_folders(root) == [root / "bare", root / "good", root / "notes"]
    got, header = read_volume(root / "bare", dtype=None)
    np.testing.assert_array_equal(got, vol)
    np.testing.assert_allclose(header.affine, aff, atol=1e-4)
    with pytest.raises(DataError, match=r"8 file\(s\) in the series folder are not readable DICOM: 00\.txt"):
        read_volume(root / "notes")


def test_a_monochrome1_series_reads_its_real_values_not_the_display_inversion(tmp_path: Path, caplog) -> None:
    """SimpleITK (GDCM) inverts MONOCHROME1 pixels, a display convention: a CT read as -2049 - HU, validated and
    predicted without a word. The real values (stored x slope + intercept) are read, equal to the volume written,
    and the log says how."""
    from medattn.data.io import read_volume

    vol, aff = _volume(4), _oblique_affine()
    write_dicom_series(
        tmp_path / "m1", vol, aff, extra={"PhotometricInterpretation": "MONOCHROME1", "RescaleSlope": "2",
                                          "RescaleIntercept": "-1024"},
    )  # fmt: skip
    with caplog.at_level("WARNING"):
        got, _ = read_volume(tmp_path / "m1", dtype=None)
    np.testing.assert_array_equal(got, vol.astype(np.float64) * 2 - 1024)
    assert "MONOCHROME1 series: its real values" in caplog.text


def test_voxels_the_two_readers_disagree_on_are_refused(tmp_path: Path, monkeypatch) -> None:
    """The middle slice is checked against pydicom's decoding: a disagreement is refused naming the file."""
    import medattn.data.dicom as dicom
    from medattn.data.io import read_volume

    write_dicom_series(tmp_path / "s", _volume(5), _oblique_affine())
    own = dicom._pydicom_slice
    monkeypatch.setattr(dicom, "_pydicom_slice", lambda p: own(p) + 1.0)  # one reader off by one everywhere
    with pytest.raises(DataError, match=r"SimpleITK and pydicom read different voxel values from slice003\.dcm"):
        read_volume(tmp_path / "s")


def test_a_truncated_slice_is_named(tmp_path: Path) -> None:
    from medattn.data.io import read_volume

    paths = write_dicom_series(tmp_path / "s", _volume(6), _oblique_affine())
    paths[4].write_bytes(paths[4].read_bytes()[:-100])
    with pytest.raises(DataError, match=r"cannot read the series' voxels \(slice004\.dcm: "):
        read_volume(tmp_path / "s")


def test_a_copy_of_a_series_in_another_folder_is_left_out_and_named(tmp_path: Path, caplog) -> None:
    """A copy of a series (a DICOMDIR export beside the originals) was a second case, free to land in another
    split than the first; it is left out, named. Folders of one series split by echo (the refusal's own advice)
    share only the SeriesInstanceUID and stay cases of their own."""
    from medattn.data.importers import load_dataset

    write_dicom_series(tmp_path / "pacs" / "a", _volume(7), np.eye(4))
    shutil.copytree(tmp_path / "pacs" / "a", tmp_path / "pacs" / "b_copy")
    uid = "1.2.826.0.1.3680043.8.498.1"
    for echo in (1, 2):
        write_dicom_series(
            tmp_path / "pacs" / f"e{echo}", _volume(8), np.eye(4), series_uid=uid, extra={"EchoNumbers": echo}
        )
    with caplog.at_level("WARNING"):
        manifest = load_dataset(tmp_path / "pacs")
    assert sorted(c.id for _, c in manifest.iter_cases()) == ["a", "e1", "e2"]
    assert "b_copy: left out, it holds slices of the series in a" in caplog.text


def test_series_below_a_series_folder_given_to_predict_are_named_as_not_predicted(tmp_path: Path, caplog) -> None:
    """``predict MODEL export/S1`` where S1 also holds a sub-folder of series (a DICOMDIR copy): one input, the
    series in S1; the ones below it were skipped without a word."""
    from medattn.infer.inputs import collect_inputs

    write_dicom_series(tmp_path / "S1", _volume(9), np.eye(4))
    write_dicom_series(tmp_path / "S1" / "copy" / "SE1", _volume(9), np.eye(4))
    with caplog.at_level("WARNING"):
        cases = collect_inputs(tmp_path / "S1")
    assert [c.case_id for c in cases] == ["S1"]
    assert "only the series in this folder is predicted, not what its sub-folder(s) copy hold" in caplog.text


def test_headers_anonymisers_leave_read_as_they_are(tmp_path: Path) -> None:
    """An empty RescaleSlope (intercept alone) and a slice whose ImageType was stripped: read, not refused (the
    reader check applies the rescale as the headers are read; a missing ImageType is no other kind of image)."""
    from pydicom import dcmread

    from medattn.data.io import read_volume

    vol = _volume(10)
    paths = write_dicom_series(tmp_path / "s", vol, np.eye(4), extra={"RescaleIntercept": "-1024", "RescaleSlope": ""})
    for p in paths:
        ds = dcmread(p)
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.save_as(p)
    ds = dcmread(paths[3])
    del ds.ImageType
    ds.save_as(paths[3])
    got, _ = read_volume(tmp_path / "s", dtype=np.float64)
    np.testing.assert_array_equal(got, vol.astype(np.float64) - 1024)


def test_folders_of_other_files_are_not_series(tmp_path: Path) -> None:
    """README, CHANGES and Analyze .hdr/.img files in a NIfTI or BIDS folder are no DICOM series."""
    from medattn.data.dicom import is_series_folder

    folder = tmp_path / "bids"
    folder.mkdir()
    (folder / "README").write_text("A dataset.\n")
    (folder / "CHANGES").write_text("1.0 2020-01-01\n  - first\n")
    (folder / "scan.hdr").write_bytes(bytes(348))
    (folder / "scan.img").write_bytes(np.arange(1000, dtype=np.int16).tobytes())
    write_nifti(folder / "scan.nii.gz", np.zeros((4, 4, 4), np.float32))
    assert not is_series_folder(folder)
