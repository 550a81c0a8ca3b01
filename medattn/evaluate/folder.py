"""``medattn evaluate PRED DATA -o metrics.json``: score a folder of predicted masks against a dataset's labels.

Predictions are matched to the dataset's cases by case id, the prediction's file name without its image suffix
(``PRED/<case>.nii.gz``, as ``medattn predict`` writes them). Each matched prediction must lie on its label's
grid (same shape, affine within :data:`~medattn.evaluate.case.AFFINE_TOLERANCE_MM`); a mismatch or an unreadable
file fails that case with a named error while the others are still scored, and the exit code is then 1. Dataset
cases without a prediction are listed as ``missing`` (and warned about); prediction files without a case as
``unmatched``.

Outputs: the JSON (``-o``: options, per-class summaries, per-case rows, failures) and a CSV beside it with one
row per case and class. In both, an infinite HD95 is written as ``inf`` (a string in JSON, which has no
infinity) and an undefined value as empty/``null``. The summary has an entry per foreground class and ``mean``,
the per-case average over the foreground classes defined in that case (infinite if any class is).

A class absent from both the prediction and the label of a case has every metric undefined (the rule of
:mod:`medattn.dice`, nnU-Net's): it is ``null`` in the case row, left out of the summaries and counted in their
``n_empty``; the JSON's ``conventions`` block states the rule.

Each case is scored by :mod:`medattn.evaluate.case`; the outputs are made by :mod:`medattn.evaluate.results`, with
the options of :mod:`medattn.evaluate.options`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medattn.data.guard import prepare_output_file
from medattn.data.io import IMAGE_SUFFIXES, has_suffix, strip_suffix
from medattn.data.manifest import Manifest
from medattn.errors import ConfigError, DataError, ManifestError
from medattn.evaluate.case import evaluate_case
from medattn.evaluate.metrics import DEFAULT_NSD_TOLERANCE_MM
from medattn.evaluate.options import EvaluateOptions
from medattn.evaluate.results import build_report, write_reports

log = logging.getLogger(__name__)


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
    declared = {0: "background", **labels}
    rule = None
    if options.postprocessing:
        from medattn.infer.postprocess import load_rule

        rule = load_rule(options.postprocessing, declared)
    rows, post_rows = [], []
    for case in _bar(matched, progress):
        args = (case, preds[case], Path(by_case[case]["label"]), labels, tol, declared)
        rows.append(evaluate_case(*args))
        if rule is not None:
            post_rows.append(evaluate_case(*args, postprocess=rule))
    doc = build_report(rows, labels, options, folder, missing, unmatched)
    if rule is not None:  # the same predictions with the rule applied, beside the raw scores
        post = build_report(post_rows, labels, options, folder, missing, unmatched)
        doc["postprocessed"] = {"rule": str(options.postprocessing), "description": rule.describe(), **post}
    return doc


def _prediction_files(folder: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and not p.name.startswith(".") and has_suffix(p, IMAGE_SUFFIXES):
            case = strip_suffix(p.name)
            if case in out:
                raise DataError(f"two prediction files for case {case!r}: {out[case].name} and {p.name}", folder)
            out[case] = p
    return out


def _bar(items: Sequence[str], enabled: bool) -> Any:
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc="evaluate", unit="case")
