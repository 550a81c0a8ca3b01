"""Segmentation metrics per case and class (MONAI's implementations, in mm) and their summaries.

Per foreground class of one case, from a predicted and a reference label map on the same grid:

* **Dice** (:func:`medattn.dice.dice_from_counts`, the one Dice of every medattn command): ``2 |P ∩ G| / (|P| + |G|)``.
* **HD95** (``monai.metrics.HausdorffDistanceMetric(percentile=95)``): the larger of the two directed 95th
  percentiles of the distances (mm) between the surface voxels of P and of G (surface: voxels removed by a
  one-voxel erosion, 6-connected).
* **NSD** (``monai.metrics.SurfaceDiceMetric``): normalised surface Dice, the fraction of both surfaces lying within
  ``tolerance`` mm of the other surface (Nikolov et al. 2021). The tolerance is per class, default
  :data:`DEFAULT_NSD_TOLERANCE_MM`; pick it from the inter-rater variation of the structure where known.

Distances use the voxel spacing (column norms of the affine), so anisotropic grids are measured in mm.

Empty masks, by the rule of :mod:`medattn.dice` (nnU-Net's), the same for the three metrics:

=====================  ======  ========  =====
P (prediction), G      Dice    HD95      NSD
=====================  ======  ========  =====
both empty             NaN     NaN       NaN
one of them empty      0.0     ``inf``   0.0
=====================  ======  ========  =====

"Both empty" (a class absent from the case and not predicted) has nothing to measure: every metric is undefined
(NaN, written as ``null`` in JSON and empty in CSV), summaries leave it out and count it (``n_empty``), and the case
row records ``gt_voxels`` and ``pred_voxels`` (both 0). HD95 is undefined when exactly one surface is missing; it is
reported as ``inf``, summaries average the finite values and count the infinite ones (``n_infinite``) so a missed
or hallucinated structure is never silently averaged away.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medattn.dice import dice_from_counts

#: NSD tolerance (mm) used for every class unless told otherwise.
DEFAULT_NSD_TOLERANCE_MM = 1.0
METRICS = ("dice", "hd95", "nsd")


@dataclass(frozen=True)
class ClassScores:
    """Scores of one foreground class in one case.

    Attributes:
        dice: in [0, 1]; NaN when both masks are empty.
        hd95: mm; NaN when both masks are empty, ``inf`` when exactly one is.
        nsd: in [0, 1] at ``tolerance_mm``; NaN when both masks are empty.
        tolerance_mm: NSD tolerance used.
        gt_voxels, pred_voxels: voxels of the class in the reference and in the prediction.
    """

    dice: float
    hd95: float
    nsd: float
    tolerance_mm: float
    gt_voxels: int
    pred_voxels: int


def segmentation_scores(
    pred: np.ndarray,
    gt: np.ndarray,
    labels: Sequence[int],
    spacing: Sequence[float],
    nsd_tolerance: float | Mapping[int, float] = DEFAULT_NSD_TOLERANCE_MM,
) -> dict[int, ClassScores]:
    """Dice, HD95 and NSD of each label value in ``labels`` (foreground values as stored on disk).

    Args:
        pred, gt: integer label maps of the same shape (X, Y, Z), values as stored on disk.
        labels: label values to score (e.g. ``[1, 2]`` or sparse ``[63, 117]``); background is not scored.
        spacing: voxel size (mm) along each array axis.
        nsd_tolerance: one tolerance (mm) for all classes, or a mapping from label value to tolerance.

    Returns:
        label value -> :class:`ClassScores`.
    """
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {gt.shape}")
    sp = tuple(float(s) for s in spacing)
    if len(sp) != gt.ndim:
        raise ValueError(f"spacing {sp} does not match a {gt.ndim}D array")
    out = {}
    for value in labels:
        tol = float(nsd_tolerance[value] if isinstance(nsd_tolerance, Mapping) else nsd_tolerance)
        out[int(value)] = binary_scores(pred == value, gt == value, sp, tol)
    return out


def binary_scores(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], tolerance_mm: float) -> ClassScores:
    """:class:`ClassScores` of two boolean masks (see the module docstring for empty masks)."""
    from monai.metrics import HausdorffDistanceMetric, SurfaceDiceMetric

    n_pred, n_gt = int(np.count_nonzero(pred)), int(np.count_nonzero(gt))
    n_both = int(np.count_nonzero(pred & gt))
    dice = float(dice_from_counts(n_both, n_pred - n_both, n_gt - n_both))
    if n_pred == 0 and n_gt == 0:
        return ClassScores(dice, math.nan, math.nan, tolerance_mm, 0, 0)
    if n_pred == 0 or n_gt == 0:
        return ClassScores(dice, math.inf, 0.0, tolerance_mm, n_gt, n_pred)
    p, g = _crop_to_union(pred, gt)
    yp = torch.from_numpy(p)[None, None].float()
    yg = torch.from_numpy(g)[None, None].float()
    sp = list(spacing)
    with warnings.catch_warnings():  # MONAI 1.5+ passes a deprecated argument to itself; nothing a user can act on
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        hd = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")(yp, yg, spacing=sp)
        nsd = SurfaceDiceMetric([tolerance_mm], include_background=True, reduction="none")(yp, yg, spacing=sp)
    return ClassScores(dice, _scalar(hd), _scalar(nsd), tolerance_mm, n_gt, n_pred)


def _scalar(x: Any) -> float:
    """The single value of a MONAI metric's (1, 1) result."""
    return float(torch.as_tensor(x).reshape(-1)[0])


