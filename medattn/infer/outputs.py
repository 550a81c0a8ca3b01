"""What ``medattn predict`` writes: masks and probability maps in the input's grid, and the summary JSON.

Masks hold the label values as stored on disk (class index k -> the plan's k-th sorted label value), in the
smallest unsigned dtype that fits, with the input's affine and (for NIfTI) a copy of its header. Probability maps
are float32 (NIfTI has no float16) under ``OUTPUT/probabilities/``: one 4D file per case with the classes last,
or one file per class named ``<case>_<label value>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medattn.data.io import IMAGE_SUFFIXES, write_volume
from medattn.errors import DataError
from medattn.infer.inputs import InputCase
from medattn.jsonio import write_json

SUMMARY_NAME = "predictions.json"
PROBABILITY_DIR = "probabilities"
OUTPUT_FORMATS = ("nii.gz", "nii", "nrrd", "mha", "input", "dicom-seg")
PROBABILITY_LAYOUTS = ("4d", "per-class")
#: Largest allowed distance (mm) between the inverted prediction's affine and the input's: a guard against an
#: inverse transform that did not restore the input grid.
AFFINE_TOLERANCE_MM = 1e-3


def label_lookup(plan: Any) -> np.ndarray:
    """Class index k -> label value on disk (the plan's sorted label values), in the smallest fitting dtype."""
    values = sorted(int(v) for v in plan.labels)
    lo, hi = min(values), max(values)
    dtype: Any = np.uint8 if lo >= 0 and hi <= 255 else np.uint16 if lo >= 0 and hi <= 65535 else np.int32
    return np.asarray(values, dtype=dtype)


def output_path(case: InputCase, out: Path, output_format: str) -> Path:
    """``OUTPUT/<case><suffix>``, the suffix from ``output_format`` (``"input"``: the input's own)."""
    return out / f"{case.case_id}{output_suffix(case, output_format)}"


def output_suffix(case: InputCase, output_format: str) -> str:
    """``.nii.gz`` etc. for ``output_format``; ``"input"``: the first input file's suffix (Analyze -> NIfTI)."""
    if output_format == "dicom-seg":
        return ".dcm"
    if output_format != "input":
        return "." + output_format
    name = case.images[0].name.lower()
    for s in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.endswith(s):
            return ".nii.gz" if s in (".hdr", ".img") else s  # Analyze pairs: write NIfTI instead
    return ".nii.gz"


def write_mask(
    back: Any,
    lut: np.ndarray,
    header: Any,
    case: InputCase,
    out: Path,
    output_format: str,
    protected: Sequence[Path],
    seg_writer: Any = None,
    postprocess: Any = None,
) -> Path:
    """Map inverted class indices ``back`` (1, X, Y, Z) to label values, apply the ``postprocess`` rule
    (:class:`~medattn.infer.postprocess.Rule`, in the input's geometry: volumes in its voxel size) and write
    ``OUTPUT/<case><suffix>`` (``dicom-seg``: a DICOM Segmentation of the case's series by ``seg_writer``,
    :class:`~medattn.infer.dicom_seg.SegWriter`)."""
    check_grid(back, tuple(header.spatial_shape), np.asarray(header.affine, dtype=float), case)
    index_dtype = torch.uint8 if len(lut) <= 256 else torch.int32  # 1 byte per voxel, not int64's 8
    classes = torch.as_tensor(back[0]).round().to(index_dtype).numpy()
    mask = lut[classes]
    del classes
    if postprocess is not None:
        from medattn.infer.postprocess import apply_rule

        spacing = np.linalg.norm(np.asarray(header.affine, dtype=float)[:3, :3], axis=0)
        mask = apply_rule(mask, postprocess, spacing)
    path = output_path(case, out, output_format)
    if output_format == "dicom-seg":
        return seg_writer.write(mask, case.images[0], path, protected)
    return write_volume(mask, header.affine, path, dtype=mask.dtype, like=case.images[0], protected=protected)


def check_grid(back: Any, spatial: tuple[int, ...], affine: np.ndarray, case: InputCase) -> None:
    """Raise a DataError unless ``back`` (C, X, Y, Z) lies on the input grid (``spatial`` shape, ``affine``)."""
    shape = tuple(int(s) for s in back.shape[1:])
    if shape != spatial:
        raise DataError(f"inverse transform gave shape {shape}, the input has {spatial}", case.images[0], case.case_id)
    got = np.asarray(getattr(back, "affine", affine), dtype=float)
    if not np.abs(got - affine).max() <= AFFINE_TOLERANCE_MM:  # written so that a NaN affine fails too
        raise DataError(
            f"inverse transform gave affine {got.round(4).tolist()}, the input has {affine.round(4).tolist()}",
            case.images[0],
            case.case_id,
        )


def write_probabilities(
    probs: torch.Tensor,
    data: dict[str, Any],
    transform: Any,
    case: InputCase,
    header: Any,
    out: Path,
    layout: str,
    output_format: str,
    protected: Sequence[Path],
    lut: np.ndarray,
) -> list[str]:
    """Invert softmax probabilities (K, X', Y', Z') on the preprocessed grid with interpolation and write them."""
    from medattn.data.transforms import invert_to_input

    back = invert_to_input(probs.float().cpu(), data, transform, nearest=False)
    arr = np.asarray(back, dtype=np.float32)  # (K, X, Y, Z)
    del back
    outside = arr.sum(0) == 0  # voxels a foreground crop left out: background for sure
    arr[0][outside] = 1.0
    like = case.images[0]
    if layout == "4d":
        path = probability_paths(case, out, lut, output_format)[0]
        write_volume(np.moveaxis(arr, 0, -1), header.affine, path, dtype=np.float32, like=like, protected=protected)
        return [str(path)]
    paths = []
    for k, path in enumerate(probability_paths(case, out, lut, output_format)[1:]):
        write_volume(arr[k], header.affine, path, dtype=np.float32, like=like, protected=protected)
        paths.append(str(path))
    return paths


def write_uncertainty(
    maps: dict[str, torch.Tensor],
    data: dict[str, Any],
    transform: Any,
    case: InputCase,
    header: Any,
    out: Path,
    protected: Sequence[Path],
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Invert the uncertainty maps ((1, X', Y', Z') each, :mod:`medattn.infer.uncertainty`) to the input grid with
    interpolation and write them as NIfTI under ``OUTPUT/uncertainty/``; returns the maps on the input grid and the
    paths written."""
    from medattn.data.transforms import invert_to_input

    paths = uncertainty_paths(case, out)
    on_input: dict[str, np.ndarray] = {}
    for name, value in maps.items():
        back = np.asarray(invert_to_input(value.float(), data, transform, nearest=False), dtype=np.float32)[0]
        on_input[name] = np.clip(back, 0.0, 1.0)
        write_volume(
            on_input[name], header.affine, paths[name], dtype=np.float32, like=case.images[0], protected=protected
        )
    return on_input, [str(paths[name]) for name in maps]


def uncertainty_paths(case: InputCase, out: Path) -> dict[str, Path]:
    """``OUTPUT/uncertainty/<case>_entropy.nii.gz`` and ``..._disagreement.nii.gz`` (NIfTI whatever ``--format``)."""
    from medattn.infer.uncertainty import UNCERTAINTY_DIR

    folder = out / UNCERTAINTY_DIR
    return {name: folder / f"{case.case_id}_{name}.nii.gz" for name in ("entropy", "disagreement")}


def probability_paths(case: InputCase, out: Path, lut: np.ndarray, output_format: str) -> list[Path]:
    """Where a case's probability maps go: the 4D file first, then one file per class (``<case>_<label value>``)."""
    folder = out / PROBABILITY_DIR
    suffix = ".nii.gz" if output_format == "dicom-seg" else output_suffix(case, output_format)  # maps: NIfTI
    return [folder / f"{case.case_id}{suffix}"] + [folder / f"{case.case_id}_{int(v)}{suffix}" for v in lut]


def write_summary(path: Path, doc: dict[str, Any], protected: Sequence[Path]) -> Path:
    """Write the summary JSON atomically (non-finite numbers as null), never over an input."""
    return write_json(path, doc, non_finite="null", protected=protected)
