"""Dice as Avalanche plugin metrics, in place of accuracy (meaningless on voxel masks).

* :class:`ExperienceDice` (eval): per test experience, the Dice of each foreground class averaged over the
  experience's cases, and their mean, emitted as ``Dice_Exp/eval_phase/test_stream/Task000/Exp001`` (mean) and
  ``Dice_Exp[<class>]/...`` (per class). It also keeps the per-case values of the last evaluation in
  :attr:`ExperienceDice.results`, which :mod:`medattn.continual.metrics` turns into the Dice matrix.
* :class:`StreamDice` (eval): the mean over the experiences of the stream just evaluated (``Dice_Stream/...``).
* :class:`EpochDice` (train): Dice of the full-resolution training output on the epoch's patches, pooled over the
  epoch's voxels (``Dice_Epoch/train_phase/train_stream/Task000``), a cheap learning signal for the logs.

Dice is :mod:`medattn.dice`, the one every command scores with (``medattn train``'s validation, drift,
``evaluate``): per case :func:`~medattn.dice.dice_per_class`, pooled over an epoch
:func:`~medattn.dice.dice_from_counts`. A class absent from both prediction and label gives NaN; it is left out of
the averages and counted (``n_empty`` in :attr:`ExperienceDice.results`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from avalanche.evaluation import PluginMetric
from avalanche.evaluation.metric_results import MetricValue
from avalanche.evaluation.metric_utils import get_metric_name

from medattn.dice import confusion_counts, defined_mean, dice_from_counts, dice_per_class
from medattn.models.unet import full_resolution


def _nanmean(values: Sequence[float]) -> float:
    return defined_mean(values)[0]


class ExperienceDice(PluginMetric[float]):
    """Whole-volume Dice per test experience (see the module docstring).

    Args:
        class_names: names of all classes, background first; Dice is reported for classes 1..K-1.

    Attributes:
        results: experience id -> ``{"domain", "dice", "per_class": {name: value}, "n_empty": {name: count},
            "cases": {id: {name: value}}}`` for the experiences evaluated since :meth:`clear_results`; ``n_empty``
            counts the cases where the class is absent from both prediction and label (left out of ``per_class``).
    """

    def __init__(self, class_names: Sequence[str]) -> None:
        super().__init__()
        self.class_names = list(class_names)
        self.results: dict[int, dict[str, Any]] = {}
        self._cases: dict[str, list[float]] = {}

    def __str__(self) -> str:
        return "Dice_Exp"

    def reset(self) -> None:
        self._cases = {}

    def clear_results(self) -> None:
        self.results = {}

    def per_class(self) -> list[float]:
        """Mean over cases of each foreground class's Dice (cases where it is undefined left out)."""
        return [m for m, _ in self._class_means()]

    def n_empty(self) -> list[int]:
        """Per foreground class, the cases where it is absent from both prediction and label (Dice undefined)."""
        return [e for _, e in self._class_means()]

    def _class_means(self) -> list[tuple[float, int]]:
        rows = list(self._cases.values())
        return [defined_mean([r[c] for r in rows]) for c in range(len(self.class_names) - 1)]

    def result(self) -> float:
        return _nanmean(self.per_class())

    def before_eval_exp(self, strategy: Any) -> None:
        self.reset()

    def after_eval_iteration(self, strategy: Any) -> None:
        pred, target = strategy.mb_output, strategy.mb_y
        ids = strategy.mbatch.meta.get("case_id") or [None] * len(pred)
        for i, (p, t) in enumerate(zip(pred, target)):
            key = str(ids[i]) if ids[i] is not None else f"#{len(self._cases)}"
            self._cases[key] = dice_per_class(p, t, range(1, len(self.class_names))).tolist()

    def after_eval_exp(self, strategy: Any) -> list[MetricValue]:
        exp = strategy.experience
        names = self.class_names[1:]
        per_class = self.per_class()
        mean = _nanmean(per_class)
        self.results[int(exp.current_experience)] = {
            "domain": getattr(exp, "domain", None),
            "dice": mean,
            "per_class": dict(zip(names, per_class)),
            "n_empty": dict(zip(names, self.n_empty())),
            "cases": {cid: dict(zip(names, vals)) for cid, vals in self._cases.items()},
        }
        x = strategy.clock.train_iterations
        out = [MetricValue(self, get_metric_name(self, strategy, add_experience=True), mean, x)]
        for name, value in zip(names, per_class):
            metric_name = get_metric_name(f"Dice_Exp[{name}]", strategy, add_experience=True)
            out.append(MetricValue(self, metric_name, value, x))
        return out


