"""`medattn validate`: every bad input is named (case, file, check, reason) and good cases still pass."""

from __future__ import annotations

import gzip
import json
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from medattn.cli import EXIT_DATA, EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, main
from medattn.data.checks import CHECKS, Tolerances
from medattn.data.manifest import Manifest
from medattn.data.validate import validate_case, validate_manifest
from medattn.data.validation_report import Problem, ValidationReport, format_report
from medattn.errors import ConfigError
from tests.conftest import blob_case, write_nifti

SHAPE = (12, 14, 16)
LABELS = {"0": "background", "1": "core", "2": "rim"}
BAD = "bad_case"


# ---- a small generated dataset ---------------------------------------------------------------------------------


def shifted(dx: float, base: np.ndarray | None = None) -> np.ndarray:
    a = np.eye(4) if base is None else base.copy()
    a[0, 3] += dx
    return a


def add_case(root: Path, cid: str, seed: int = 0, shape: tuple[int, int, int] = SHAPE, affine: Any = None) -> dict:
    image, label = blob_case(shape, seed)
    write_nifti(root / "images" / f"{cid}.nii.gz", image, affine)
    write_nifti(root / "labels" / f"{cid}.nii.gz", label, affine)
    return {"id": cid, "images": [f"images/{cid}.nii.gz"], "label": f"labels/{cid}.nii.gz"}


def save_manifest(root: Path, cases: list[dict], channels: tuple[str, ...] = ("T1",)) -> Manifest:
    doc = {
        "name": "Blobs",
        "channels": [{"name": c, "modality": "MR"} for c in channels],
        "labels": LABELS,
        "domains": [{"name": "siteA", "cases": cases}],
    }
    path = root / "manifest.json"
    path.write_text(json.dumps(doc))
    return Manifest.load(path)


def img_path(root: Path) -> Path:
    return root / "images" / f"{BAD}.nii.gz"


def lab_path(root: Path) -> Path:
    return root / "labels" / f"{BAD}.nii.gz"


def truncate(path: Path, keep: float = 0.6) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def problems_of(report: ValidationReport, case: str) -> list[Problem]:
    return [p for p in report.problems if p.case == case]


# Each corruption rewrites a file of case BAD and says which file, check and message fragments to expect.
def c_truncated(root: Path) -> tuple[Path, str, list[str]]:
    truncate(img_path(root))
    return img_path(root), "voxels", ["truncated"]


def c_2d(root: Path) -> tuple[Path, str, list[str]]:
    image, _ = blob_case(SHAPE, 1)
    write_nifti(img_path(root), image[:, :, 5])
    return img_path(root), "dims", ["2D", "(12, 14)", "expected a 3D volume"]


def c_shape(root: Path) -> tuple[Path, str, list[str]]:
    _, label = blob_case((12, 14, 15), 1)
    write_nifti(lab_path(root), label)
    return lab_path(root), "shape", ["(12, 14, 15)", "(12, 14, 16)"]


def c_origin(root: Path) -> tuple[Path, str, list[str]]:
    _, label = blob_case(SHAPE, 1)
    write_nifti(lab_path(root), label, shifted(5.0))
    return lab_path(root), "affine", ["origin", "off by 5 mm"]


def c_orientation(root: Path) -> tuple[Path, str, list[str]]:
    _, label = blob_case(SHAPE, 1)
    write_nifti(lab_path(root), label, np.diag([-1.0, 1.0, 1.0, 1.0]))
    return lab_path(root), "affine", ["orientation LAS, image RAS"]


def c_reoriented(root: Path) -> tuple[Path, str, list[str]]:
    _, label = blob_case(SHAPE, 1)
    flipped = np.diag([-1.0, 1.0, 1.0, 1.0])
    flipped[0, 3] = SHAPE[0] - 1  # the image's own voxels, listed from the other end of x
    write_nifti(lab_path(root), label[::-1].copy(), flipped)
    return lab_path(root), "affine", ["covers the same voxels stored in another orientation (LAS, image RAS)"]


