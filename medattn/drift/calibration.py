"""Calibration of the drift decision on data with known answers: false alarms, power, AUROC and the Dice cost.

``medattn drift`` answers one question for one target set. Whether its answers can be trusted on a dataset is a
separate measurement, made here with sets whose answer is known:

* **false-positive rate**: the target is held-out data of the reference scanner, so every alarm is false;
* **power**: the target is drawn from a shifted domain (another site, or a simulated scanner copy made with
  ``medattn synth --from``), so every alarm is right;
* **volume-level AUROC**: how well the Mahalanobis score separates held-out reference volumes from shifted ones;
* **Dice drop**: what the shift costs the model (mean foreground Dice of the null pool minus the shifted set's),
  from the same forward pass, where labels exist.

Features are extracted once per volume (:func:`~medattn.drift.extract.extract_features`) and cached as ``.npz``
(:func:`cached_features`); each of the ``repeats`` random splits then only re-runs the decision
(:func:`~medattn.drift.analysis.decide`, the rule of ``medattn drift``: whitened MMD or KS-on-PCA p-value below
alpha / 2),
which takes a fraction of a second.

One repeat ``r`` (its random generator seeded with ``(seed, r)``, its MMD permutations with ``options.seed + r``):

1. reference: the whole reference set, or a random ``reference_size`` subset of it;
2. null target: ``n_target`` volumes drawn without replacement from the null pool, or, without a null pool,
   held out of the reference set (the reference is then the rest);
3. shifted targets: ``n_target`` volumes drawn from each shifted set (the whole set when it is smaller: then the
   repeats differ only in the reference and the permutations, and the rate is a rate of one decision);
4. volume level: a :class:`~medattn.drift.stats.MahalanobisScorer` fitted on the repeat's reference scores every
   null-pool volume outside that reference and every shifted volume; AUROC of shifted against null.

Rates come with exact (Clopper-Pearson) 95% intervals over the repeats. The repeats share volumes, so they are
not independent draws from the scanner: the interval describes the split-to-split variation on this dataset.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as sps

from medattn.data.io import file_sha256
from medattn.drift.analysis import DECISION_RULE, decide
from medattn.drift.features import VolumeFeatures, mean_dice
from medattn.drift.options import DriftOptions
from medattn.drift.stats import MahalanobisScorer, auroc

log = logging.getLogger(__name__)

CACHE_FORMAT = "medattn-drift-features"
CACHE_VERSION = 1
NULL = "null"


# ---- per-volume feature cache ------------------------------------------------------------------------------------


def _table(dicts: Sequence[Mapping[str, float] | None]) -> tuple[list[str], np.ndarray]:
    keys = sorted({k for d in dicts if d for k in d})
    arr = np.full((len(dicts), len(keys)), np.nan)
    for i, d in enumerate(dicts):
        for j, k in enumerate(keys):
            if d and k in d:
                arr[i, j] = float(d[k])
    return keys, arr


def save_features(
    path: str | Path,
    features: Sequence[VolumeFeatures],
    failures: Sequence[Mapping[str, str]] = (),
    info: Mapping[str, Any] | None = None,
) -> Path:
    """Write per-volume features (and the volumes that failed) to one ``.npz``; read back by :func:`load_features`.

    Arrays: ``model`` (N, C) float64; ``prediction``, ``image`` and ``dice`` (N, K) float64 with their column
    names (NaN where a volume has no value, e.g. no label); ``case_ids`` and ``domains`` (N,) str; metadata,
    failures and ``info`` as JSON text.
    """
    from medattn.data.io import atomic_write_with

    pred_keys, pred = _table([f.prediction for f in features])
    img_keys, img = _table([f.image for f in features])
    dice_keys, dice = _table([f.dice for f in features])
    width = len(features[0].model) if features else 0
    arrays = {
        "case_ids": np.array([f.case_id for f in features], dtype=str),
        "domains": np.array([f.domain or "" for f in features], dtype=str),
        "model": np.stack([f.model for f in features]) if features else np.zeros((0, width)),
        "prediction": pred,
        "prediction_keys": np.array(pred_keys, dtype=str),
        "image": img,
        "image_keys": np.array(img_keys, dtype=str),
        "dice": dice,
        "dice_keys": np.array(dice_keys, dtype=str),
        "has_dice": np.array([f.dice is not None for f in features], dtype=bool),
        "metadata": np.array(json.dumps([f.metadata for f in features], default=str)),
        "failures": np.array(json.dumps(list(failures))),
        "info": np.array(json.dumps({"format": CACHE_FORMAT, "version": CACHE_VERSION, **dict(info or {})})),
    }

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)  # type: ignore[arg-type]

    return atomic_write_with(path, write)


def load_features(path: str | Path) -> tuple[list[VolumeFeatures], list[dict[str, str]], dict[str, Any]]:
    """(features, failures, info) from a file of :func:`save_features`."""
    with np.load(path, allow_pickle=False) as z:
        info = json.loads(str(z["info"]))
        if info.get("format") != CACHE_FORMAT or int(info.get("version", 0)) > CACHE_VERSION:
            raise ValueError(f"{path}: not a medattn drift feature cache (or from a newer medattn)")
        meta = json.loads(str(z["metadata"]))
        failures = json.loads(str(z["failures"]))
        pk, ik, dk = (list(z[k].tolist()) for k in ("prediction_keys", "image_keys", "dice_keys"))
        feats = []
        for i, case in enumerate(z["case_ids"].tolist()):
            dom = str(z["domains"][i])
            feats.append(
                VolumeFeatures(
                    case_id=str(case),
                    domain=dom or None,
                    model=np.asarray(z["model"][i], dtype=np.float64),
                    prediction={k: float(v) for k, v in zip(pk, z["prediction"][i]) if np.isfinite(v)},
                    image={k: float(v) for k, v in zip(ik, z["image"][i])},
                    metadata=meta[i],
                    dice={k: float(v) for k, v in zip(dk, z["dice"][i])} if bool(z["has_dice"][i]) else None,
                )
            )
    return feats, failures, info


def cached_features(
    cache: str | Path,
    model_path: str | Path,
    items: Sequence[Mapping[str, Any]],
    *,
    overlap: float = 0.25,
    device: str = "cpu",
    progress: bool = False,
) -> tuple[list[VolumeFeatures], list[dict[str, str]]]:
    """Features of ``items`` under the model file, read from ``cache`` when it holds exactly these (else extracted
    with :func:`~medattn.drift.extract.extract_features` and written there).

    The cache is valid when the model file's SHA-256, the case ids (in order), their image files and the overlap
    match; any change extracts again.
    """
    from medattn.drift.extract import extract_features
    from medattn.models.model_file import load_model

    cache = Path(cache)
    key = {
        "model_sha256": file_sha256(model_path),
        "cases": [str(it.get("case_id")) for it in items],
        "images": [list(it["image"]) if isinstance(it["image"], (list, tuple)) else [it["image"]] for it in items],
        "overlap": overlap,
    }
    if cache.is_file():
        try:
            feats, failures, info = load_features(cache)
            if all(info.get(k) == v for k, v in key.items()):
                log.info("features of %d volume(s) read from %s", len(feats), cache)
                return feats, failures
            log.info("%s was made for other volumes or another model; extracting again", cache)
        except (OSError, ValueError, KeyError) as e:
            log.warning("cannot read the feature cache %s (%s); extracting again", cache, e)
    loaded = load_model(model_path, device=device)
    feats, failures = extract_features(loaded, items, overlap=overlap, device=device, progress=progress)
    save_features(cache, feats, failures, {**key, "model": str(model_path)})
    return feats, failures


# ---- the repeated-split measurement ------------------------------------------------------------------------------


def rate_interval(hits: int, n: int) -> tuple[float, float]:
    """Exact (Clopper-Pearson) 95% interval of a rate of ``hits`` in ``n``."""
    if n == 0:
        return (float("nan"), float("nan"))
    ci = sps.binomtest(hits, n).proportion_ci(confidence_level=0.95, method="exact")
    return (float(ci.low), float(ci.high))


def _paired_drop(null: Sequence[VolumeFeatures], shifted: Sequence[VolumeFeatures]) -> tuple[float | None, int]:
    """Mean Dice drop over shifted volumes whose case id is a null case id plus ``_<suffix>`` (``synth --from``)."""
    ref = {f.case_id: f.mean_dice for f in null if f.mean_dice is not None}
    drops = []
    for f in shifted:
        stem = f.case_id.rsplit("_", 1)[0]
        if f.mean_dice is not None and stem != f.case_id and stem in ref:
            drops.append(ref[stem] - f.mean_dice)
    return (float(np.mean(drops)), len(drops)) if drops else (None, 0)


@dataclass
class SetResult:
    """Outcome of the repeats on one target set (the null, or one shifted set).

    Attributes:
        name: ``"null"`` or the shifted set's name.
        n_volumes: volumes in the set (for the null: its pool).
        n_target: volumes tested per repeat.
        alarms: repeats whose decision was drift; ``alarms_by_test``: per test, repeats with p < alpha / 2.
        p_values: per test, the p-value of every repeat.
        auroc: per repeat, the volume-level AUROC against the null pool (shifted sets only).
        flagged: per repeat, the fraction of the set's scored volumes above the calibrated threshold.
        dice_mean: mean foreground Dice of the set; dice_drop: the null pool's minus this set's;
        dice_drop_paired: the mean drop over volumes paired with their source volume in the null pool.
    """

    name: str
    n_volumes: int
    n_target: int
    alarms: int = 0
    alarms_by_test: dict[str, int] = field(default_factory=dict)
    p_values: dict[str, list[float]] = field(default_factory=dict)
    auroc: list[float] = field(default_factory=list)
    flagged: list[float] = field(default_factory=list)
    dice_mean: float | None = None
    dice_drop: float | None = None
    dice_drop_paired: float | None = None
    n_paired: int = 0

    def summary(self, repeats: int) -> dict[str, Any]:
        lo, hi = rate_interval(self.alarms, repeats)
        out: dict[str, Any] = {
            "n_volumes": self.n_volumes,
            "n_target": self.n_target,
            "whole_set": self.n_target >= self.n_volumes,
            "rate": self.alarms / repeats if repeats else float("nan"),
            "rate_ci95": [lo, hi],
            "alarms": self.alarms,
            "rate_by_test": {k: v / repeats for k, v in self.alarms_by_test.items()},
            "median_p": {k: float(np.median(v)) for k, v in self.p_values.items()},
            "flagged_fraction": float(np.mean(self.flagged)) if self.flagged else None,
            "dice_mean": self.dice_mean,
        }
        if self.name == NULL:
            # A valid p-value is uniform under the null; the KS distance of the repeats' p-values from U(0, 1)
            # shows a departure (the repeats overlap, so it is a diagnostic, not a test).
            out["p_uniformity_ks"] = {k: float(sps.kstest(v, "uniform").statistic) for k, v in self.p_values.items()}
        else:
            a = np.asarray(self.auroc, dtype=float)
            out["auroc"] = float(np.nanmean(a)) if a.size else None
            out["auroc_range"] = [float(np.nanmin(a)), float(np.nanmax(a))] if a.size else None
            out["dice_drop"] = self.dice_drop
            out["dice_drop_paired"] = self.dice_drop_paired
            out["n_paired"] = self.n_paired
        return out


@dataclass
class CalibrationResult:
    """What :func:`calibrate` measured; ``to_dict`` is the JSON the benchmark writes."""

    options: DriftOptions
    repeats: int
    n_target: int
    n_reference: int
    reference_size: int
    null_mode: str
    null: SetResult
    shifted: dict[str, SetResult]
    reference_dice: float | None
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "medattn-drift-calibration",
            "decision_rule": DECISION_RULE,
            "options": dataclasses.asdict(self.options),
            "repeats": self.repeats,
            "n_target": self.n_target,
            "reference": {
                "n_volumes": self.n_reference,
                "per_repeat": self.reference_size,
                "dice_mean": self.reference_dice,
            },
            "null_mode": self.null_mode,
            "false_positive_rate": self.null.summary(self.repeats),
            "shifts": {k: v.summary(self.repeats) for k, v in self.shifted.items()},
            "p_values": {"null": self.null.p_values, **{k: v.p_values for k, v in self.shifted.items()}},
            "seconds": round(self.seconds, 2),
            **self.info,
        }

    def markdown(self) -> str:
        """One row per target set: alarm rate with its 95% interval, per test, AUROC, flagged share, Dice."""
        a = self.options.alpha

        def f(v: float | None, fmt: str = ".3f") -> str:
            return "" if v is None or v != v else format(v, fmt)

        lines = [
            f"reference: {self.n_reference} volumes ({self.reference_size} per repeat); {self.repeats} repeats, "
            f"{self.n_target} target volumes each; alpha {a:g} (each test at {a / 2:g}); null: {self.null_mode}",
            "",
            "| target | volumes | per test | alarm rate (95% CI) | MMD | KS-PCA | AUROC (min-max) | flagged | Dice | "
            "Dice drop (paired) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, res in [(f"null: held-out ({NULL})", self.null), *self.shifted.items()]:
            s = res.summary(self.repeats)
            kind = "FPR" if res is self.null else "power"
            ci = s["rate_ci95"]
            by = s["rate_by_test"]
            auc = "" if res is self.null else f"{f(s['auroc'])} ({f(s['auroc_range'][0])}-{f(s['auroc_range'][1])})"
            drop = "" if res is self.null else f"{f(s['dice_drop'], '+.3f')} ({f(s['dice_drop_paired'], '+.3f')})"
            lines.append(
                f"| {name} | {s['n_volumes']} | {min(s['n_target'], s['n_volumes'])} | {kind} {s['rate']:.3f} "
                f"({ci[0]:.3f}-{ci[1]:.3f}) | {f(by.get('mmd'))} | {f(by.get('ks_pca'))} | {auc} | "
                f"{f(s['flagged_fraction'])} | {f(s['dice_mean'])} | {drop} |"
            )
        return "\n".join(lines)


def _vectors(feats: Sequence[VolumeFeatures], groups: Sequence[str]) -> np.ndarray:
    return np.stack([f.vector(tuple(groups)) for f in feats])


def calibrate(
    reference: Sequence[VolumeFeatures],
    shifted: Mapping[str, Sequence[VolumeFeatures]],
    null: Sequence[VolumeFeatures] | None = None,
    *,
    options: DriftOptions | None = None,
    repeats: int = 200,
    n_target: int = 10,
    reference_size: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> CalibrationResult:
    """Run the decision of ``medattn drift`` over ``repeats`` random splits (see the module docstring).

    Args:
        reference: features of volumes the model knows (e.g. its training split).
        shifted: name -> features of a shifted set (another site, a simulated scanner copy).
        null: features of held-out volumes of the reference scanner; None: hold ``n_target`` volumes out of
            ``reference`` in each repeat instead.
        options: the decision's settings (alpha, permutations, feature groups, volume-level FPR).
        repeats: random splits.
        n_target: target volumes per test.
        reference_size: reference volumes per repeat (a random subset); None: all (less the held-out ones).
        seed: seed of the splits.
        progress: a progress bar over the repeats.

    Raises:
        ValueError: too few volumes for the requested split (at least 4 reference and 2 target volumes).
    """
    import time

    from tqdm.auto import tqdm

    opts = options or DriftOptions()
    if repeats < 1 or n_target < 2:
        raise ValueError(f"need repeats >= 1 and n_target >= 2, got {repeats} and {n_target}")
    t0 = time.perf_counter()
    groups = opts.features
    ref_x = _vectors(reference, groups)
    pool = reference if null is None else null
    pool_x = ref_x if null is None else _vectors(null, groups)
    n_ref_avail = len(reference) - (n_target if null is None else 0)
    size = n_ref_avail if reference_size is None else min(reference_size, n_ref_avail)
    if size < 4:
        raise ValueError(f"each repeat needs at least 4 reference volumes; the sets give {size}")
    if len(pool) < n_target:
        raise ValueError(f"the null pool has {len(pool)} volumes, fewer than n_target={n_target}")
    shifted_x = {k: _vectors(v, groups) for k, v in shifted.items()}
    for k, v in shifted_x.items():
        if len(v) < 2:
            raise ValueError(f"shifted set {k!r} has {len(v)} volume(s); a test needs at least 2")
    null_res = SetResult(NULL, len(pool), n_target)
    results = {k: SetResult(k, len(v), n_target) for k, v in shifted_x.items()}
    pool_dice = mean_dice(pool)
    null_res.dice_mean = pool_dice
    for k, res in results.items():
        res.dice_mean = mean_dice(shifted[k])
        if res.dice_mean is not None and pool_dice is not None:
            res.dice_drop = pool_dice - res.dice_mean
        res.dice_drop_paired, res.n_paired = _paired_drop(pool, shifted[k])
    scorer_key: tuple[int, ...] | None = None  # the scorer is refitted only when the reference draw changes
    for r in tqdm(range(repeats), desc="calibration", unit="split", disable=not progress):
        rng = np.random.default_rng([seed, r])
        rep = dataclasses.replace(opts, seed=opts.seed + r)
        if null is None:
            order = rng.permutation(len(reference))
            null_idx, rest = order[:n_target], order[n_target:]
            ref_idx = np.sort(rest[:size])
            outside = np.setdiff1d(np.arange(len(reference)), ref_idx)
        else:
            ref_idx = np.sort(rng.permutation(len(reference))[:size])
            null_idx = rng.permutation(len(pool))[:n_target]
            outside = np.arange(len(pool))
        ref = ref_x[ref_idx]
        _record(null_res, *decide(ref, pool_x[null_idx], rep))
        key = tuple(int(i) for i in ref_idx)
        if key != scorer_key:
            scorer, scorer_key = MahalanobisScorer(fpr=opts.fpr, seed=opts.seed).fit(ref), key
        null_scores = scorer.score(pool_x[outside])
        null_res.flagged.append(float(np.mean(null_scores > scorer.threshold)))
        for k, x in shifted_x.items():
            idx = rng.permutation(len(x))[: min(n_target, len(x))]
            _record(results[k], *decide(ref, x[idx], rep))
            scores = scorer.score(x)
            results[k].auroc.append(auroc(null_scores, scores))
            results[k].flagged.append(float(np.mean(scores > scorer.threshold)))
    return CalibrationResult(
        options=opts,
        repeats=repeats,
        n_target=n_target,
        n_reference=len(reference),
        reference_size=size,
        null_mode="held out of the reference set" if null is None else "separate pool of held-out volumes",
        null=null_res,
        shifted=results,
        reference_dice=mean_dice(reference),
        seconds=time.perf_counter() - t0,
    )


def _record(res: SetResult, drift: bool, tests: Mapping[str, Any]) -> None:
    res.alarms += int(drift)
    for name, t in tests.items():
        res.p_values.setdefault(name, []).append(float(t.p_value))
        res.alarms_by_test[name] = res.alarms_by_test.get(name, 0) + int(t.p_value < t.alpha / 2)
