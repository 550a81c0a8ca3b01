"""Writing a simulated multi-scanner dataset: the output folder, each case's files and its parameter record.

Per case, under ``OUT/<domain>/``: ``imagesTr/<case>.nii.gz`` (the image as the simulated scanner stores it:
dtype, NIfTI scl_slope, axis order, spacing; one file per channel ``<case>_0000.nii.gz``... for split channels),
``labelsTr/<case>.nii.gz`` (uint8 on the image's grid) and ``params/<case>.json`` (the drawn shift, replayable
with :func:`medattn.data.acquisition.apply_shift`, and its input). :func:`default_splits` gives the
train/val/test split of domains that bring none. Every file is written atomically and never over an input.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medattn.data.io import atomic_write_text, atomic_write_with, write_volume
from medattn.data.manifest import VAL_FRACTION, Case, Manifest
from medattn.data.scanners import ScannerProfile
from medattn.errors import ConfigError

TEST_FRACTION = 0.25


@dataclass(frozen=True)
class SynthResult:
    """What a synth run wrote: the manifest, its path and the cases that failed (id -> reason)."""

    manifest: Manifest
    path: Path
    failures: dict[str, str] = field(default_factory=dict)


def prepare_out(out: str | Path) -> Path:
    out = Path(out).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: output exists and is a file; give a new folder")
    if out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"{out}: output folder exists and is not empty; give a new folder (nothing was written)")
    from medattn.data.guard import prepare_output_dir

    return prepare_output_dir(out, "OUT")


def folder_name(name: str) -> str:
    """A domain name as a safe folder name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "domain"


def write_image(
    path: Path, stored: np.ndarray, affine: np.ndarray, encoding: dict[str, Any], protected: Sequence[str | Path]
) -> None:
    slope, inter = float(encoding["slope"]), float(encoding["inter"])
    if (slope, inter) == (1.0, 0.0) or not np.issubdtype(stored.dtype, np.integer):
        write_volume(stored, affine, path, protected=protected)
        return
    import nibabel as nib

    img = nib.Nifti1Image(stored, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_slope_inter(slope, inter)  # readers return stored * slope + inter
    atomic_write_with(path, lambda tmp: nib.save(img, str(tmp)), protected)


def write_case(
    out: Path,
    domain: str,
    case_id: str,
    stored: np.ndarray,
    label: np.ndarray | None,
    affine: np.ndarray,
    record: dict[str, Any],
    split_channels: bool,
    protected: Sequence[str | Path] = (),
) -> Case:
    enc = record["shift"]["encoding"]
    domain = folder_name(domain)
    images = []
    if split_channels and stored.ndim == 4:
        for c in range(stored.shape[3]):
            images.append(f"{domain}/imagesTr/{case_id}_{c:04d}.nii.gz")
            write_image(out / images[-1], np.ascontiguousarray(stored[..., c]), affine, enc, protected)
    else:
        images.append(f"{domain}/imagesTr/{case_id}.nii.gz")
        write_image(out / images[-1], stored, affine, enc, protected)
    label_rel = None
    if label is not None:
        label_rel = f"{domain}/labelsTr/{case_id}.nii.gz"
        write_volume(label, affine, out / label_rel, dtype=np.uint8, protected=protected)
    atomic_write_text(out / domain / "params" / f"{case_id}.json", json.dumps(record, indent=2) + "\n")
    return Case(id=case_id, images=tuple(images), label=label_rel, metadata=dict(record.get("metadata", {})))


def default_splits(ids: Sequence[str], test_fraction: float = TEST_FRACTION) -> dict[str, tuple[str, ...]]:
    """Fixed train/val/test split of ``ids``, in their order.

    The last ``round(test_fraction * n)`` cases (at least one when n >= 2) are the test set; of the cases before
    them, the last ``round(VAL_FRACTION * m)`` (:data:`medattn.data.manifest.VAL_FRACTION`; at least one when
    m >= 2) validate and the rest train. Validation thus never draws on the test set, and ``test`` is the same as
    a plain train/test split of the same ids. Example: 40 ids give 24 train, 6 val and 10 test.
    """
    n_test = 0 if len(ids) < 2 else max(1, round(test_fraction * len(ids)))
    m = len(ids) - n_test
    n_val = 0 if m < 2 else max(1, round(VAL_FRACTION * m))
    return {
        "train": tuple(ids[: m - n_val]),
        "val": tuple(ids[m - n_val : m]),
        "test": tuple(ids[m:]),
    }


def profile_doc(p: ScannerProfile) -> dict[str, Any]:
    return {"description": p.description, "metadata": dict(p.metadata), "ranges": p.ranges()}


def case_metadata(p: ScannerProfile) -> dict[str, Any]:
    return {**p.metadata, "simulated": True, "scanner_profile": p.name}


def domain_metadata(p: ScannerProfile) -> dict[str, Any]:
    return {**case_metadata(p), "description": p.description}
