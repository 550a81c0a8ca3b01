"""The results of ``medattn evaluate`` as files and text: the metrics JSON document, its CSV, the printed table.

:func:`build_report` makes the document (format ``medattn-metrics``, version 1: options, per-class summaries and
``mean``, per-case rows, failures, and the ``conventions`` block that states the rule for absent classes);
:func:`write_reports` writes it and :func:`to_csv`'s table atomically; :func:`format_summary` is what the command
prints. An infinite HD95 is ``inf`` (a string in JSON, which has no infinity), an undefined value ``null``/empty.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from medattn.dice import defined_mean
from medattn.evaluate.case import CaseRow
from medattn.evaluate.metrics import METRICS, summarise
from medattn.evaluate.options import EvaluateOptions
from medattn.text import format_table

MEAN_KEY = "mean"


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
