"""One case of ``medattn evaluate``: its prediction checked against its label's grid and scored, as a
:class:`CaseRow`.

The prediction stands in the image's place at the input gate (both files must open, be 3D, finite and share one
grid); then it must have the label's shape, an affine within :data:`AFFINE_TOLERANCE_MM` of the label's and only
declared label values. A problem with the files fails the row with its reason; it never raises.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medattn.errors import DataError
from medattn.evaluate.metrics import ClassScores, segmentation_scores

log = logging.getLogger(__name__)

#: Largest difference (mm) between a prediction's affine and its label's for them to count as the same grid.
AFFINE_TOLERANCE_MM = 1e-3


@dataclass
class CaseRow:
    """One case's outcome: scores per label value, or the failure."""

    case: str
    prediction: str
    label: str
    status: str = "ok"
    reason: str | None = None
    file: str | None = None
    spacing: list[float] | None = None
    scores: dict[int, ClassScores] = field(default_factory=dict)


def evaluate_case(
    case: str,
    pred_path: Path,
    label_path: Path,
    labels: Mapping[int, str],
    tolerance: float | Mapping[int, float],
    declared: Mapping[int, str] | None = None,
    postprocess: Any = None,
) -> CaseRow:
    """Check (the input gate), read, check the grid, score. A problem with the files fails the row (never raises).

    ``declared``: every label value the dataset declares (background included); the label map must hold only
    those, and so must the prediction. Default: ``labels`` and background. ``postprocess``: a
    :class:`~medattn.infer.postprocess.Rule` applied to the prediction before scoring.
    """
    from medattn.data.gate import check_image_case, raise_if_refused
    from medattn.data.io import read_volume, spacing_from_affine

    declared = dict(declared) if declared is not None else {0: "background", **labels}
    row = CaseRow(case=case, prediction=str(pred_path), label=str(label_path))
    try:
        # the prediction stands in the image's place: both must open, be 3D, finite and share one grid
        raise_if_refused(check_image_case(case, [pred_path], ["prediction"], label=label_path, labels=declared))
        gt, gt_hdr = read_volume(label_path, dtype=None)
        pred, pred_hdr = read_volume(pred_path, dtype=None)
        # (X, Y, Z, 1): one 3D map, as a label of that shape is read (the gate has checked it holds one volume)
        gt, pred = (a[..., 0] if a.ndim == 4 and a.shape[3] == 1 else a for a in (gt, pred))
        if pred.ndim != 3 or pred.shape != gt.shape:
            raise DataError(f"prediction shape {pred.shape} differs from the label's {gt.shape}", pred_path, case)
        diff = float(np.abs(np.asarray(pred_hdr.affine) - np.asarray(gt_hdr.affine)).max())
        if diff > AFFINE_TOLERANCE_MM:
            raise DataError(
                f"prediction affine differs from the label's by {diff:.4g} mm (prediction "
                f"{np.round(pred_hdr.affine, 3).tolist()}, label {np.round(gt_hdr.affine, 3).tolist()})",
                pred_path,
                case,
            )
        if pred.dtype.kind == "f":  # rounding a probability map or an interpolated mask would score made-up labels
            frac = pred != np.round(pred)
            if frac.any():
                values = np.unique(pred[frac])
                shown = ", ".join(f"{v:g}" for v in values[:5]) + (", ..." if len(values) > 5 else "")
                raise DataError(
                    f"prediction holds non-integer values ({int(frac.sum())} voxels, e.g. {shown}); a predicted "
                    "mask holds integer class values (a probability map, or a mask resampled with linear "
                    "interpolation?)",
                    pred_path,
                    case,
                )
        odd = sorted(set(np.unique(_as_int(pred)).tolist()) - set(declared))
        if odd:
            raise DataError(
                f"prediction holds label value(s) {odd[:10]} that the dataset does not declare ({sorted(declared)})",
                pred_path,
                case,
            )
        spacing = [float(s) for s in spacing_from_affine(gt_hdr.affine)]
        row.spacing = [round(s, 6) for s in spacing]
        pred = _as_int(pred)
        if postprocess is not None:  # a postprocessing rule (medattn.infer.postprocess), as predict would apply it
            from medattn.infer.postprocess import apply_rule

            pred = apply_rule(pred, postprocess, spacing)
        row.scores = segmentation_scores(pred, _as_int(gt), list(labels), spacing, tolerance)
    except DataError as e:
        row.status, row.reason, row.file = "failed", e.problem, e.path or str(pred_path)
        log.warning("case %s failed: %s: %s", case, row.file, row.reason)
    return row


def _as_int(arr: np.ndarray) -> np.ndarray:
    if np.issubdtype(arr.dtype, np.integer):
        return arr
    return np.rint(arr).astype(np.int64)
