"""Dice: the one definition every medattn command scores with, and its rule for absent classes.

Training validation (:mod:`medattn.train.validation`), the continual-learning Dice metrics and Dice matrix
(:mod:`medattn.continual.plugin_metrics`), drift's per-volume Dice and Dice drop (:mod:`medattn.drift.features`)
and ``medattn evaluate`` (:mod:`medattn.evaluate.metrics`) all reach :func:`dice_from_counts`, so a model gets the
same number from every command.

**The rule for absent classes** (nnU-Net's): Dice is ``2 TP / (2 TP + FP + FN)`` in voxels.

=============================================  ==========================================================
class in the prediction P / the reference G    Dice
=============================================  ==========================================================
absent from both (TP + FP + FN = 0)            undefined: NaN, left out of every mean and counted
absent from G but predicted (FP > 0)           0.0
present in G but not predicted (FN > 0)        0.0
=============================================  ==========================================================

A correct prediction of absence carries no overlap to measure; scoring it 1.0 would lift a mean with every case
that lacks a structure, and a mean over such cases would say nothing about segmentation quality. Means over cases
or classes therefore skip NaN (:func:`defined_mean`) and their callers report how many values were left out.

Why a module of its own, at the top of the package: it depends on NumPy and torch only, nothing in medattn, so every
layer (``train``, ``infer``, ``drift``, ``continual``, ``evaluate``) imports it without an import running back up
the layering (data → models → train → infer → drift → continual → demo → cli). ``evaluate/metrics.py`` would
depend on nothing either, but training would then import the package of a command.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

__all__ = ["confusion_counts", "defined_mean", "dice_from_counts", "dice_per_class"]


def dice_from_counts(tp: npt.ArrayLike, fp: npt.ArrayLike, fn: npt.ArrayLike) -> np.ndarray:
    """Dice ``2 TP / (2 TP + FP + FN)`` from voxel counts, elementwise, with the module's rule for absent classes.

    Args:
        tp, fp, fn: true-positive, false-positive and false-negative voxel counts (non-negative numbers or arrays
            that broadcast together), e.g. per class of one volume, or pooled over many.

    Returns:
        float64 array of the broadcast shape (0-d for scalars; ``float(...)`` it): Dice in [0, 1], NaN where
        ``TP + FP + FN == 0`` (the class is absent from both prediction and reference).

    Example::

        dice_from_counts([6, 0, 0], [1, 0, 3], [3, 0, 0])   # array([0.75, nan, 0.  ])
    """
    t, p, n = (np.asarray(v, dtype=np.float64) for v in (tp, fp, fn))
    if (t < 0).any() or (p < 0).any() or (n < 0).any():
        raise ValueError(f"Dice counts must be non-negative, got tp={tp!r}, fp={fp!r}, fn={fn!r}")
    denom = 2.0 * t + p + n
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(np.where(denom > 0, 2.0 * t / denom, np.nan), dtype=np.float64)


def confusion_counts(pred: Any, target: Any, classes: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per class value, the (TP, FP, FN) voxel counts of a predicted against a reference class-index map.

    Args:
        pred, target: class-index maps of the same shape (any leading singleton axes), as NumPy arrays or torch
            tensors (a MONAI MetaTensor is read as a plain tensor). Torch tensors are counted on the prediction's
            device (the reference is moved there) and only the counts come back. Floating-point maps are rounded
            to the nearest integer first (labels resampled or stored as floats).
        classes: the label values to count, e.g. ``range(1, K)`` for class indices or ``[63, 117]`` for values as
            stored on disk.

    Returns:
        ``(tp, fp, fn)``: int64 NumPy arrays of shape ``(len(classes),)``.

    Raises:
        ValueError: the two maps differ in shape.
    """
    if tuple(pred.shape) != tuple(target.shape):
        raise ValueError(f"prediction {tuple(pred.shape)} and reference {tuple(target.shape)} differ in shape")
    values = [int(c) for c in classes]
    if isinstance(pred, torch.Tensor) or isinstance(target, torch.Tensor):
        counts = _torch_counts(_plain(pred), _plain(target), values)
    else:
        counts = _numpy_counts(np.asarray(pred), np.asarray(target), values)
    both, n_pred, n_ref = counts[:, 0], counts[:, 1], counts[:, 2]
    return both, n_pred - both, n_ref - both


def dice_per_class(pred: Any, target: Any, classes: Sequence[int]) -> np.ndarray:
    """Dice of each class value of one volume (see the module docstring for the rule on absent classes).

    Args:
        pred, target, classes: as in :func:`confusion_counts`.

    Returns:
        float64 NumPy array ``(len(classes),)`` in ``classes`` order: Dice in [0, 1], NaN where the class is absent
        from both maps.

    Example::

        dice_per_class(labels, reference, range(1, num_classes))   # the foreground classes 1..K-1
    """
    return dice_from_counts(*confusion_counts(pred, target, classes))


def defined_mean(values: npt.ArrayLike) -> tuple[float, int]:
    """The mean of the defined Dice values and how many undefined (NaN) ones it left out.

    Returns:
        ``(mean, n_empty)``: the mean over non-NaN values (NaN when there is none) and the number of NaN values.
    """
    arr = np.asarray(values, dtype=np.float64)
    empty = np.isnan(arr)
    n_empty = int(empty.sum())
    if arr.size == n_empty:
        return float("nan"), n_empty
    return float(np.nanmean(arr)), n_empty


def _plain(x: Any) -> torch.Tensor:
    """A plain tensor (a MetaTensor's data without its metadata, NumPy arrays wrapped)."""
    if hasattr(x, "as_tensor"):
        x = x.as_tensor()
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def _torch_counts(pred: torch.Tensor, target: torch.Tensor, classes: list[int]) -> np.ndarray:
    target = target.to(pred.device)
    if pred.is_floating_point():
        pred = pred.round()
    if target.is_floating_point():
        target = target.round()
    rows = []
    for c in classes:
        p, t = pred == c, target == c
        rows.append(torch.stack([(p & t).sum(), p.sum(), t.sum()]))
    if not rows:
        return np.zeros((0, 3), dtype=np.int64)
    return torch.stack(rows).cpu().numpy().astype(np.int64)


def _numpy_counts(pred: np.ndarray, target: np.ndarray, classes: list[int]) -> np.ndarray:
    if np.issubdtype(pred.dtype, np.floating):
        pred = np.rint(pred)
    if np.issubdtype(target.dtype, np.floating):
        target = np.rint(target)
    out = np.zeros((len(classes), 3), dtype=np.int64)
    for i, c in enumerate(classes):
        p, t = pred == c, target == c
        out[i] = (np.count_nonzero(p & t), np.count_nonzero(p), np.count_nonzero(t))
    return out
