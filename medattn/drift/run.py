"""``medattn drift`` as a library call: does a target set of volumes differ from the reference the model knows,
and what does it cost?

:func:`drift_report` is what ``medattn drift`` calls (:mod:`medattn.commands.drift`, which also maps the outcome to
exit codes): it checks the output first, then runs :func:`run_drift` and writes the JSON report with its plots.
:func:`run_drift` is the same without the files: it reads both sets (:mod:`medattn.drift.inputs`), extracts their
features in one pass per volume (:mod:`medattn.drift.extract`) and applies the decision rule
(:mod:`medattn.drift.analysis`, which states it).

Every volume passes the input gate first (:mod:`medattn.data.gate`: the checks of ``medattn validate``, and its
channels matched to the model's by name); a refused volume is named in the report with its reason and left out.
"""

from __future__ import annotations

import time
from pathlib import Path

from medattn.drift.analysis import MIN_REFERENCE, MIN_TARGET, DriftReport, TooFewVolumesGivenError, analyse
from medattn.drift.extract import extract_features
from medattn.drift.inputs import check_channels, dataset_items
from medattn.drift.options import DriftOptions
from medattn.drift.plots import write_plots


def run_drift(
    model_path: str | Path,
    reference: str,
    target: str,
    *,
    data_root: str | None = None,
    options: DriftOptions | None = None,
    device: str = "cpu",
    progress: bool = False,
    reference_split: str | None = None,
    target_split: str | None = None,
) -> DriftReport:
    """Extract features from both sets with the model and analyse them (see the module docstring).

    Args:
        model_path: the model file (``model.pt`` of ``medattn train``).
        reference, target: each an image file, a folder of image files or a dataset (:func:`dataset_items`).
        data_root: overrides the manifests' roots.
        options: see :class:`~medattn.drift.options.DriftOptions`.
        device: where the network runs (``"cpu"``, ``"cuda"``...).
        progress: show progress bars.
        reference_split, target_split: only the cases of this manifest split.

    Raises:
        TooFewVolumesGivenError: fewer volumes given than the tests need (before any is read).
        TooFewVolumesError: fewer readable volumes than the tests need.
        DataError: the model file, a split, channels that do not match the model's, or nothing to read.
        ManifestError: a dataset that cannot be understood.
    """
    from medattn.models.model_file import load_model

    options = options or DriftOptions()
    t0 = time.perf_counter()
    loaded = load_model(model_path, device=device)
    nch = loaded.plan.num_channels
    ref_items = dataset_items(reference, data_root, nch, reference_split)
    tgt_items = dataset_items(target, data_root, nch, target_split)
    check_channels(loaded.plan, ref_items, reference)
    check_channels(loaded.plan, tgt_items, target)
    if len(ref_items) < MIN_REFERENCE or len(tgt_items) < MIN_TARGET:  # before minutes of feature extraction
        raise TooFewVolumesGivenError(
            f"need at least {MIN_REFERENCE} reference and {MIN_TARGET} target volumes, given {len(ref_items)} and"
            f" {len(tgt_items)}"
        )
    ref_f, ref_fail = extract_features(loaded, ref_items, overlap=options.overlap, device=device, progress=progress)
    tgt_f, tgt_fail = extract_features(loaded, tgt_items, overlap=options.overlap, device=device, progress=progress)
    failures = [{**f, "set": "reference"} for f in ref_fail] + [{**f, "set": "target"} for f in tgt_fail]
    report = analyse(ref_f, tgt_f, options, failures)
    report.seconds = time.perf_counter() - t0
    return report


def drift_report(
    model_path: str | Path,
    reference: str,
    target: str,
    out: str | Path,
    *,
    data_root: str | None = None,
    options: DriftOptions | None = None,
    device: str = "cpu",
    progress: bool = False,
    reference_split: str | None = None,
    target_split: str | None = None,
) -> DriftReport:
    """:func:`run_drift`, written to ``out`` (JSON) with its PNG plots beside it (``report.plots`` names them) and
    the target volumes in labelling order, ``<stem>_ranking.csv`` and ``<stem>_ranking.json`` beside it
    (:mod:`medattn.drift.ranking`; ``report.ranking_files`` names them, the report lists the first five).

    ``out`` and the ranking files are checked before the model or any volume is read: never a file of either
    dataset, the model or a dataset description, never in an image or label folder, and writable.

    Raises:
        TooFewVolumesError: fewer readable volumes than the tests need (nothing is written).
        ConfigError: an output that would touch an input or cannot be written.
        DataError, ManifestError: see :func:`run_drift`.
    """
    from medattn.data.guard import InputGuard, prepare_output_file
    from medattn.drift.ranking import ranking_paths, write_ranking
    from medattn.infer.inputs import input_files
    from medattn.jsonio import write_json

    out = Path(out)
    guard = InputGuard.of(other_files=[model_path])  # before the model or any volume is read
    for spec in (reference, target):
        files, dataset = input_files(spec, data_root=data_root)
        guard = guard | InputGuard.of(files, dataset=dataset)
    ranking_csv, ranking_json = ranking_paths(out)
    for path, what in ((out, "-o"), (ranking_csv, "the ranking beside -o,"), (ranking_json, "the ranking beside -o,")):
        guard.check_file(path, what)
        prepare_output_file(path, what)
    report = run_drift(
        model_path,
        reference,
        target,
        data_root=data_root,
        options=options,
        device=device,
        progress=progress,
        reference_split=reference_split,
        target_split=target_split,
    )
    report.plots = write_plots(report, out.parent if str(out.parent) else Path("."), out.name.rsplit(".", 1)[0])
    report.ranking_files = write_ranking(
        report.ranking, ranking_csv, ranking_json, threshold=report.threshold, fpr=report.options.fpr
    )
    write_json(out, report.to_dict(), non_finite="null")  # strict JSON: a value not defined (a blank scan's) is null
    return report
