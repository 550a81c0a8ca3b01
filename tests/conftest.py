"""Shared fixtures: the real data in ../shared/data (skipped when absent) and small generated datasets."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Tests run medattn's commands in this process (main(["train", ...])): keep glibc's default allocator for the whole
# session, so that what one test frees goes back before the next whatever the order, and no test depends on which
# ran first (retain_freed_memory decides once per process). tests/test_runtime.py checks it in fresh processes.
os.environ.setdefault("MEDATTN_RETAIN_MEMORY", "0")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the real datasets; the test is skipped with a reason when it is not there (as in a user's clone)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (it lives beside the checkout on the dev machines)")
    return SHARED_DATA


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine)
    nib.save(img, str(path))
    return path


def blob_case(shape: tuple[int, int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An image with two touching foreground blobs (labels 1 and 2) brighter than a noisy background."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    c = np.array(shape) / 2 + rng.uniform(-2, 2, 3)
    r = min(shape) / 4
    d = np.sqrt((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2)
    label = np.zeros(shape, np.uint8)
    label[d < r] = 1
    label[(d < r) & (xx > c[2])] = 2
    image = (rng.normal(0, 1, shape) + 3 * (label == 1) + 5 * (label == 2) + 1).astype(np.float32)
    return image, label


def split_manifest(root: Path, test: list[str]) -> Path:
    """Write ``root/split_manifest.json``: the one-domain dataset at ``root`` with ``test`` as its test split and
    the other cases as its train split; returns the path."""
    import dataclasses

    from medattn.data.importers import load_dataset

    m = load_dataset(str(root))
    d = m.domains[0]
    train = tuple(c.id for c in d.cases if c.id not in test)
    d = dataclasses.replace(d, splits={"train": train, "test": tuple(test)})
    return dataclasses.replace(m, domains=(d,)).save(root / "split_manifest.json")


@pytest.fixture
def make_msd(tmp_path: Path) -> Callable[..., Path]:
    """Factory for a small MSD-layout dataset: ``make_msd(n=4, shape=(16, 18, 20))`` returns its folder."""

    def _make(n: int = 4, shape: tuple[int, int, int] = (16, 18, 20), name: str = "Task99_Blobs") -> Path:
        root = tmp_path / name
        training = []
        for i in range(n):
            image, label = blob_case(shape, seed=i)
            write_nifti(root / "imagesTr" / f"blob_{i:03d}.nii.gz", image)
            write_nifti(root / "labelsTr" / f"blob_{i:03d}.nii.gz", label)
            training.append({"image": f"./imagesTr/blob_{i:03d}.nii.gz", "label": f"./labelsTr/blob_{i:03d}.nii.gz"})
        doc = {
            "name": "Blobs",
            "modality": {"0": "MRI"},
            "labels": {"0": "background", "1": "core", "2": "rim"},
            "numTraining": n,
            "training": training,
            "test": [],
        }
        (root / "dataset.json").write_text(json.dumps(doc, indent=2))
        return root

    return _make


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder nobody can create files in: chmod for a normal user; root ignores modes, so ``chattr +i``."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("running as root and chattr +i is not available here: cannot make a read-only folder")
    try:
        yield folder
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=False)


def write_dicom_series(
    folder: Path,
    volume: np.ndarray,
    affine: np.ndarray,
    *,
    series_uid: str | None = None,
    manufacturer: str = "Acme",
    extra: dict | None = None,
    positions: list | None = None,
    names: str = "slice{:03d}.dcm",
) -> list[Path]:
    """Write ``volume`` (X, Y, Z, int16) as a classic MR DICOM series, one file per k slice, with the voxel-to-RAS
    ``affine`` (an independent construction with pydicom: what medattn reads back must equal ``volume`` and
    ``affine``). ``positions`` overrides each slice's ImagePositionPatient (LPS); ``extra`` sets further header
    attributes on every slice (a callable value is called with the slice index)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, dtype=float)
    col_spacing, row_spacing = np.linalg.norm(lps[:3, 0]), np.linalg.norm(lps[:3, 1])
    row_dir, col_dir = lps[:3, 0] / col_spacing, lps[:3, 1] / row_spacing
    series_uid = series_uid or generate_uid()
    study, frame = generate_uid(), generate_uid()
    paths = []
    for k in range(volume.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series_uid, frame
        ds.Modality, ds.Manufacturer, ds.PatientName, ds.PatientID = "MR", manufacturer, "Test^Phantom", "T0"
        ds.SeriesNumber, ds.InstanceNumber, ds.SeriesDescription = 3, k + 1, "t1 test"
        pos = lps[:3, 3] + k * lps[:3, 2] if positions is None else np.asarray(positions[k], dtype=float)
        ds.ImagePositionPatient = [f"{v:.6f}" for v in pos]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row_dir, *col_dir)]
        ds.PixelSpacing = [f"{row_spacing:.6f}", f"{col_spacing:.6f}"]
        ds.SliceThickness = f"{np.linalg.norm(lps[:3, 2]):.6f}"
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        for key, value in (extra or {}).items():
            setattr(ds, key, value(k) if callable(value) else value)
        ds.PixelData = np.ascontiguousarray(volume[:, :, k].T.astype("<i2")).tobytes()
        path = folder / names.format(k)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