def c_voxel_size(root: Path) -> tuple[Path, str, list[str]]:
    _, label = blob_case(SHAPE, 1)
    write_nifti(lab_path(root), label, np.diag([1.0, 1.0, 2.0, 1.0]))
    return lab_path(root), "affine", ["voxel size (1, 1, 2) mm, image (1, 1, 1) mm"]


def c_undeclared(root: Path) -> tuple[Path, str, list[str]]:
    _, label = blob_case(SHAPE, 1)
    label[0, 0, :2] = 7
    write_nifti(lab_path(root), label)
    return lab_path(root), "labels", ["7 (2 voxels)", "not declared", "0 (background), 1 (core), 2 (rim)"]


def c_fractional(root: Path) -> tuple[Path, str, list[str]]:
    _, label = blob_case(SHAPE, 1)
    lab = label.astype(np.float32)
    lab[3, 3, 3] = 0.5
    write_nifti(lab_path(root), lab)
    return lab_path(root), "labels", ["1 voxel with non-integer values", "e.g. 0.5"]


def c_nearly_integer(root: Path) -> tuple[Path, str, list[str]]:
    _, label = blob_case(SHAPE, 1)
    lab = label.astype(np.float32)
    lab[lab == 1] = np.float32(1.0000001)  # shown as it is, not rounded to the integer it is not
    write_nifti(lab_path(root), lab)
    return lab_path(root), "labels", ["with non-integer values", "e.g. 1.0000001"]


def c_nan(root: Path) -> tuple[Path, str, list[str]]:
    image, _ = blob_case(SHAPE, 1)
    image[2, 3, 4:7] = np.nan
    write_nifti(img_path(root), image)
    return img_path(root), "finite", ["3 NaN and 0 Inf", "(2, 3, 4)"]


def c_inf(root: Path) -> tuple[Path, str, list[str]]:
    image, _ = blob_case(SHAPE, 1)
    image[0, 0, 0] = np.inf
    image[1, 0, 0] = -np.inf
    write_nifti(img_path(root), image)
    return img_path(root), "finite", ["0 NaN and 2 Inf"]


def c_missing_label(root: Path) -> tuple[Path, str, list[str]]:
    lab_path(root).unlink()
    return lab_path(root), "exists", ["file not found", str(lab_path(root))]


def c_missing_image(root: Path) -> tuple[Path, str, list[str]]:
    img_path(root).unlink()
    return img_path(root), "exists", ["file not found"]


def c_garbage(root: Path) -> tuple[Path, str, list[str]]:
    img_path(root).write_bytes(gzip.compress(b"this is not a NIfTI file" * 20))
    return img_path(root), "header", ["cannot read image header"]


def c_4d(root: Path) -> tuple[Path, str, list[str]]:
    image, _ = blob_case(SHAPE, 1)
    write_nifti(img_path(root), np.stack([image] * 3, axis=-1))
    return img_path(root), "dims", ["holds 3 volumes", "'T1'"]


def c_label_4d(root: Path) -> tuple[Path, str, list[str]]:
    _, label = blob_case(SHAPE, 1)
    write_nifti(lab_path(root), np.stack([label, label], axis=-1))
    return lab_path(root), "dims", ["label is 4D with 2 volumes"]


def c_zero_spacing(root: Path) -> tuple[Path, str, list[str]]:
    image, _ = blob_case(SHAPE, 1)
    hdr = nib.Nifti1Header()
    hdr.set_sform(np.diag([1.0, 1.0, 0.0, 1.0]), code=1)  # nibabel refuses such an affine unless set this way
    nib.save(nib.Nifti1Image(image, None, header=hdr), str(img_path(root)))
    return img_path(root), "spacing", ["(1, 1, 0) mm is not positive"]


