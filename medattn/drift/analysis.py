"""The drift decision on features already extracted: set-level tests, volume scores, metadata changes, Dice drop.

Decision rule: drift when either set-level test (MMD on whitened features, or KS on the reference's principal
components) on the model features has a p-value below ``alpha / 2`` (Bonferroni over the two tests, so the
false-alarm rate stays at most ``alpha``). Volume-level: each target volume's Mahalanobis score against a threshold
calibrated on held-out reference volumes for the chosen false-positive rate. Image-statistics tests and metadata
changes are reported beside the decision, not in it. Where labels exist, the mean Dice of reference and target
volumes and the drop between them.

:func:`analyse` gives the :class:`DriftReport`; :func:`decide` is the rule alone (what calibration re-runs).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from medattn.drift.features import VolumeFeatures, count_undefined_dice, mean_dice
from medattn.drift.options import DriftOptions
from medattn.drift.stats import MahalanobisScorer, TestResult, auroc, ks_pca_test, mmd_test
from medattn.errors import DataError

#: The decision rule, as written into every report.
DECISION_RULE = "drift when MMD (whitened) or KS-on-PCA p-value < alpha/2 on the model features"


#: The fewest reference and target volumes the set-level tests take.
MIN_REFERENCE, MIN_TARGET = 4, 2


class TooFewVolumesError(DataError):
    """Fewer readable volumes than the set-level tests need (at least 4 reference and 2 target volumes)."""


class TooFewVolumesGivenError(TooFewVolumesError):
    """Fewer volumes given than the tests need: said before any volume is read (a usage error, not the data's)."""


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
    ranking_files: list[str] = field(default_factory=list)
    """The labelling ranking's CSV and JSON files, once written (:func:`medattn.drift.run.drift_report`)."""

    @property
    def flagged(self) -> list[str]:
        return [f.case_id for f, s in zip(self.target, self.target_scores, strict=True) if s > self.threshold]

    @property
    def ranking(self) -> list[dict[str, Any]]:
        """The target volumes in labelling order (:func:`medattn.drift.ranking.labelling_ranking`)."""
        from medattn.drift.ranking import labelling_ranking

        return labelling_ranking(self.target, self.target_scores, self.threshold, self.reference_scores)

    def to_dict(self) -> dict[str, Any]:
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
            "ranking": self._ranking_summary(),
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

    def _ranking_summary(self) -> dict[str, Any]:
        from medattn.drift.ranking import RANKING_RULE, TOP

        keys = ("rank", "case_id", "volume_score", "flagged", "foreground_entropy")
        return {
            "rule": RANKING_RULE,
            "files": self.ranking_files,
            "top": [{k: r[k] for k in keys} for r in self.ranking[:TOP]],
        }


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
    if len(reference) < MIN_REFERENCE or len(target) < MIN_TARGET:
        raise TooFewVolumesError(
            f"need at least {MIN_REFERENCE} reference and {MIN_TARGET} target volumes, got {len(reference)} and"
            f" {len(target)} readable ones"
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
