"""``medattn evaluate PRED DATA -o metrics.json``: score predicted masks against a dataset's labels.

Predictions are matched to the dataset's cases by case id, the prediction's file name without its image suffix
(``PRED/<case>.nii.gz``, as ``medattn predict`` writes them). Each matched prediction must lie on its label's
grid (same shape, affine within :data:`AFFINE_TOLERANCE_MM`); a mismatch or an unreadable file fails that case
with a named error while the others are still scored, and the exit code is then 1. Dataset cases without a
prediction are listed as ``missing`` (and warned about); prediction files without a case as ``unmatched``.

Outputs: the JSON (``-o``: options, per-class summaries, per-case rows, failures) and a CSV beside it with one
row per case and class. In both, an infinite HD95 is written as ``inf`` (a string in JSON, which has no
infinity) and an undefined value as empty/``null``. The summary has an entry per foreground class and ``mean``,
the per-case average over the foreground classes defined in that case (infinite if any class is).

A class absent from both the prediction and the label of a case has every metric undefined (the rule of
:mod:`medattn.dice`, nnU-Net's): it is ``null`` in the case row, left out of the summaries and counted in their
``n_empty``; the JSON's ``conventions`` block states the rule.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medattn.data.guard import prepare_output_file
from medattn.data.io import IMAGE_SUFFIXES, has_suffix, strip_suffix
from medattn.data.manifest import Manifest
from medattn.dice import defined_mean
from medattn.errors import ConfigError, DataError, ManifestError
from medattn.evaluate.metrics import DEFAULT_NSD_TOLERANCE_MM, METRICS, ClassScores, segmentation_scores, summarise
from medattn.text import format_table

log = logging.getLogger(__name__)

#: Largest difference (mm) between a prediction's affine and its label's for them to count as the same grid.
AFFINE_TOLERANCE_MM = 1e-3
MEAN_KEY = "mean"


@dataclass(frozen=True)
class EvaluateOptions:
    """How ``medattn evaluate`` scores; saved in the JSON.

    Attributes:
        nsd_tolerance: NSD tolerance in mm, one for every class or per label value.
        resamples: bootstrap resamples for the confidence intervals.
        confidence: level of the intervals.
        seed: bootstrap seed.
    """

    nsd_tolerance: float | Mapping[int, float] = DEFAULT_NSD_TOLERANCE_MM
    resamples: int = 1000
    confidence: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        if self.resamples < 0 or not 0 < self.confidence < 1:
            raise ConfigError("--bootstrap must be >= 0 and --confidence in (0, 1)")


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


# ---- the library calls ----------------------------------------------------------------------------------------


def evaluate_dataset(
    pred_dir: str | Path,
    manifest: Manifest,
    json_path: str | Path,
    csv_path: str | Path,
    options: EvaluateOptions | None = None,
    *,
    data: str | Path,
    data_root: str | Path | None = None,
    split: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Score the predictions in ``pred_dir`` against ``manifest``'s labelled cases; write the JSON and the CSV.

    Both outputs are checked before any volume is read: never one of the dataset's files, its description or a
    prediction, never in an image or label folder, and writable.

    Args:
        pred_dir: folder of predicted masks named ``<case>.nii.gz`` (as ``medattn predict`` writes them).
        manifest: the dataset; its labelled cases are the reference.
        json_path, csv_path: the report (see the module docstring) and the per-case-and-class CSV.
        options: see :class:`EvaluateOptions`.
        data: the dataset as the user named it (manifest, folder, ``:DOMAIN`` suffix allowed): named in errors,
            recorded in the report, and its description file is protected.
        data_root: overrides the manifest's data root.
        split: only the labelled cases of this split.
        progress: show a progress bar.

    Returns:
        The report document as written (``failed`` lists the cases that could not be scored).

    Raises:
        DataError: an unknown split, no labelled case, no prediction folder or no matching prediction.
        ConfigError: an output that would touch an input or cannot be written.
    """
    try:
        items = [d for d in manifest.split_datalist(split, data_root) if d.get("label")]
    except ManifestError as e:
        raise DataError(str(e), data) from None
    if not items:
        where = f"split {split!r} of the dataset" if split else "the dataset"
        raise DataError(f"{where} has no labelled cases to evaluate against", data)
    out, csv_out = Path(json_path), Path(csv_path)
    guard = _input_guard(manifest, data_root, data, Path(pred_dir))
    for path, what in ((out, "-o"), (csv_out, "--csv")):  # before any volume is read
        guard.check_file(path, what)
        prepare_output_file(path, what)
    labels = {int(k): str(v) for k, v in manifest.labels.items() if int(k) != 0}
    doc = evaluate_folder(pred_dir, items, labels, options, progress=progress)
    doc["data"] = str(data)
    write_reports(doc, out, csv_out, sorted(guard.files))
    return doc