def c_metres(root: Path) -> tuple[Path, str, list[str]]:
    image, label = blob_case(SHAPE, 1)
    aff = np.diag([0.001, 0.001, 0.001, 1.0])
    write_nifti(img_path(root), image, aff)
    write_nifti(lab_path(root), label, aff)
    return img_path(root), "spacing", ["(0.001, 0.001, 0.001) mm is implausible", "units"]


CORRUPTIONS = [
    c_truncated, c_2d, c_shape, c_origin, c_orientation, c_reoriented, c_voxel_size, c_undeclared, c_fractional,
    c_nearly_integer, c_nan, c_inf, c_missing_label, c_missing_image, c_garbage, c_4d, c_label_4d, c_zero_spacing,
    c_metres,
]  # fmt: skip


@pytest.fixture
def dataset(tmp_path: Path) -> Callable[[Callable[[Path], Any] | None], tuple[Path, Manifest]]:
    """Three cases, the middle one ``BAD``; ``corrupt(root)`` (if given) damages it before the manifest is read."""

    def _make(corrupt: Callable[[Path], Any] | None = None) -> tuple[Path, Manifest]:
        root = tmp_path / "data"
        cases = [add_case(root, "good_0", 0), add_case(root, BAD, 1), add_case(root, "good_2", 2)]
        if corrupt is not None:
            corrupt(root)
        return root, save_manifest(root, cases)

    return _make


# ---- clean data ------------------------------------------------------------------------------------------------


def test_clean_dataset_passes_and_records_stats(tmp_path: Path) -> None:
    root = tmp_path / "data"
    aff = np.diag([0.8, 0.8, 2.5, 1.0])
    manifest = save_manifest(root, [add_case(root, "c0", seed=3, affine=aff)])
    report = validate_manifest(manifest)
    assert report.ok and report.problems == []
    stats = report.cases[0].stats
    image, label = blob_case(SHAPE, 3)
    assert stats["shape"] == list(SHAPE)
    assert stats["channels"] == 1
    assert stats["spacing"] == pytest.approx([0.8, 0.8, 2.5])
    assert stats["intensity"] == [{"min": pytest.approx(image.min()), "max": pytest.approx(image.max())}]
    counts = np.bincount(label.ravel())
    assert stats["label_counts"] == {str(v): int(n) for v, n in enumerate(counts) if n}
    assert stats["nonfinite"] == 0


def test_case_without_label_is_fine(tmp_path: Path) -> None:
    root = tmp_path / "data"
    entry = add_case(root, "c0")
    del entry["label"]
    report = validate_manifest(save_manifest(root, [entry]))
    assert report.ok and report.problems == []
    assert "label_counts" not in report.cases[0].stats


# ---- bad inputs ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__[2:])
def test_bad_input_is_named_and_other_cases_pass(dataset: Callable, corrupt: Callable) -> None:
    root, manifest = dataset()
    bad_file, check, fragments = corrupt(root)
    report = validate_manifest(manifest)
    assert not report.ok
    assert [c.case for c in report.failed] == [BAD]
    assert [c.case for c in report.cases] == ["good_0", BAD, "good_2"]  # kept going past the bad case
    errors = [p for p in problems_of(report, BAD) if p.severity == "error"]
    rel = bad_file.relative_to(root).as_posix()
    hits = [p for p in errors if p.check == check and p.file == rel]
    assert hits, f"no {check!r} error on {rel}; got {[str(p) for p in errors]}"
    for fragment in fragments:
        assert fragment in hits[0].message, hits[0].message
    assert hits[0].domain == "siteA"
    assert BAD in str(hits[0]) and rel in str(hits[0])


def rewrite(root: Path, image: np.ndarray | None = None, label: np.ndarray | None = None, affine: Any = None) -> None:
    """Replace case BAD's image and/or label (both written with ``affine`` when one is given)."""
    if affine is not None:
        image, label = (blob_case(SHAPE, 1)[i] if a is None else a for i, a in enumerate((image, label)))
    if image is not None:
        write_nifti(img_path(root), image, affine)
    if label is not None:
        write_nifti(lab_path(root), label, affine)


