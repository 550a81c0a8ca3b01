"""Which target cases to label first: the target volumes of a drift run, ordered for labelling.

Each target volume has two numbers from the one feature pass of ``medattn drift``:

* ``volume_score``: its Mahalanobis distance to the reference features (the volume-level score of the report), with
  ``flagged`` (above the threshold calibrated on held-out reference volumes for the report's false-positive rate)
  and ``reference_p``, the calibrated tail probability ``(1 + #{held-out reference scores >= score}) / (1 + n)``:
  how unusual the volume would be for the reference scanner;
* ``foreground_entropy``: the model's softmax entropy (nats) weighted by its foreground probability, pooled over
  the sliding windows (:meth:`~medattn.drift.features.FeatureCollector.volume_features`): how unsure the model is
  where it sees structure.

The ordering rule (:data:`RANKING_RULE`): flagged volumes first, since a volume outside the reference distribution
is where the model's training says least; within each group, by the mean of the two ranks (``score_rank`` and
``entropy_rank``, 1 = highest, ties averaged), so a volume high on both comes before one high on either; ties by
the higher score, then by case id. ``rank`` is 1..n in that order. A volume whose foreground entropy is undefined
(NaN) ranks last on entropy.

Case ids are those of the drift inputs: a manifest's case ids (what ``medattn adapt`` and its labelled subsets
name), or file names without extension for image files. :func:`write_ranking` writes the rows as CSV and JSON, each
atomically.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import rankdata

from medattn.drift.features import VolumeFeatures

#: The ordering rule, as written into the ranking JSON and the drift report.
RANKING_RULE = (
    "volumes with an input warning (a blank scan, say: labelling it teaches nothing) last; then flagged volumes "
    "(Mahalanobis score above the calibrated threshold) first; then by the mean of the score rank and the "
    "foreground-entropy rank (1 = highest, ties averaged); ties by the higher score, then the case id"
)
#: The foreground entropy's definition, as written into the ranking JSON.
ENTROPY_DEFINITION = (
    "softmax entropy in nats weighted by the foreground probability 1 - p_background, sum(w H) / sum(w) over the "
    "voxels of every sliding window (each window's own softmax; overlaps count once per window)"
)
#: Columns of the CSV, in order (the JSON rows hold the same keys).
COLUMNS = (
    "rank",
    "case_id",
    "domain",
    "source",
    "volume_score",
    "flagged",
    "reference_p",
    "foreground_entropy",
    "score_rank",
    "entropy_rank",
    "mean_rank",
    "input_warning",
)
RANKING_FORMAT = "medattn-drift-ranking"
#: Rows listed in the drift report and its text summary.
TOP = 5


def labelling_ranking(
    target: Sequence[VolumeFeatures], scores: ArrayLike, threshold: float, reference_scores: ArrayLike
) -> list[dict[str, Any]]:
    """The target volumes in labelling order (see the module docstring), one dict of :data:`COLUMNS` each.

    Args:
        target: the target volumes' features (``case_id``, ``domain``, ``source``, ``foreground_entropy``).
        scores: their Mahalanobis scores (n,), in the order of ``target``.
        threshold: the calibrated volume threshold (a score above it is flagged).
        reference_scores: the held-out reference volumes' scores the threshold was calibrated on.
    """
    s = np.asarray(scores, dtype=np.float64)
    if len(s) != len(target):
        raise ValueError(f"{len(target)} target volumes but {len(s)} scores")
    if not len(target):
        return []
    ent = np.array([f.foreground_entropy for f in target], dtype=np.float64)
    ref = np.asarray(reference_scores, dtype=np.float64)
    score_rank = rankdata(-np.nan_to_num(s, nan=-np.inf), method="average")
    entropy_rank = rankdata(-np.nan_to_num(ent, nan=-np.inf), method="average")
    mean_rank = (score_rank + entropy_rank) / 2
    flagged = s > threshold
    rows: list[dict[str, Any]] = [
        {
            "case_id": f.case_id,
            "domain": f.domain,
            "source": f.source,
            "volume_score": float(s[i]),
            "flagged": bool(flagged[i]),
            "reference_p": float((1 + np.sum(ref >= s[i])) / (1 + len(ref))),
            "foreground_entropy": float(ent[i]),
            "score_rank": float(score_rank[i]),
            "entropy_rank": float(entropy_rank[i]),
            "mean_rank": float(mean_rank[i]),
            "input_warning": "; ".join(f.extra.get("input_warnings", [])) or None,
        }
        for i, f in enumerate(target)
    ]
    rows.sort(
        key=lambda r: (bool(r["input_warning"]), not r["flagged"], r["mean_rank"], -r["volume_score"], r["case_id"])
    )
    return [{"rank": k, **r} for k, r in enumerate(rows, start=1)]


def ranking_paths(report_path: str | Path) -> tuple[Path, Path]:
    """``(CSV, JSON)`` beside a drift report: ``<stem>_ranking.csv`` and ``<stem>_ranking.json`` (as its plots are
    ``<stem>_pca.png``), so two reports in one folder keep their rankings apart."""
    path = Path(report_path)
    stem = path.name.rsplit(".", 1)[0]
    return path.parent / f"{stem}_ranking.csv", path.parent / f"{stem}_ranking.json"


def ranking_csv(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as CSV text with the :data:`COLUMNS` header; NaN and None are empty cells, floats in full."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for r in rows:
        writer.writerow([_cell(r.get(k)) for k in COLUMNS])
    return buf.getvalue()


def write_ranking(
    rows: Sequence[dict[str, Any]],
    csv_path: str | Path,
    json_path: str | Path,
    *,
    threshold: float,
    fpr: float,
    protected: Iterable[str | Path] = (),
) -> list[str]:
    """Write the ranking as CSV and as JSON (``format``, the rule, the entropy's definition, the threshold and the
    rows, NaN as null), each atomically, never over a ``protected`` file; returns the two paths."""
    from medattn.data.io import atomic_write_text
    from medattn.jsonio import write_json

    protected = list(protected)
    doc = {
        "format": RANKING_FORMAT,
        "rule": RANKING_RULE,
        "foreground_entropy": ENTROPY_DEFINITION,
        "threshold": threshold,
        "fpr": fpr,
        "n": len(rows),
        "cases": list(rows),
    }
    atomic_write_text(csv_path, ranking_csv(rows), protected=protected)
    write_json(json_path, doc, non_finite="null", protected=protected)
    return [str(csv_path), str(json_path)]


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)