def _input_guard(manifest: Manifest, data_root: str | Path | None, data: str | Path, pred_dir: Path) -> Any:
    """The dataset's images and labels (and their folders), its description, and the prediction files."""
    from medattn.data.guard import InputGuard

    preds = _prediction_files(pred_dir).values() if pred_dir.is_dir() else []
    return InputGuard.of_manifest(manifest, data_root, data, other_files=preds)


def parse_tolerance(value: Any) -> float | dict[int, float]:
    """``--nsd-tolerance``: ``2`` (every class) or ``1:1.5,2:3`` (label value: mm)."""
    if value is None or value == "":
        return DEFAULT_NSD_TOLERANCE_MM
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value)
    try:
        if ":" not in text:
            return float(text)
        out = {}
        for part in text.split(","):
            k, _, v = part.partition(":")
            out[int(k)] = float(v)
        return out
    except ValueError:
        raise ConfigError(f"--nsd-tolerance: expected MM or VALUE:MM[,VALUE:MM...], got {value!r}") from None


def evaluate_folder(
    pred_dir: str | Path,
    items: Sequence[Mapping[str, Any]],
    labels: Mapping[int, str],
    options: EvaluateOptions | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Score the predictions in ``pred_dir`` against ``items`` (dicts with ``case_id`` and ``label`` paths).

    Args:
        pred_dir: folder of predicted label maps named ``<case_id><image suffix>``.
        items: the dataset's labelled cases (``Manifest.datalist``).
        labels: foreground label value -> name (values as stored on disk).
        options: see :class:`EvaluateOptions`.
        progress: show a progress bar.

    Returns:
        The report document (see the module docstring), not yet serialised.

    Raises:
        DataError: ``pred_dir`` is missing or no prediction matches a case.
    """
    options = options or EvaluateOptions()
    folder = Path(pred_dir)
    if not folder.is_dir():
        raise DataError("prediction folder does not exist", folder)
    preds = _prediction_files(folder)
    tol = options.nsd_tolerance
    if isinstance(tol, Mapping):
        unknown = sorted(set(tol) - set(labels))
        if unknown:
            raise ConfigError(f"--nsd-tolerance names label value(s) {unknown} not in the dataset {sorted(labels)}")
        tol = {v: float(tol.get(v, DEFAULT_NSD_TOLERANCE_MM)) for v in labels}
    by_case = {str(d["case_id"]): d for d in items}
    matched = [c for c in by_case if c in preds]
    missing = sorted(c for c in by_case if c not in preds)
    unmatched = sorted(str(p) for c, p in preds.items() if c not in by_case)
    if not matched:
        raise DataError(
            f"no prediction file matches a case of the dataset (cases look like {sorted(by_case)[:3]}, "
            f"files like {sorted(preds)[:3]})",
            folder,
        )
    if missing:
        log.warning("%d case(s) have no prediction in %s: %s", len(missing), folder, missing[:5])
    rows = []
    declared = {0: "background", **labels}
    for case in _bar(matched, progress):
        rows.append(evaluate_case(case, preds[case], Path(by_case[case]["label"]), labels, tol, declared))
    return build_report(rows, labels, options, folder, missing, unmatched)


def evaluate_case(
    case: str,
    pred_path: Path,
    label_path: Path,
    labels: Mapping[int, str],
    tolerance: float | Mapping[int, float],
    declared: Mapping[int, str] | None = None,
) -> CaseRow:
    """Check (the input gate), read, check the grid, score. A problem with the files fails the row (never raises).

    ``declared``: every label value the dataset declares (background included); the label map must hold only
    those, and so must the prediction. Default: ``labels`` and background.
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
        odd = sorted(set(np.unique(_as_int(pred)).tolist()) - set(declared))
        if odd:
            raise DataError(
                f"prediction holds label value(s) {odd[:10]} that the dataset does not declare ({sorted(declared)})",
                pred_path,
                case,
            )
        spacing = [float(s) for s in spacing_from_affine(gt_hdr.affine)]
        row.spacing = [round(s, 6) for s in spacing]
        row.scores = segmentation_scores(_as_int(pred), _as_int(gt), list(labels), spacing, tolerance)
    except DataError as e:
        row.status, row.reason, row.file = "failed", e.problem, e.path or str(pred_path)
        log.warning("case %s failed: %s: %s", case, row.file, row.reason)
    return row


def _as_int(arr: np.ndarray) -> np.ndarray:
    if np.issubdtype(arr.dtype, np.integer):
        return arr
    return np.rint(arr).astype(np.int64)


def _prediction_files(folder: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and not p.name.startswith(".") and has_suffix(p, IMAGE_SUFFIXES):
            case = strip_suffix(p.name)
            if case in out:
                raise DataError(f"two prediction files for case {case!r}: {out[case].name} and {p.name}", folder)
            out[case] = p
    return out


# ---- the report ------------------------------------------------------------------------------------------------


def build_report(
    rows: Sequence[CaseRow],
    labels: Mapping[int, str],
    options: EvaluateOptions,
    pred_dir: Path,
    missing: Sequence[str] = (),
    unmatched: Sequence[str] = (),
) -> dict[str, Any]:
    """The JSON document: summary per class and ``mean``, per-case rows, failures."""
    ok = [r for r in rows if r.status == "ok"]
    summary: dict[str, Any] = {}
    for value, name in labels.items():
        per_metric = {}
        for m in METRICS:
            vals = [getattr(r.scores[value], m) for r in ok]
            per_metric[m] = asdict(summarise(vals, options.resamples, options.seed, options.confidence))
        summary[str(value)] = {"name": name, **per_metric}
    mean_metric = {}
    for m in METRICS:
        vals = [_case_mean([getattr(s, m) for s in r.scores.values()]) for r in ok]
        mean_metric[m] = asdict(summarise(vals, options.resamples, options.seed, options.confidence))
    summary[MEAN_KEY] = {"name": "mean over foreground classes", **mean_metric}
    tol = options.nsd_tolerance
    return {
        "format": "medattn-metrics",
        "version": 1,
        "predictions": str(pred_dir),
        "options": {**asdict(options), "nsd_tolerance": dict(tol) if isinstance(tol, Mapping) else tol},
        "conventions": {
            "both_empty": {"dice": None, "hd95": None, "nsd": None},
            "one_empty": {"dice": 0.0, "hd95": "inf", "nsd": 0.0},
            "rule": "a class absent from both prediction and reference is undefined (null) for every metric, "
            "as in nnU-Net; it is left out of the summaries and of the case mean, and counted in n_empty",
            "summaries": "mean/std/median/CI over finite values; n_infinite counts infinite HD95, n_empty "
            "undefined values",
        },
        "labels": {str(k): v for k, v in labels.items()},
        "num_cases": len(rows),
        "num_evaluated": len(ok),
        "summary": summary,
        "failed": [{"case": r.case, "file": r.file, "reason": r.reason} for r in rows if r.status != "ok"],
        "missing": list(missing),
        "unmatched": list(unmatched),
        "cases": [_row_doc(r, labels) for r in rows],
    }


def _case_mean(values: Sequence[float]) -> float:
    """Mean over a case's classes: ``inf`` if any is, else over the defined ones (NaN when none is)."""
    if any(math.isinf(v) for v in values):
        return math.inf
    return defined_mean(values)[0]


def _row_doc(r: CaseRow, labels: Mapping[int, str]) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "case": r.case,
        "status": r.status,
        "prediction": r.prediction,
        "label": r.label,
        "spacing": r.spacing,
    }
    if r.status != "ok":
        doc.update(reason=r.reason, file=r.file)
        return doc
    doc["classes"] = {str(v): {"name": labels[v], **asdict(s)} for v, s in r.scores.items()}
    return doc


def write_reports(doc: dict[str, Any], json_path: Path, csv_path: Path, protected: Sequence[Path] = ()) -> None:
    """Write the JSON document and the per-case-and-class CSV atomically (never over an input)."""
    from medattn.data.io import atomic_write_text
    from medattn.jsonio import write_json

    write_json(json_path, doc, non_finite="inf_string", protected=protected)
    atomic_write_text(csv_path, to_csv(doc), protected=protected)


def to_csv(doc: Mapping[str, Any]) -> str:
    """One row per evaluated case and class: case, label value, name, dice, hd95, nsd, tolerance, voxel counts."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    cols = ["case", "label", "name", "dice", "hd95", "nsd", "nsd_tolerance_mm", "gt_voxels", "pred_voxels"]
    w.writerow(cols)
    for row in doc["cases"]:
        for value, c in row.get("classes", {}).items():
            w.writerow(
                [row["case"], value, c["name"]]
                + [_csv_num(c[k]) for k in ("dice", "hd95", "nsd", "tolerance_mm")]
                + [c["gt_voxels"], c["pred_voxels"]]
            )
    return buf.getvalue()


def _csv_num(x: float) -> str:
    if math.isnan(x):
        return ""
    return "inf" if math.isinf(x) else repr(float(x))


def format_summary(doc: Mapping[str, Any]) -> str:
    """The table ``medattn evaluate`` prints: per class, Dice / HD95 / NSD mean ± std with the CI."""
    rows = []
    for key, s in doc["summary"].items():
        cells = [key, s["name"], str(s["dice"]["n"])]
        for m in METRICS:
            x = s[m]
            cell = f"{x['mean']:.3f} ± {x['std']:.3f} [{x['ci_low']:.3f}, {x['ci_high']:.3f}]"
            if m == "hd95" and x["n_infinite"]:
                cell += f" ({x['n_infinite']} inf)"
            if x.get("n_empty"):
                cell += f" ({x['n_empty']} empty)"
            cells.append(cell)
        rows.append(cells)
    conf = round(float(doc["options"]["confidence"]) * 100)
    header = ["label", "name", "n", f"Dice ({conf}% CI)", "HD95 mm", "NSD"]
    return format_table(header, rows)


def _bar(items: Sequence[str], enabled: bool) -> Any:
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc="evaluate", unit="case")