def write_pixdim(root: Path, pixdim: tuple[float, float, float]) -> None:
    """The case's image with a 1 mm sform (and a qform of the same grid) but ``pixdim`` in the header, as written
    by tools that store voxel sizes apart from the affine. The label keeps a clean header."""
    img = nib.Nifti1Image(blob_case(SHAPE, 1)[0], np.eye(4))
    img.set_qform(np.eye(4), code=1)
    img.set_sform(np.eye(4), code=1)
    img.header["pixdim"][1:4] = pixdim
    nib.save(img, str(img_path(root)))


@pytest.mark.parametrize(
    ("pixdim", "fragment"),
    [
        ((0.0, 1.0, 1.0), "pixdim"),
        ((float("nan"), 1.0, 1.0), "pixdim"),
        ((2.0, 2.0, 2.0), "pixdim"),
    ],
    ids=["zero", "nan", "disagrees-with-affine"],
)
def test_header_geometry_the_readers_disagree_on_is_an_error(
    dataset: Callable, pixdim: tuple[float, float, float], fragment: str
) -> None:
    """nibabel repairs these silently; MONAI or SimpleITK then place the voxels elsewhere, so they are refused."""
    _, manifest = dataset(lambda r: write_pixdim(r, pixdim))
    report = validate_manifest(manifest)
    errors = [p for p in report.errors if p.case == BAD]
    assert [p.check for p in errors] == ["geometry"] and fragment in errors[0].message
    assert [c.case for c in report.failed] == [BAD]


@pytest.mark.parametrize(
    ("corrupt", "check", "fragment"),
    [
        (lambda r: rewrite(r, affine=np.diag([1, 1, 15.0, 1])), "spacing", "unusual voxel size (1, 1, 15) mm"),
        (lambda r: rewrite(r, label=blob_case(SHAPE, 1)[1].astype(np.float32)), "labels", "stored as float32"),
        (lambda r: rewrite(r, image=np.full(SHAPE, 7, np.int16)), "intensity", "every finite voxel is 7"),
        (lambda r: rewrite(r, label=np.zeros(SHAPE, np.uint8)), "labels", "only background"),
        (
            lambda r: rewrite(
                r, np.arange(12 * 14, dtype=np.float32).reshape(12, 14, 1), np.ones((12, 14, 1), np.uint8)
            ),
            "dims",
            "single slice along axis 2",
        ),
        (lambda r: write_pixdim(r, (-1.0, 1.0, 1.0)), "geometry", "negative voxel size"),
    ],
    ids=["spacing-15mm", "float-label", "constant-image", "empty-label", "single-slice", "pixdim-negative"],
)
def test_unusual_but_legal_input_is_a_warning(dataset: Callable, corrupt: Callable, check: str, fragment: str) -> None:
    _, manifest = dataset(corrupt)
    report = validate_manifest(manifest)
    assert report.ok, [str(p) for p in report.errors]
    warnings = problems_of(report, BAD)
    assert [(p.check, p.severity) for p in warnings] == [(check, "warning")]
    assert fragment in warnings[0].message


def test_several_bad_cases_are_all_reported(tmp_path: Path) -> None:
    root = tmp_path / "data"
    cases = [add_case(root, f"c{i}", seed=i) for i in range(6)]
    truncate(root / "images" / "c1.nii.gz")
    (root / "labels" / "c3.nii.gz").unlink()
    write_nifti(root / "labels" / "c4.nii.gz", blob_case(SHAPE, 4)[1], shifted(0.5))
    report = validate_manifest(save_manifest(root, cases))
    assert {(p.case, p.check) for p in report.errors} == {("c1", "voxels"), ("c3", "exists"), ("c4", "affine")}
    assert [c.ok for c in report.cases] == [True, False, True, False, False, True]
    assert report.summary() == "6 cases checked, 3 failed (3 errors), 0 warnings"