def _crop_to_union(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cropped to the bounding box of their union plus one voxel (clipped at the array's edge).

    Scores are unchanged: the margin keeps every surface voxel's erosion neighbourhood, and the array edge is
    treated as background by the erosion in both the full and the cropped array.
    """
    union = a | b
    lo, hi = [], []
    for ax in range(union.ndim):
        other = tuple(i for i in range(union.ndim) if i != ax)
        idx = np.flatnonzero(union.any(axis=other))
        lo.append(max(0, int(idx[0]) - 1))
        hi.append(min(union.shape[ax], int(idx[-1]) + 2))
    sl = tuple(slice(a_, b_) for a_, b_ in zip(lo, hi))
    return a[sl], b[sl]


# ---- summaries -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """Mean, standard deviation and bootstrap confidence interval of one metric over cases.

    Attributes:
        mean, std: over the finite values (std with ``ddof=1``; 0 for a single value; NaN for none).
        ci_low, ci_high: percentile bootstrap interval of the mean at ``confidence``.
        median: of the finite values.
        n: finite values summarised.
        n_infinite: values left out because infinite (HD95 of a missed or hallucinated structure).
        n_empty: values left out because undefined (NaN: the class absent from both prediction and reference).
        confidence, resamples: of the bootstrap.
    """

    mean: float
    std: float
    median: float
    ci_low: float
    ci_high: float
    n: int
    n_infinite: int
    n_empty: int
    confidence: float
    resamples: int


def summarise(values: Sequence[float], resamples: int = 1000, seed: int = 0, confidence: float = 0.95) -> Summary:
    """Summarise per-case values (see :class:`Summary`). The bootstrap resamples cases with replacement
    ``resamples`` times with ``numpy.random.default_rng(seed)``, so the interval is reproducible."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence: expected a fraction in (0, 1), got {confidence}")
    arr = np.asarray(values, dtype=float)
    finite = arr[np.isfinite(arr)]
    n_inf = int(np.isinf(arr).sum())
    n_empty = int(np.isnan(arr).sum())
    n = int(finite.size)
    if n == 0:
        nan = float("nan")
        return Summary(nan, nan, nan, nan, nan, 0, n_inf, n_empty, confidence, resamples)
    mean = float(finite.mean())
    std = float(finite.std(ddof=1)) if n > 1 else 0.0
    lo, hi = bootstrap_ci(finite, resamples, seed, confidence)
    return Summary(mean, std, float(np.median(finite)), lo, hi, n, n_inf, n_empty, confidence, resamples)


def bootstrap_ci(
    values: np.ndarray, resamples: int = 1000, seed: int = 0, confidence: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (finite floats)."""
    vals = np.asarray(values, dtype=float)
    if vals.size == 1 or resamples < 1:
        return float(vals.mean()), float(vals.mean())
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, vals.size, size=(resamples, vals.size))
    means = vals[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)