class StreamDice(PluginMetric[float]):
    """Mean Dice over the experiences of the stream just evaluated (reads :class:`ExperienceDice`)."""

    def __init__(self, experience_metric: ExperienceDice) -> None:
        super().__init__()
        self.experience_metric = experience_metric
        self._values: list[float] = []

    def __str__(self) -> str:
        return "Dice_Stream"

    def reset(self) -> None:
        self._values = []

    def result(self) -> float:
        return _nanmean(self._values)

    def before_eval(self, strategy: Any) -> None:
        self.reset()

    def after_eval_exp(self, strategy: Any) -> None:
        self._values.append(self.experience_metric.result())

    def after_eval(self, strategy: Any) -> list[MetricValue]:
        name = get_metric_name(self, strategy, add_experience=False)
        return [MetricValue(self, name, self.result(), strategy.clock.train_iterations)]


class EpochDice(PluginMetric[float]):
    """Training Dice on patches, pooled over an epoch's voxels and averaged over foreground classes."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.reset()

    def __str__(self) -> str:
        return "Dice_Epoch"

    def reset(self) -> None:
        self._counts = np.zeros((3, self.num_classes - 1), dtype=np.int64)  # TP, FP, FN per foreground class

    def result(self) -> float:
        """Mean over foreground classes of the pooled Dice; a class absent from every patch and prediction is left
        out (NaN when every class is)."""
        return defined_mean(dice_from_counts(*self._counts))[0]

    def before_training_epoch(self, strategy: Any) -> None:
        self.reset()

    @torch.no_grad()
    def after_training_iteration(self, strategy: Any) -> None:
        from medattn.infer.stitch import argmax_classes

        logits = full_resolution(strategy.mb_output)
        # argmax_classes, not logits.argmax(1): on one CPU thread that strided reduction took ~100 ms per 2x64^3
        # batch, a sixth of the ag_unet training step it followed (bench/bench_train.py)
        dtype = torch.uint8 if logits.shape[1] <= 256 else torch.int32
        pred = torch.empty((logits.shape[0], *logits.shape[2:]), dtype=dtype, device=logits.device)
        argmax_classes(logits.transpose(0, 1), pred)
        self._counts += class_index_counts(pred, strategy.mb_y[:, 0], self.num_classes)

    def after_training_epoch(self, strategy: Any) -> list[MetricValue]:
        name = get_metric_name(self, strategy, add_experience=False)
        return [MetricValue(self, name, self.result(), strategy.clock.train_iterations)]


def class_index_counts(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> np.ndarray:
    """(TP, FP, FN) x foreground class of class-index maps, as :func:`medattn.dice.confusion_counts` gives them for
    ``range(1, num_classes)``, from one joint histogram (``torch.bincount`` of ``pred * K + target``) instead of
    three comparisons and sums per class: a third of the metric's time per 2 x 64^3 training batch, which the
    Avalanche loop pays every step (bench/bench_train.py). Falls back to ``confusion_counts`` when the reference
    holds values outside ``0..K-1``."""
    k = int(num_classes)
    ref = (target.round() if target.is_floating_point() else target).to(pred.device)
    if ref.numel() and (float(ref.min()) < 0 or float(ref.max()) >= k):
        return np.stack(confusion_counts(pred, target, range(1, k)))
    small = torch.uint8 if k * k <= 256 else torch.int64  # one byte per voxel where the joint index fits
    joint_index = pred.to(small) * k + ref.to(small)
    joint = torch.bincount(joint_index.reshape(-1), minlength=k * k).reshape(k, k).cpu().numpy()
    tp = np.diag(joint)[1:]
    return np.stack([tp, joint.sum(1)[1:] - tp, joint.sum(0)[1:] - tp]).astype(np.int64)


def dice_metrics(class_names: Sequence[str]) -> list[PluginMetric[float]]:
    """The Dice plugin metrics of a segmentation strategy: experience, stream (eval) and epoch (train)."""
    exp = ExperienceDice(class_names)
    return [exp, StreamDice(exp), EpochDice(len(class_names))]
