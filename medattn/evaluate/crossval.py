"""``medattn crossval RUN DATA``: out-of-fold predictions of a k-fold run, their Dice, and the postprocessing rule
learned on them.

``RUN`` holds one training run per fold (``RUN/fold_k``, as ``medattn train DATA --fold k --out RUN/fold_k``
writes it); each fold's ``split.json`` names its validation cases. Every fold's model predicts its own validation
cases, so each case is predicted by the one model that never trained on it (the out-of-fold predictions, nnU-Net's
``validation`` folders). Those masks and the dataset's labels choose the postprocessing
(:func:`medattn.infer.postprocess.determine_rule`), saved as ``RUN/postprocessing.json``, which
``medattn predict RUN ...`` then applies. The test split never takes part: a fold whose validation cases include a
test case is refused.

A single run with a validation split (``--fold fixed``: the manifest's ``val`` cases) is a one-fold
cross-validation: its model predicts its val cases and they choose the rule. That is what a dataset too small for
k folds can afford; those cases also picked the run's checkpoint, so their Dice is a little optimistic, but the
test split still takes no part.

Outputs: ``RUN/crossval/<case>.nii.gz`` (the out-of-fold masks, raw), ``RUN/crossval/predictions.json``,
``RUN/crossval/summary.json`` (per fold and over all folds: mean Dice per class, raw and postprocessed, and the
rule's evidence) and ``RUN/postprocessing.json``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from medattn.data.manifest import Manifest
from medattn.errors import ConfigError, DataError

log = logging.getLogger(__name__)

CROSSVAL_DIR = "crossval"


def fold_runs(run: Path) -> list[Path]:
    """The fold run folders of ``run`` (``fold_*`` holding ``model.pt`` and ``split.json``), in fold order; or
    ``[run]`` for a single run (its own ``model.pt`` and ``split.json``).

    Raises:
        DataError: one fold folder only, or a fold without its model or split.
    """
    from medattn.models.ensemble import model_paths

    folds = [p.parent for p in model_paths([run])]
    if len(folds) < 2 and folds[0] != run:
        raise DataError("cross-validation needs two folds or more (RUN/fold_*/model.pt), or a single run", run)
    for f in folds:
        if not (f / "split.json").is_file():
            raise DataError("the fold has no split.json (its validation cases are unknown)", f)
    return folds


def run_crossval(
    run: str | Path,
    manifest: Manifest,
    *,
    data: str | Path,
    data_root: str | Path | None = None,
    options: Any = None,
) -> dict[str, Any]:
    """Predict every fold's validation cases with that fold's model, score them, learn the postprocessing.

    Returns:
        The summary document (also written to ``RUN/crossval/summary.json``).

    Raises:
        DataError: a fold's validation case that is in a test split, missing from the dataset, or validated by
            two folds; no labelled out-of-fold case.
    """
    from medattn.data.digests import case_digests, changed_cases, file_digest
    from medattn.data.guard import InputGuard, prepare_output_dir
    from medattn.data.io import read_volume, spacing_from_affine
    from medattn.infer.inputs import InputCase
    from medattn.infer.outputs import SUMMARY_NAME, write_summary
    from medattn.infer.postprocess import RULE_NAME, Case, apply_rule, determine_rule, save_rule
    from medattn.infer.predict import PredictOptions, make_predictor, predict_cases
    from medattn.models.model_file import load_model
    from medattn.runtime import Rank, resolve_device

    run = Path(run)
    options = options or PredictOptions(progress=False)
    if options.output_format != "nii.gz" or options.save_probabilities or options.save_uncertainty:
        raise ConfigError("crossval writes NIfTI masks only (no --format, probabilities or uncertainty)")
    folds = fold_runs(run)
    items = {str(d["case_id"]): d for d in manifest.datalist(data_root=data_root)}
    test_ids = {i for d in manifest.domains for i in d.held_out_ids()}
    assignment: dict[str, str] = {}
    per_fold: list[list[str]] = []
    for f in folds:
        saved = json.loads((f / "split.json").read_text())
        val = [str(i) for i in saved.get("val", [])]
        changed = changed_cases(saved.get("file_digests") or {}, case_digests(manifest, val, data_root))
        if changed:  # another dataset with the same case ids, or files edited since the fold trained
            raise DataError(
                f"the files of {len(changed)} validation case(s) differ from those the fold trained with (e.g. "
                f"{changed[:5]}): out-of-fold scores of other scans would choose the postprocessing; give the "
                "dataset the folds were trained on",
                f / "split.json",
            )
        for i in val:
            if i in test_ids:
                raise DataError(
                    f"validation case {i!r} is in the dataset's test split; a test case must not pick "
                    "a postprocessing rule",
                    f / "split.json",
                )
            if i not in items or not items[i].get("label"):
                raise DataError(f"validation case {i!r} is not a labelled case of {data}", f / "split.json")
            if i in assignment:
                raise DataError(
                    f"validation case {i!r} is validated by {assignment[i]} too: not a k-fold split", f / "split.json"
                )
            assignment[i] = f.name
        per_fold.append(sorted(val))
    if not assignment:
        raise DataError("no fold has validation cases (trained with --fold all?)", run)

    out = run / CROSSVAL_DIR
    channels = tuple(c.name for c in manifest.channels)
    guard = InputGuard.of_manifest(manifest, data_root, data, other_files=[f / "model.pt" for f in folds])
    guard.check_dir(out, "RUN/crossval")
    guard.check_file(run / RULE_NAME, "RUN/postprocessing.json")
    prepare_output_dir(out, "RUN/crossval")
    protected = sorted(guard.files)
    # an earlier crossval's records go first: a run killed half-way must not leave new masks beside an old
    # "complete" predictions.json, summary and rule (they are written again once every fold is through)
    keep = {Path(p).resolve() for p in protected}
    for old in (out / SUMMARY_NAME, out / "summary.json", run / RULE_NAME, *out.glob("*.nii.gz")):
        if old.is_file() and old.resolve() not in keep:
            old.unlink()
    device = resolve_device(options.device)
    results: list[dict[str, Any]] = []
    oof: list[Case] = []
    fold_of_case: dict[str, str] = {}
    for f, ids in zip(folds, per_fold):
        if not ids:
            continue
        loaded = load_model(f / "model.pt", device)
        plan = loaded.plan
        cases = [
            InputCase(
                i, tuple(Path(p) for p in _as_list(items[i]["image"])), channels=channels, label=Path(items[i]["label"])
            )
            for i in ids
        ]
        predictor = make_predictor(loaded.model, plan, options, device)
        for r in predict_cases(cases, plan, predictor, out, options, protected, Rank()):
            results.append(asdict(r))
            if r.status != "ok" or r.output is None:
                log.warning("fold %s, case %s: %s", f.name, r.case, r.reason)
                continue
            pred, _ = read_volume(r.output, dtype=None)
            ref, ref_hdr = read_volume(items[r.case]["label"], dtype=None)
            sx, sy, sz = (float(s) for s in spacing_from_affine(ref_hdr.affine))
            spacing = (sx, sy, sz)
            oof.append(Case(r.case, np.rint(pred).astype(np.int32), np.rint(ref).astype(np.int32), spacing))
            fold_of_case[r.case] = f.name
    if not oof:
        raise DataError("no out-of-fold prediction could be made (every case failed)", run)
    labels = {int(k): str(v) for k, v in manifest.labels.items() if int(k) != 0}
    rule = determine_rule(oof, labels)
    # which models chose it: predict refuses the rule for a fold retrained since
    rule.evidence["models"] = {f.name: file_digest(f / "model.pt") for f in folds}
    save_rule(rule, run / RULE_NAME, protected)

    post = [Case(c.case_id, apply_rule(c.prediction, rule, c.spacing), c.reference, c.spacing) for c in oof]
    summary = {
        "format": "medattn-crossval",
        "run": str(run),
        "data": str(data),
        "folds": [f.name for f in folds],
        "cases": len(oof),
        "failed": [{k: r[k] for k in ("case", "file", "reason")} for r in results if r["status"] != "ok"],
        "dice": {
            "all": {"raw": _mean_dice(oof, labels), "postprocessed": _mean_dice(post, labels)},
            **{
                f.name: {
                    "raw": _mean_dice([c for c in oof if fold_of_case[c.case_id] == f.name], labels),
                    "postprocessed": _mean_dice([c for c in post if fold_of_case[c.case_id] == f.name], labels),
                }
                for f in folds
                if any(fold_of_case.get(i) == f.name for i in fold_of_case)
            },
        },
        "postprocessing": {"rule": str(run / RULE_NAME), "description": rule.describe(), **rule.to_dict()},
    }
    write_summary(out / SUMMARY_NAME, {"format": "medattn-predictions", "cases": results, "complete": True}, protected)
    write_summary(out / "summary.json", summary, protected)
    return summary


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _mean_dice(cases: Sequence[Any], labels: dict[int, str]) -> dict[str, Any]:
    """Per class (label value) the mean Dice over ``cases`` (absent from both: left out), and their mean."""
    from medattn.dice import defined_mean, dice_per_class

    values = sorted(labels)
    per_case = np.array([dice_per_class(c.prediction, c.reference, values) for c in cases]).reshape(-1, len(values))
    out: dict[str, Any] = {}
    for j, v in enumerate(values):
        mean, empty = defined_mean(per_case[:, j])
        out[str(v)] = {"name": labels[v], "dice": _round(mean), "n": int(per_case.shape[0] - empty)}
    means = [defined_mean(row)[0] for row in per_case]
    out["mean"] = {"dice": _round(defined_mean(means)[0]), "n": int(np.isfinite(means).sum())}
    return out


def _round(v: float) -> float | None:
    return round(float(v), 4) if np.isfinite(v) else None


def format_crossval(summary: dict[str, Any]) -> str:
    """The table ``medattn crossval`` prints: per fold and overall, mean Dice raw and postprocessed."""
    from medattn.text import format_table

    keys = [k for k in summary["dice"]["all"]["raw"] if k != "mean"]
    header = [
        "folds",
        "n",
        *[f"Dice {summary['dice']['all']['raw'][k]['name']}" for k in keys],
        "mean",
        "postproc. mean",
    ]
    rows = []
    for name, d in summary["dice"].items():
        raw, post = d["raw"], d["postprocessed"]
        cells = [name, str(raw["mean"]["n"]), *[_cell(raw[k]["dice"]) for k in keys], _cell(raw["mean"]["dice"])]
        rows.append([*cells, _cell(post["mean"]["dice"])])
    return format_table(header, rows) + f"\npostprocessing: {summary['postprocessing']['description']}"


def _cell(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"
