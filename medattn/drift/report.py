"""``medattn drift``: does a target set of volumes differ from the reference the model knows, and what does it cost?

Decision rule: drift when either set-level test (MMD on whitened features, or KS on the reference's principal
components) on the model features has a p-value below ``alpha / 2`` (Bonferroni over the two tests, so the
false-alarm rate stays at most ``alpha``). Volume-level: each target volume's Mahalanobis score against a threshold
calibrated on held-out reference volumes for the chosen false-positive rate. Image-statistics tests and metadata
changes are reported beside the decision, not in it. Where labels exist, the mean Dice of reference and target
volumes and the drop between them.

Every volume passes the input gate first (:mod:`medattn.data.gate`: the checks of ``medattn validate``, and its
channels matched to the model's by name); a refused volume is named in the report with its reason and left out.

:func:`drift_report` is what ``medattn drift`` calls (:mod:`medattn.commands.drift`, which also maps the outcome
to exit codes); :func:`run_drift` is the same without the files, :func:`analyse` the tests on features already
extracted.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medattn.drift.features import (
    FeatureCollector,
    VolumeFeatures,
    class_dice,
    count_undefined_dice,
    header_metadata,
    image_statistics,
    mean_dice,
    prediction_statistics,
)
from medattn.drift.stats import MahalanobisScorer, TestResult, auroc, ks_pca_test, mmd_test, pca_fit, standardise
from medattn.errors import DataError, ManifestError

log = logging.getLogger(__name__)

#: The decision rule, as written into every report.
DECISION_RULE = "drift when MMD (whitened) or KS-on-PCA p-value < alpha/2 on the model features"


@dataclass(frozen=True)
class DriftOptions:
    """Knobs of a drift run (saved in the report)."""

    alpha: float = 0.05
    fpr: float = 0.05
    features: tuple[str, ...] = ("model", "prediction")
    permutations: int = 1000
    pca_components: int = 8
    overlap: float = 0.25
    seed: int = 0


class TooFewVolumesError(DataError):
    """Fewer readable volumes than the set-level tests need (at least 4 reference and 2 target volumes)."""


@dataclass
class DriftReport:
    """The outcome of a drift run; ``to_dict`` is what ``drift.json`` holds."""

    drift: bool
    options: DriftOptions
    tests: dict[str, TestResult]
    image_tests: dict[str, TestResult]
    threshold: float
    reference: list[VolumeFeatures]
    target: list[VolumeFeatures]
    target_scores: np.ndarray
    reference_scores: np.ndarray
    failures: list[dict[str, str]]
    metadata_changes: dict[str, Any]
    dice: dict[str, Any]
    seconds: float = 0.0
    plots: list[str] = field(default_factory=list)

    @property
    def flagged(self) -> list[str]:
        return [f.case_id for f, s in zip(self.target, self.target_scores, strict=True) if s > self.threshold]

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {
            "format": "medattn-drift",
            "drift": self.drift,
            "decision_rule": DECISION_RULE,
            "options": asdict(self.options),
            "tests": {k: v.to_dict() for k, v in self.tests.items()},
            "image_tests": {k: v.to_dict() for k, v in self.image_tests.items()},
            "volume_level": {
                "threshold": self.threshold,
                "fpr": self.options.fpr,
                "flagged": self.flagged,
                "flagged_fraction": float(np.mean(self.target_scores > self.threshold)) if self.target else 0.0,
                "auroc_reference_vs_target": auroc(self.reference_scores, self.target_scores),
                "target_scores": {f.case_id: float(s) for f, s in zip(self.target, self.target_scores, strict=True)},
            },
            "metadata_changes": self.metadata_changes,
            "dice": self.dice,
            "failures": self.failures,
            "n_reference": len(self.reference),
            "n_target": len(self.target),
            "seconds": round(self.seconds, 2),
            "plots": self.plots,
            "reference_volumes": [f.to_dict() for f in self.reference],
            "target_volumes": [f.to_dict() for f in self.target],
        }


def dataset_items(
    spec: str, data_root: str | None, num_channels: int, split: str | None = None
) -> list[dict[str, Any]]:
    """MONAI-style items (image paths, optional label, case id, domain, metadata) from a dataset or image folder.

    ``split`` keeps only the cases the manifest's split of that name lists (in every selected domain).
    """
    from medattn.data.importers import load_dataset

    try:
        manifest = load_dataset(spec)
    except ManifestError:
        from medattn.infer.inputs import collect_inputs

        path = Path(spec)
        if not (path.is_file() or path.is_dir()):
            raise
        if split is not None:
            raise DataError(f"--*-split {split!r} needs a dataset with splits, not a folder of images", spec) from None
        cases = collect_inputs(spec, num_channels=num_channels, data_root=data_root)
        return [
            {"image": [str(p) for p in c.images], "case_id": c.case_id, "domain": c.domain, "metadata": {}}
            for c in cases
        ]
    try:
        items = manifest.split_datalist(split, data_root)
    except ManifestError as e:
        raise DataError(str(e), spec) from None
    names = tuple(ch.name for ch in manifest.channels)
    return [{**d, "channels": names} for d in items]


def check_channels(plan: Any, items: Sequence[Mapping[str, Any]], spec: str) -> None:
    """Refuse a dataset whose channels are named otherwise, or ordered otherwise, than the model's.

    Raises:
        DataError: naming ``spec`` and both channel lists.
    """
    from medattn.data.gate import channel_mismatch

    named = {tuple(d["channels"]) for d in items if d.get("channels") is not None}
    for names in named:
        why = channel_mismatch([ch.name for ch in plan.channels], names)
        if why:
            raise DataError(why, spec)


def extract_features(
    loaded: Any,
    items: Sequence[Mapping[str, Any]],
    *,
    overlap: float = 0.25,
    device: str = "cpu",
    progress: bool = False,
) -> tuple[list[VolumeFeatures], list[dict[str, str]]]:
    """Run sliding-window inference once per item, collecting :class:`VolumeFeatures`; failures are named.

    Args:
        loaded: a :class:`~medattn.models.model_file.LoadedModel`.
        items: dicts with ``image`` (paths), optional ``label``, ``case_id``, ``domain``, ``metadata``.
    """
    from tqdm.auto import tqdm

    from medattn.data.gate import check_input_case
    from medattn.data.io import read_volume
    from medattn.data.transforms import apply, eval_transforms, inference_transforms
    from medattn.infer.sliding import sliding_window_predict

    plan = loaded.plan
    values = sorted(int(v) for v in plan.labels)
    names = {i: plan.labels[v] for i, v in enumerate(values)}
    collector = FeatureCollector(loaded.model)
    with_label, without_label = eval_transforms(plan), inference_transforms(plan)
    feats: list[VolumeFeatures] = []
    failures: list[dict[str, str]] = []
    channel_names = [ch.name for ch in plan.channels]
    for item in tqdm(items, desc="drift features", unit="vol", disable=not progress):
        images = list(item["image"]) if isinstance(item["image"], (list, tuple)) else [item["image"]]
        case_id = str(item.get("case_id", Path(images[0]).name))
        try:
            label = item.get("label")
            check_input_case(
                case_id,
                images,
                channel_names,
                input_channels=item.get("channels"),
                domain=item.get("domain"),
                label=label,
                labels=plan.labels if label else None,
            )
            src = {"image": images[0] if len(images) == 1 else images}
            has_label = bool(item.get("label"))
            if has_label:
                src["label"] = item["label"]
            data = apply(with_label if has_label else without_label, src)
            raw, _ = read_volume(images[0])
            raw0 = raw[..., 0] if raw.ndim == 4 else raw
            collector.reset()
            result = sliding_window_predict(
                data["image"], collector, plan.patch_size, overlap=overlap, sw_device=device, device="cpu"
            )
            vol = collector.volume_features()
            labels = result.labels.cpu().numpy()
            dice = None
            if has_label:
                dice = class_dice(labels, np.rint(np.asarray(data["label"][0])).astype(np.int64), names)
            feats.append(
                VolumeFeatures(
                    case_id=case_id,
                    domain=item.get("domain"),
                    model=vol["bottleneck"],
                    prediction=prediction_statistics(labels, vol["entropy"], plan.target_spacing, names),
                    image=image_statistics(raw0),
                    metadata=header_metadata(data["image"].meta, item.get("metadata")),
                    dice=dice,
                )
            )
        except DataError as e:
            log.warning("skipping %s", e)
            failures.append({"case": case_id, "file": e.path or images[0], "reason": e.problem})
        except Exception as e:  # one bad volume must not stop the rest
            log.warning("skipping %s: %s", case_id, e)
            failures.append({"case": case_id, "file": images[0], "reason": f"{type(e).__name__}: {e}"})
    return feats, failures


def _metadata_changes(ref: Sequence[VolumeFeatures], tgt: Sequence[VolumeFeatures]) -> dict[str, Any]:
    """Per metadata key, the values seen on each side when they differ (orientation, manufacturer, spacing...).

    Spacing and shape are summarised by their per-axis medians and reported when any axis differs by over 5%.
    """
    out: dict[str, Any] = {}
    for k in ("spacing", "shape"):
        a = [f.metadata[k] for f in ref if f.metadata.get(k)]
        b = [f.metadata[k] for f in tgt if f.metadata.get(k)]
        if a and b and len({len(v) for v in a + b}) == 1:
            ma, mb = np.median(np.array(a, float), axis=0), np.median(np.array(b, float), axis=0)
            if np.any(np.abs(mb - ma) > 0.05 * np.maximum(np.abs(ma), 1e-9)):
                out[k] = {"reference_median": ma.round(4).tolist(), "target_median": mb.round(4).tolist()}
    keys = sorted({k for f in [*ref, *tgt] for k in f.metadata} - {"shape", "spacing"})
    for k in keys:
        a = sorted({json.dumps(f.metadata.get(k)) for f in ref})
        b = sorted({json.dumps(f.metadata.get(k)) for f in tgt})
        if a != b:
            out[k] = {"reference": [json.loads(v) for v in a], "target": [json.loads(v) for v in b]}
    return out


def _dice_summary(ref: Sequence[VolumeFeatures], tgt: Sequence[VolumeFeatures]) -> dict[str, Any]:
    r, t = mean_dice(ref), mean_dice(tgt)
    return {
        "reference_mean": r,
        "target_mean": t,
        "drop": (r - t) if r is not None and t is not None else None,
        "reference_n_empty": count_undefined_dice(ref),
        "target_n_empty": count_undefined_dice(tgt),
        "note": "mean foreground Dice on the preprocessed grid; only volumes with labels; a class absent from both "
        "prediction and label is left out of its volume's mean, and a volume with every class absent is left out "
        "of the set's mean and counted in *_n_empty",
    }


def decide(ref: np.ndarray, tgt: np.ndarray, options: DriftOptions) -> tuple[bool, dict[str, TestResult]]:
    """Run both set-level tests and apply the Bonferroni decision rule."""
    tests = {
        "mmd": mmd_test(ref, tgt, alpha=options.alpha, n_permutations=options.permutations, seed=options.seed),
        "ks_pca": ks_pca_test(ref, tgt, alpha=options.alpha, n_components=options.pca_components),
    }
    return any(t.p_value < options.alpha / 2 for t in tests.values()), tests


def analyse(
    reference: list[VolumeFeatures],
    target: list[VolumeFeatures],
    options: DriftOptions,
    failures: list[dict[str, str]] | None = None,
) -> DriftReport:
    """Tests, volume scores, metadata changes and Dice drop from already extracted features."""
    if len(reference) < 4 or len(target) < 2:
        raise TooFewVolumesError(
            f"need at least 4 reference and 2 target volumes, got {len(reference)} and {len(target)}"
        )
    ref = np.stack([f.vector(options.features) for f in reference])
    tgt = np.stack([f.vector(options.features) for f in target])
    drift, tests = decide(ref, tgt, options)
    img_ref = np.stack([f.vector(("image",)) for f in reference])
    img_tgt = np.stack([f.vector(("image",)) for f in target])
    finite = np.isfinite(img_ref).all(0) & np.isfinite(img_tgt).all(0)
    image_tests = {}
    if finite.any():
        image_tests = {
            "mmd": mmd_test(
                img_ref[:, finite],
                img_tgt[:, finite],
                alpha=options.alpha,
                n_permutations=options.permutations,
                seed=options.seed,
            ),
            "ks_pca": ks_pca_test(
                img_ref[:, finite], img_tgt[:, finite], alpha=options.alpha, n_components=options.pca_components
            ),
        }
    scorer = MahalanobisScorer(fpr=options.fpr, seed=options.seed).fit(ref)
    return DriftReport(
        drift=drift,
        options=options,
        tests=tests,
        image_tests=image_tests,
        threshold=scorer.threshold,
        reference=reference,
        target=target,
        target_scores=scorer.score(tgt),
        reference_scores=scorer.reference_scores,
        failures=list(failures or []),
        metadata_changes=_metadata_changes(reference, target),
        dice=_dice_summary(reference, target),
    )


def write_plots(report: DriftReport, out_dir: Path, stem: str) -> list[str]:
    """PNG plots: features on the reference's first two principal components, and volume scores vs threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medattn.data.io import atomic_write_with

    ref = np.stack([f.vector(report.options.features) for f in report.reference])
    tgt = np.stack([f.vector(report.options.features) for f in report.target])
    rs, ts = standardise(ref, tgt)
    mu, comps = pca_fit(rs, 2)
    pr, pt = (rs - mu) @ comps.T, (ts - mu) @ comps.T
    paths = []
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    ax.scatter(pr[:, 0], pr[:, 1] if pr.shape[1] > 1 else np.zeros(len(pr)), label="reference", alpha=0.7)
    ax.scatter(pt[:, 0], pt[:, 1] if pt.shape[1] > 1 else np.zeros(len(pt)), label="target", alpha=0.7, marker="^")
    ax.set_xlabel("PC 1 (reference)")
    ax.set_ylabel("PC 2 (reference)")
    mmd = report.tests["mmd"]
    ax.set_title(
        f"{'DRIFT' if report.drift else 'no drift'}: MMD p={mmd.p_value:.3g}, KS p={report.tests['ks_pca'].p_value:.3g}"
    )
    ax.legend()
    fig.tight_layout()
    p1 = out_dir / f"{stem}_pca.png"
    atomic_write_with(p1, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    paths.append(str(p1))

    fig, ax = plt.subplots(figsize=(5.5, 4.0))
    bins = np.histogram_bin_edges(np.concatenate([report.reference_scores, report.target_scores]), bins=20).tolist()
    ax.hist(report.reference_scores, bins=bins, alpha=0.6, label="reference (held out)")
    ax.hist(report.target_scores, bins=bins, alpha=0.6, label="target")
    ax.axvline(report.threshold, color="k", ls="--", label=f"threshold (FPR {report.options.fpr:g})")
    ax.set_xlabel("Mahalanobis score")
    ax.set_ylabel("volumes")
    ax.legend()
    fig.tight_layout()
    p2 = out_dir / f"{stem}_scores.png"
    atomic_write_with(p2, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    paths.append(str(p2))
    return paths


def format_report(report: DriftReport) -> str:
    lines = [
        f"{'DRIFT' if report.drift else 'no drift'} ({len(report.reference)} reference, "
        f"{len(report.target)} target volumes; alpha {report.options.alpha:g})"
    ]
    for name, t in report.tests.items():
        lines.append(f"  {name:<7} p = {t.p_value:.4g}   effect size {t.effect_size:.4g}")
    for name, t in report.image_tests.items():
        lines.append(f"  image {name:<7} p = {t.p_value:.4g}   effect size {t.effect_size:.4g} (not in the decision)")
    flagged = report.flagged
    lines.append(
        f"  volume level: {len(flagged)}/{len(report.target)} target volumes above the threshold "
        f"{report.threshold:.3g} (calibrated for FPR {report.options.fpr:g})"
    )
    if report.dice.get("drop") is not None:
        lines.append(
            f"  Dice: reference {report.dice['reference_mean']:.3f}, target {report.dice['target_mean']:.3f}, "
            f"drop {report.dice['drop']:+.3f}"
        )
    for k, v in report.metadata_changes.items():
        if "reference_median" in v:
            lines.append(f"  metadata {k} (median): reference {v['reference_median']} -> target {v['target_median']}")
        else:
            lines.append(f"  metadata {k}: reference {v['reference']} -> target {v['target']}")
    for f in report.failures:
        lines.append(f"  FAILED {f['case']}: {f['file']}: {f['reason']}")
    return "\n".join(lines)


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
    """Extract features from both sets with the model and analyse them (see the module docstring)."""
    from medattn.models.model_file import load_model

    options = options or DriftOptions()
    t0 = time.perf_counter()
    loaded = load_model(model_path, device=device)
    nch = loaded.plan.num_channels
    ref_items = dataset_items(reference, data_root, nch, reference_split)
    tgt_items = dataset_items(target, data_root, nch, target_split)
    check_channels(loaded.plan, ref_items, reference)
    check_channels(loaded.plan, tgt_items, target)
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
    """:func:`run_drift`, written to ``out`` (JSON) with its PNG plots beside it (``report.plots`` names them).

    ``out`` is checked before the model or any volume is read: never a file of either dataset, the model or a
    dataset description, never in an image or label folder, and writable.

    Raises:
        TooFewVolumesError: fewer readable volumes than the tests need (nothing is written).
        ConfigError: an output that would touch an input or cannot be written.
        DataError, ManifestError: see :func:`run_drift`.
    """
    from medattn.data.guard import InputGuard, prepare_output_file
    from medattn.infer.inputs import input_files
    from medattn.jsonio import write_json

    out = Path(out)
    guard = InputGuard.of(other_files=[model_path])  # before the model or any volume is read
    for spec in (reference, target):
        files, dataset = input_files(spec, data_root=data_root)
        guard = guard | InputGuard.of(files, dataset=dataset)
    guard.check_file(out, "-o")
    prepare_output_file(out, "-o")
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
    write_json(out, report.to_dict())
    return report
