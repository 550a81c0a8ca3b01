"""``medattn predict --format dicom-seg``: a DICOM Segmentation that references its source series and, read back by
highdicom and by dcmqi (the converter 3D Slicer uses), equals the NIfTI mask of the same run voxel for voxel."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medattn.cli import main
from tests.conftest import blob_case, write_dicom_series, write_nifti
from tests.infer.conftest import small_plan

SHAPE = (21, 17, 13)
AFFINE = np.array([[-0.9, 0.0, 0.0, 30.0], [0.0, -0.9, 0.0, 40.0], [0.0, 0.0, 2.0, -10.0], [0, 0, 0, 1]])


@pytest.fixture
def predicted(tmp_path: Path, model_file) -> dict:  # type: ignore[no-untyped-def]
    """One series predicted twice by the same model: as DICOM-SEG and as NIfTI."""
    image, _ = blob_case(SHAPE, seed=4)
    series = tmp_path / "in" / "t1"
    write_dicom_series(series, np.round(image * 400).astype(np.int16), AFFINE)  # de-identified: no birth date etc.
    model = model_file(small_plan(labels={0: "background", 1: "left hippocampus", 3: "right hippocampus"}))
    assert main(["predict", str(model), str(series), str(tmp_path / "seg"), "--format", "dicom-seg", "--quiet"]) == 0
    assert main(["predict", str(model), str(series), str(tmp_path / "nii"), "--quiet"]) == 0
    mask = np.asarray(nib.load(str(tmp_path / "nii" / "t1.nii.gz")).dataobj)
    assert set(np.unique(mask)) == {0, 1, 3}  # both structures present, so both segments are checked
    return {"series": series, "seg": tmp_path / "seg" / "t1.dcm", "mask": mask, "model": model, "tmp": tmp_path}


def test_the_seg_read_back_by_highdicom_equals_the_nifti_mask(predicted: dict) -> None:
    from medattn.infer.dicom_seg import read_dicom_seg

    np.testing.assert_array_equal(read_dicom_seg(predicted["seg"], predicted["series"]), predicted["mask"])


def test_the_seg_references_its_series_names_its_segments_and_records_the_model(predicted: dict) -> None:
    seg = pydicom.dcmread(predicted["seg"])
    sources = {f.name: pydicom.dcmread(f) for f in sorted(predicted["series"].iterdir())}
    first = next(iter(sources.values()))
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and seg.SegmentationType == "BINARY"
    assert (seg.StudyInstanceUID, seg.FrameOfReferenceUID, seg.PatientID) == (
        first.StudyInstanceUID,
        first.FrameOfReferenceUID,
        first.PatientID,
    )
    (ref_series,) = seg.ReferencedSeriesSequence
    assert ref_series.SeriesInstanceUID == first.SeriesInstanceUID
    referenced = {i.ReferencedSOPInstanceUID for i in ref_series.ReferencedInstanceSequence}
    assert referenced == {ds.SOPInstanceUID for ds in sources.values()}
    per_frame = {
        f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        for f in seg.PerFrameFunctionalGroupsSequence
    }
    assert per_frame <= referenced
    assert [(s.SegmentLabel, s.TrackingID) for s in seg.SegmentSequence] == [
        ("left hippocampus", "label 1"),
        ("right hippocampus", "label 3"),
    ]
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "medattn"
    sha = hashlib.sha256(predicted["model"].read_bytes()).hexdigest()
    assert f"model_sha256={sha}" in str(algorithm.AlgorithmParameters)


def _segimage2itkimage() -> str:
    exe = shutil.which("segimage2itkimage") or str(Path(sys.executable).with_name("segimage2itkimage"))
    if not Path(exe).is_file():
        pytest.skip("dcmqi's segimage2itkimage is not installed (pip install dcmqi; it is in the dev extra)")
    return exe


def test_dcmqi_converts_the_seg_back_to_the_nifti_mask(predicted: dict) -> None:
    """dcmqi, independently of highdicom: one image per segment, each on the series' grid, equal to the NIfTI
    mask's voxels of that label."""
    out = predicted["tmp"] / "dcmqi"
    out.mkdir()
    cmd = [_segimage2itkimage(), "--inputDICOM", str(predicted["seg"]), "--outputDirectory", str(out)]
    subprocess.run([*cmd, "--outputType", "nifti"], check=True, capture_output=True)
    meta = json.loads((out / "meta.json").read_text())
    labels = {s[0]["labelID"]: s[0]["SegmentLabel"] for s in meta["segmentAttributes"]}
    assert labels == {1: "left hippocampus", 2: "right hippocampus"}
    for number, value in ((1, 1), (2, 3)):
        img = nib.load(str(out / f"{number}.nii.gz"))
        np.testing.assert_allclose(img.affine, AFFINE, atol=1e-4)
        np.testing.assert_array_equal(np.asarray(img.dataobj) > 0, predicted["mask"] == value)


def test_dicom_seg_of_an_input_that_is_not_a_series_is_refused_before_inference(
    tmp_path: Path, model_file, capsys
) -> None:
    image, _ = blob_case(SHAPE, seed=1)
    src = write_nifti(tmp_path / "in" / "scan.nii.gz", image)
    code = main(["predict", str(model_file()), str(src), str(tmp_path / "out"), "--format", "dicom-seg", "--quiet"])
    assert code == 2
    assert "--format dicom-seg needs DICOM series inputs" in capsys.readouterr().err
    assert not list((tmp_path / "out").glob("*.dcm"))


def test_dicom_seg_of_a_real_ct_series_matches_its_nifti_mask(tmp_path: Path, shared_data: Path, model_file) -> None:
    """The GE CT of ../shared/data/DICOM (three slices, feet first): the SEG read back equals the NIfTI mask."""
    from medattn.infer.dicom_seg import read_dicom_seg

    series = shared_data / "DICOM" / "ge_ct_3slice"
    if not series.is_dir():
        pytest.skip(f"no DICOM data at {series}")
    model = model_file(small_plan(spacing=(4.0, 4.0, 4.0), modality="CT"))
    assert main(["predict", str(model), str(series), str(tmp_path / "seg"), "--format", "dicom-seg", "--quiet"]) == 0
    assert main(["predict", str(model), str(series), str(tmp_path / "nii"), "--quiet"]) == 0
    mask = np.asarray(nib.load(str(tmp_path / "nii" / "ge_ct_3slice.nii.gz")).dataobj)
    np.testing.assert_array_equal(read_dicom_seg(tmp_path / "seg" / "ge_ct_3slice.dcm", series), mask)


def test_an_empty_mask_writes_a_seg_that_reads_back_empty_without_a_warning(tmp_path: Path, caplog) -> None:
    """Nothing found: the SEG keeps every frame, reads back all background, and highdicom's warning (which
    ``--quiet`` could not hush) is not raised."""
    from medattn.infer.dicom_seg import SegWriter, read_dicom_seg

    image, _ = blob_case(SHAPE, seed=5)
    series = tmp_path / "t1"
    write_dicom_series(series, np.round(image * 400).astype(np.int16), AFFINE)
    writer = SegWriter({0: "background", 1: "core"}, "model.pt", "0" * 64, "UNet")
    with caplog.at_level("WARNING"):
        path = writer.write(np.zeros(SHAPE, np.uint8), series, tmp_path / "empty.dcm")
    assert "empty image" not in caplog.text
    np.testing.assert_array_equal(read_dicom_seg(path, series), np.zeros(SHAPE, np.uint8))