def test_unexpected_failure_in_one_case_does_not_stop_the_rest(
    dataset: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    import medattn.data.case_checker as v

    _, manifest = dataset()
    real = v.CaseChecker.label_voxels

    def flaky(self: Any, f: Any) -> None:
        if self.result.case == BAD:
            raise ZeroDivisionError("boom")
        real(self, f)

    monkeypatch.setattr(v.CaseChecker, "label_voxels", flaky)
    report = validate_manifest(manifest)
    assert [(p.case, p.check) for p in report.errors] == [(BAD, "internal")]
    assert "ZeroDivisionError: boom" in report.errors[0].message
    assert "label_counts" in report.cases[2].stats


# ---- channels --------------------------------------------------------------------------------------------------


def two_channel(root: Path, second: np.ndarray | None = None, affine2: Any = None) -> Manifest:
    image, label = blob_case(SHAPE, 0)
    write_nifti(root / "c0_T1.nii.gz", image)
    write_nifti(root / "c0_T2.nii.gz", image * 2 if second is None else second, affine2)
    write_nifti(root / "c0_seg.nii.gz", label)
    case = {"id": "c0", "images": ["c0_T1.nii.gz", "c0_T2.nii.gz"], "label": "c0_seg.nii.gz"}
    return save_manifest(root, [case], channels=("T1", "T2"))


def test_channel_files_must_share_the_grid(tmp_path: Path) -> None:
    assert validate_manifest(two_channel(tmp_path / "a")).ok
    bad_shape = validate_manifest(two_channel(tmp_path / "b", second=np.zeros((12, 14, 17), np.float32)))
    assert [(p.file, p.check) for p in bad_shape.errors] == [("c0_T2.nii.gz", "shape")]
    assert "channel file has spatial shape (12, 14, 17) but image c0_T1.nii.gz has (12, 14, 16)" in str(
        bad_shape.errors[0]
    )
    bad_affine = validate_manifest(two_channel(tmp_path / "c", affine2=shifted(2.0)))
    assert [(p.file, p.check) for p in bad_affine.errors] == [("c0_T2.nii.gz", "affine")]


def test_one_4d_file_holds_the_declared_channels(tmp_path: Path) -> None:
    image, label = blob_case(SHAPE, 0)
    stack = np.stack([image, -image, image + 10], axis=-1)
    write_nifti(tmp_path / "c0.nii.gz", stack[..., :2])
    write_nifti(tmp_path / "c1.nii.gz", stack)
    write_nifti(tmp_path / "c2.nii.gz", image)
    write_nifti(tmp_path / "seg.nii.gz", label)
    cases = [{"id": f"c{i}", "images": [f"c{i}.nii.gz"], "label": "seg.nii.gz"} for i in range(3)]
    report = validate_manifest(save_manifest(tmp_path, cases, channels=("T1", "T2")))
    assert report.cases[0].ok
    assert report.cases[0].stats["channels"] == 2
    lows = [s["min"] for s in report.cases[0].stats["intensity"]]
    assert lows == pytest.approx([image.min(), -image.max()])
    assert [(p.case, p.check) for p in report.errors] == [("c1", "dims"), ("c2", "dims")]
    assert (
        "holds 3 volume(s)" in report.errors[0].message
        and "2 channels (T1, T2) are expected" in report.errors[0].message
    )
    assert "holds 1 volume(s)" in report.errors[1].message


def test_4d_with_a_single_volume_counts_as_3d(tmp_path: Path) -> None:
    image, label = blob_case(SHAPE, 0)
    write_nifti(tmp_path / "c0.nii.gz", image[..., None])
    write_nifti(tmp_path / "seg.nii.gz", label)
    report = validate_manifest(save_manifest(tmp_path, [{"id": "c0", "images": ["c0.nii.gz"], "label": "seg.nii.gz"}]))
    assert report.ok and report.problems == []


# ---- tolerances and check selection ----------------------------------------------------------------------------


def test_affine_tolerance_absorbs_rounding_but_not_shifts(dataset: Callable) -> None:
    _, label = blob_case(SHAPE, 1)
    _, manifest = dataset(lambda r: write_nifti(lab_path(r), label, shifted(1e-4)))
    assert validate_manifest(manifest).ok
    _, manifest = dataset(lambda r: write_nifti(lab_path(r), label, shifted(0.05)))
    assert [p.check for p in validate_manifest(manifest).errors] == ["affine"]
    assert validate_manifest(manifest, tolerances=Tolerances(origin_atol_mm=0.1)).ok
    scaled = np.diag([1.0, 1.0, 1.0005, 1.0])
    _, manifest = dataset(lambda r: write_nifti(lab_path(r), label, scaled))
    assert validate_manifest(manifest).ok
    assert [p.check for p in validate_manifest(manifest, tolerances=Tolerances(affine_rtol=1e-4)).errors] == ["affine"]


def test_spacing_limits_are_honoured(dataset: Callable) -> None:
    _, manifest = dataset(lambda r: c_metres(r))
    strict = validate_manifest(manifest)
    assert [p.check for p in strict.errors] == ["spacing"]
    lenient = validate_manifest(manifest, tolerances=Tolerances(plausible_spacing_mm=(1e-4, 50.0)))
    assert lenient.ok
    assert [(p.check, p.severity) for p in lenient.problems] == [("spacing", "warning")]
    quiet = Tolerances(plausible_spacing_mm=(1e-4, 50.0), usual_spacing_mm=(1e-4, 10.0))
    assert validate_manifest(manifest, tolerances=quiet).problems == []


def test_header_only_checks_read_no_voxels(dataset: Callable, monkeypatch: pytest.MonkeyPatch) -> None:
    import medattn.data.case_checker as v

    _, manifest = dataset(c_truncated)
    calls = []
    monkeypatch.setattr(v, "read_volume", lambda *a, **k: calls.append(a) or pytest.fail("voxels were read"))
    report = validate_manifest(manifest, checks=["dims", "spacing", "shape", "affine"])
    assert report.ok and calls == []
    assert report.checks == ("exists", "header", "dims", "spacing", "shape", "affine")


def test_skipped_check_is_not_reported(dataset: Callable) -> None:
    _, manifest = dataset(c_origin)
    assert not validate_manifest(manifest).ok
    assert validate_manifest(manifest, checks=[c for c in CHECKS if c != "affine"]).ok


def test_unknown_check_is_a_config_error(dataset: Callable) -> None:
    _, manifest = dataset()
    with pytest.raises(ConfigError, match=r"unknown validation check.*'nans'.*known checks: exists"):
        validate_manifest(manifest, checks=["nans"])


def test_validate_case_by_name(dataset: Callable) -> None:
    _, manifest = dataset(c_nan)
    result = validate_case(manifest, "siteA", BAD)
    assert (result.case, result.domain, [p.check for p in result.errors]) == (BAD, "siteA", ["finite"])
    assert validate_case(manifest, "siteA", "good_0").ok


# ---- report ----------------------------------------------------------------------------------------------------


def test_report_json_and_table(dataset: Callable) -> None:
    _, manifest = dataset(c_nan)
    report = validate_manifest(manifest)
    doc = json.loads(json.dumps(report.to_dict(), allow_nan=False))  # NaN voxels must not leak into the JSON
    assert doc["summary"] == {
        "ok": False, "cases": 3, "failed": 1, "errors": 1, "warnings": 0, "failed_cases": [BAD],
        "seconds": doc["summary"]["seconds"],
    }  # fmt: skip
    assert [c["case"] for c in doc["cases"]] == ["good_0", BAD, "good_2"]
    assert doc["cases"][1]["ok"] is False and doc["cases"][1]["stats"]["nonfinite"] == 3
    assert doc["problems"] == [
        {"case": BAD, "domain": "siteA", "file": f"images/{BAD}.nii.gz", "check": "finite",
         "message": report.errors[0].message, "severity": "error"}
    ]  # fmt: skip
    table = format_report(report).splitlines()
    assert table[0].split() == ["case", "domain", "file", "check", "level", "problem"]
    assert table[1].split()[:5] == [BAD, "siteA", f"images/{BAD}.nii.gz", "finite", "error"]
    assert table[-1] == "3 cases checked, 1 failed (1 error), 0 warnings"


def test_table_rows_are_capped_errors_first(tmp_path: Path) -> None:
    root = tmp_path / "data"
    cases = [add_case(root, f"c{i}", seed=i) for i in range(4)]
    write_nifti(root / "labels" / "c0.nii.gz", blob_case(SHAPE, 0)[1].astype(np.float32))  # warning
    for i in (1, 2, 3):
        (root / "labels" / f"c{i}.nii.gz").unlink()  # errors
    report = validate_manifest(save_manifest(root, cases))
    lines = format_report(report, max_rows=2).splitlines()
    assert [ln.split()[0] for ln in lines[1:3]] == ["c1", "c2"]
    assert lines[3] == "... 2 more problems not shown (1 error, 1 warning); see the JSON report"
    assert lines[4] == "4 cases checked, 3 failed (3 errors), 1 warning"
    assert format_report(report, max_rows=0).splitlines()[0].startswith("... 4 more problems not shown")
    assert len(format_report(report, max_rows=None).splitlines()) == 1 + 4 + 1  # header, every problem, summary


# ---- real data -------------------------------------------------------------------------------------------------


@pytest.mark.realdata
def test_real_hippocampus_subset_has_no_errors(shared_data: Path, tmp_path: Path) -> None:
    root = shared_data / "Task04_Hippocampus"
    ids = sorted(p.name.removesuffix(".nii.gz") for p in (root / "imagesTr").glob("*.nii.gz"))[:20]
    cases = [{"id": i, "images": [f"imagesTr/{i}.nii.gz"], "label": f"labelsTr/{i}.nii.gz"} for i in ids]
    manifest = replace(save_manifest(tmp_path, cases), root=None)
    report = validate_manifest(manifest, data_root=root)
    assert report.errors == []
    # hippocampus_003's label is stored as float32 in the release: a warning, not a failure
    assert [(p.case, p.check) for p in report.warnings] == [("hippocampus_003", "labels")]
    for c in report.cases:
        assert set(c.stats["label_counts"]) <= {"0", "1", "2"}
        assert c.stats["spacing"] == [1.0, 1.0, 1.0]


@pytest.mark.realdata
def test_real_multichannel_and_anisotropic_cases(shared_data: Path, tmp_path: Path) -> None:
    brats = "BraTS2018_sites/TCIA/Brats18_TCIA02_471_1"
    mt = "SpinalCord_contrasts/sct_example_data/mt"
    doc = {
        "name": "mixed",
        "channels": ["FLAIR", "T1"],
        "labels": {"0": "background", "1": "foreground"},
        "domains": [
            {
                "name": "TCIA",
                "cases": [
                    {
                        "id": "brats",
                        "images": [f"{brats}/FLAIR.nii.gz", f"{brats}/T1.nii.gz"],
                        "label": f"{brats}/GT_W.nii.gz",
                    }
                ],
            },
        ],
    }
    report = validate_manifest(Manifest.from_dict(doc), data_root=shared_data)
    assert report.errors == []
    assert report.cases[0].stats["shape"] == [240, 240, 155]
    assert report.cases[0].stats["channels"] == 2
    doc["channels"] = ["MT"]
    doc["domains"] = [
        {"name": "sct", "cases": [{"id": "mt1", "images": [f"{mt}/mt1.nii.gz"], "label": f"{mt}/mt1_seg.nii.gz"}]}
    ]
    report = validate_manifest(Manifest.from_dict(doc), data_root=shared_data)
    assert report.errors == []  # 17 mm slices: unusual, legal
    assert ("spacing", "warning") in [(p.check, p.severity) for p in report.problems]


# ---- command line ----------------------------------------------------------------------------------------------


@pytest.mark.realdata
def test_cli_real_hippocampus_passes(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "v.json"
    assert main(["validate", str(shared_data / "Task04_Hippocampus"), "-o", str(out), "--quiet"]) == EXIT_OK
    stdout = capsys.readouterr().out
    assert "208 cases checked, 0 failed, 2 warnings" in stdout
    summary = json.loads(out.read_text())["summary"]
    assert (summary["cases"], summary["failed"], summary["errors"]) == (208, 0, 0)


@pytest.mark.realdata
def test_cli_corrupted_copy_fails_naming_the_case(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    copy = tmp_path / "Task04_Hippocampus"
    shutil.copytree(shared_data / "Task04_Hippocampus", copy)
    truncate(copy / "imagesTr" / "hippocampus_015.nii.gz", keep=0.8)
    out = tmp_path / "v.json"
    assert main(["validate", str(copy), "-o", str(out), "--quiet"]) == EXIT_PROBLEMS
    stdout = capsys.readouterr().out
    row = next(ln for ln in stdout.splitlines() if ln.startswith("hippocampus_015"))
    assert "imagesTr/hippocampus_015.nii.gz" in row and "voxels" in row and "truncated" in row
    assert "208 cases checked, 1 failed (1 error), 2 warnings" in stdout
    assert json.loads(out.read_text())["summary"]["failed_cases"] == ["hippocampus_015"]


def test_cli_generated_msd(make_msd: Callable, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = make_msd(n=3)
    assert main(["validate", str(root), "-o", str(tmp_path / "a.json"), "--quiet"]) == EXIT_OK
    image, _ = blob_case((16, 18, 20), 1)
    image[0, 0, 0] = np.nan
    write_nifti(root / "imagesTr" / "blob_001.nii.gz", image)
    assert main(["validate", str(root), "-o", str(tmp_path / "b.json"), "--quiet"]) == EXIT_PROBLEMS
    stdout = capsys.readouterr().out
    assert "blob_001  " in stdout and "imagesTr/blob_001.nii.gz" in stdout and "1 NaN" in stdout


def test_cli_header_only(make_msd: Callable, tmp_path: Path) -> None:
    root = make_msd(n=2)
    truncate(root / "imagesTr" / "blob_000.nii.gz")
    args = ["validate", str(root), "-o", str(tmp_path / "v.json"), "--quiet"]
    assert main(args) == EXIT_PROBLEMS
    assert main([*args, "--skip", "voxels,finite,intensity,labels"]) == EXIT_OK
    assert main([*args, "--skip", "nans"]) == EXIT_USAGE
    assert main([*args, "--skip", "exists"]) == EXIT_USAGE


@pytest.mark.parametrize("text", ["{not json", json.dumps({"name": "x", "labels": {"0": "bg"}})])
def test_cli_malformed_dataset_json(make_msd: Callable, text: str, capsys: pytest.CaptureFixture) -> None:
    root = make_msd(n=1)
    (root / "dataset.json").write_text(text)
    assert main(["validate", str(root), "-o", "", "--quiet"]) == EXIT_DATA
    assert "dataset.json" in capsys.readouterr().err


def test_cli_never_overwrites_an_input(make_msd: Callable, capsys: pytest.CaptureFixture) -> None:
    root = make_msd(n=1)
    for target in (root / "dataset.json", root / "labelsTr" / "blob_000.nii.gz"):
        before = target.read_bytes()
        assert main(["validate", str(root), "-o", str(target), "--quiet"]) == EXIT_USAGE
        assert target.read_bytes() == before
        assert "input files" in capsys.readouterr().err


def test_cli_default_output_in_current_folder(
    make_msd: Callable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_msd(n=1)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["validate", str(root), "--quiet"]) == EXIT_OK
    assert json.loads((work / "validation.json").read_text())["summary"]["cases"] == 1
