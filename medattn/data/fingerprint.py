"""Dataset fingerprint: what the planner needs to know about every case, per domain and overall.

For each case: spacing and shape in RAS axis order (the order the transforms work in after ``Orientationd``),
the fraction of the volume inside the bounding box of the body (:func:`medattn.data.body.union_body_mask` over the
channels: the voxels that differ from the dominant border value, the rule the transforms normalise and crop with),
label voxel counts, and a random sample of foreground intensities per channel. Per domain and overall: spacing and
shape percentiles and foreground intensity statistics (mean, std, median, 0.5th and 99.5th percentiles), following
nnU-Net's dataset fingerprint.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from medattn.data.body import union_body_mask
from medattn.data.io import read_header, read_volume
from medattn.data.manifest import Case, Domain, Manifest
from medattn.errors import DataError
from medattn.typing import Spacing, Triple

log = logging.getLogger(__name__)

#: Foreground voxels sampled per case and channel for intensity statistics (nnU-Net samples 10,000).
SAMPLES_PER_CASE = 10_000


@dataclass
class CaseFingerprint:
    """Facts about one case (shape and spacing in (X, Y, Z) order on the RAS grid)."""

    case: str
    domain: str
    shape: Triple
    spacing: Spacing
    axcodes: str
    body_bbox_fraction: float
    label_counts: dict[int, int]
    fg_samples: list[np.ndarray] = field(repr=False)  # one 1D float32 array per channel


def ras_permutation(affine: np.ndarray) -> tuple[list[int], str]:
    """Array-axis order that lists the axes closest to R, A, S, and the file's orientation code (e.g. "LPS")."""
    ornt = nib.orientations.io_orientation(affine)
    perm = [int(np.where(ornt[:, 0] == k)[0][0]) for k in range(3)]
    return perm, "".join(nib.orientations.aff2axcodes(affine))


def native_spacing(path: str | Path) -> Spacing:
    """The voxel size of an image (a file of any format medattn reads, or a DICOM series folder) along the RAS
    axes, from its header alone (the array is not read)."""
    header = read_header(path)
    perm, _ = ras_permutation(header.affine)
    zooms = [float(z) for z in header.spacing[:3]]
    return (zooms[perm[0]], zooms[perm[1]], zooms[perm[2]])


def fingerprint_case(
    manifest: Manifest, domain: Domain, case: Case, data_root: str | Path | None, rng: np.random.Generator
) -> CaseFingerprint:
    """Read one case and summarise it. Raises DataError naming the case and file."""
    channels: list[np.ndarray] = []
    header = None
    for rel in case.images:
        path = manifest.resolve(rel, data_root)
        try:
            arr, hdr = read_volume(path)
        except DataError as e:
            raise DataError(e.problem, e.path, case.id) from e
        if arr.ndim == 4:
            channels.extend(arr[..., c] for c in range(arr.shape[-1]))
        else:
            channels.append(arr)
        header = header or hdr
    assert header is not None  # case.images is never empty (checked by the manifest schema)
    if case.label is None:
        raise DataError("case has no label; planning needs labelled cases", None, case.id)
    lab_path = manifest.resolve(case.label, data_root)
    try:
        label, _ = read_volume(lab_path, dtype=None)
    except DataError as e:
        raise DataError(e.problem, e.path, case.id) from e
    label = np.rint(np.asarray(label)).astype(np.int64)
    if label.ndim == 4 and label.shape[3] == 1:  # (X, Y, Z, 1): one 3D label map, as the loaders read it
        label = label[..., 0]
    if label.ndim != 3:
        raise DataError(f"label has shape {label.shape}: expected one 3D label map", lab_path, case.id)
    spatial = channels[0].shape
    if label.shape[:3] != spatial[:3]:
        raise DataError(f"label shape {label.shape} differs from image shape {spatial}", lab_path, case.id)
    perm, axcodes = ras_permutation(header.affine)
    spacing = np.asarray(header.spacing, dtype=float)
    fg = label > 0
    samples = []
    for ch in channels:
        vals = ch[fg] if fg.any() else ch.ravel()
        vals = vals[np.isfinite(vals)]
        if vals.size > SAMPLES_PER_CASE:
            vals = rng.choice(vals, SAMPLES_PER_CASE, replace=False)
        samples.append(vals.astype(np.float32))
    frac = body_bbox_fraction(channels)
    values, counts = np.unique(label, return_counts=True)
    return CaseFingerprint(
        case=case.id,
        domain=domain.name,
        shape=tuple(int(spatial[p]) for p in perm),  # type: ignore[arg-type]
        spacing=tuple(float(spacing[p]) for p in perm),  # type: ignore[arg-type]
        axcodes=axcodes,
        body_bbox_fraction=frac,
        label_counts={int(v): int(c) for v, c in zip(values, counts, strict=True)},
        fg_samples=samples,
    )


def body_bbox_fraction(channels: Sequence[np.ndarray]) -> float:
    """Fraction of the volume inside the bounding box of the union of the channels' bodies (each (X, Y, Z)).

    1.0 when the body is the whole volume (no dominant border value); the planner crops below 0.75.
    """
    body = union_body_mask(channels).numpy()
    idx = np.nonzero(body)
    bbox = np.prod([int(i.max()) - int(i.min()) + 1 for i in idx])
    return float(bbox) / float(body.size)


def intensity_stats(samples: np.ndarray) -> dict[str, float]:
    """Foreground intensity statistics as nnU-Net records them."""
    if samples.size == 0:
        return {k: float("nan") for k in ("mean", "std", "median", "min", "max", "p00_5", "p99_5")}
    return {
        "mean": float(np.mean(samples)),
        "std": float(np.std(samples)),
        "median": float(np.median(samples)),
        "min": float(np.min(samples)),
        "max": float(np.max(samples)),
        "p00_5": float(np.percentile(samples, 0.5)),
        "p99_5": float(np.percentile(samples, 99.5)),
    }


def summarise(cases: Sequence[CaseFingerprint], channel_names: Sequence[str]) -> dict[str, Any]:
    """Aggregate case fingerprints (one domain, or all) into a JSON-serialisable summary."""
    spacings = np.array([c.spacing for c in cases], dtype=float)
    shapes = np.array([c.shape for c in cases], dtype=float)
    label_totals: dict[int, int] = {}
    for c in cases:
        for k, v in c.label_counts.items():
            label_totals[k] = label_totals.get(k, 0) + v
    total = max(sum(label_totals.values()), 1)
    intensity = {}
    for i, name in enumerate(channel_names):
        allv = np.concatenate([c.fg_samples[i] for c in cases if i < len(c.fg_samples)] or [np.zeros(0)])
        intensity[name] = intensity_stats(allv)
    return {
        "num_cases": len(cases),
        "spacing": {
            "median": np.median(spacings, 0).tolist(),
            "p10": np.percentile(spacings, 10, axis=0).tolist(),
            "p90": np.percentile(spacings, 90, axis=0).tolist(),
            "min": spacings.min(0).tolist(),
            "max": spacings.max(0).tolist(),
        },
        "shape": {
            "median": np.median(shapes, 0).tolist(),
            "min": shapes.min(0).astype(int).tolist(),
            "max": shapes.max(0).astype(int).tolist(),
        },
        "orientations": sorted({c.axcodes for c in cases}),
        "body_bbox_fraction_median": float(np.median([c.body_bbox_fraction for c in cases])),
        "label_fractions": {str(k): v / total for k, v in sorted(label_totals.items())},
        "foreground_intensity": intensity,
    }
