"""Validation: sliding-window inference on whole preprocessed volumes and Dice per foreground class.

The continual-learning evaluation reuses these pieces: :func:`sliding_window_logits` for one volume,
:func:`dice_per_class` for one prediction, :func:`validate` for a list of cases (optionally sharded across the
ranks of a distributed job, with the sums reduced so every rank gets the same result).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from monai.inferers import sliding_window_inference
from torch import nn

from medattn.train.distributed import DistInfo, all_reduce_sum
from medattn.train.precision import Precision


@dataclass(frozen=True)
class ValidationResult:
    """Dice per foreground class over validation cases.

    Attributes:
        class_names: foreground class names, in class-index order (class 1 first).
        per_class: mean Dice of each foreground class over the cases where it is defined (NaN if none).
        per_case: case id -> Dice per foreground class (NaN where the class is absent from both prediction and
            reference); only the cases this process evaluated under distributed validation.
        num_cases: cases evaluated over all processes.
    """

    class_names: tuple[str, ...]
    per_class: tuple[float, ...]
    per_case: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    num_cases: int = 0

    @property
    def mean(self) -> float:
        """Mean foreground Dice (the mean of :attr:`per_class` over defined classes; NaN when none is)."""
        vals = [v for v in self.per_class if not math.isnan(v)]
        return sum(vals) / len(vals) if vals else float("nan")

    def as_row(self) -> dict[str, float]:
        """``{"val_dice": mean, "val_dice_<name>": ...}`` for logs."""
        row = {"val_dice": self.mean}
        row.update({f"val_dice_{n}": v for n, v in zip(self.class_names, self.per_class)})
        return row


def sliding_window_logits(
    model: nn.Module,
    image: torch.Tensor,
    roi_size: Sequence[int],
    *,
    sw_batch_size: int = 2,
    overlap: float = 0.5,
    precision: Precision | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Logits of a whole volume by Gaussian-weighted sliding windows (MONAI ``sliding_window_inference``).

    Args:
        model: network in eval mode returning (B, K, X, Y, Z) logits for a (B, C, X, Y, Z) window.
        image: float32 (C, X, Y, Z) preprocessed volume (any device; moved to ``device``).
        roi_size: window size (X, Y, Z) in voxels, usually the training patch; volumes smaller than it are padded.
        sw_batch_size: windows per forward pass.
        overlap: fraction of the window shared by neighbours.
        precision: autocast setting (None: float32).
        device: where the network runs (default: the image's device).

    Returns:
        float32 (K, X, Y, Z) logits on ``device``.
    """
    dev = torch.device(device) if device is not None else image.device
    x = image.as_tensor() if hasattr(image, "as_tensor") else image
    x = x.to(dev, torch.float32)[None]
    ctx = precision.autocast() if precision is not None else torch.autocast(dev.type, enabled=False)
    with torch.no_grad(), ctx:
        out = sliding_window_inference(
            x,
            roi_size=tuple(int(r) for r in roi_size),
            sw_batch_size=sw_batch_size,
            predictor=model,
            overlap=overlap,
            mode="gaussian",
        )
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"the model returned {type(out).__name__}, expected a logits tensor (is it in eval mode?)")
    return out[0].float()


def dice_per_class(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Dice of each foreground class 1..K-1 of one volume.

    Args:
        pred, target: class-index maps of the same shape (any leading singleton axes, any dtype).

    Returns:
        float64 (K-1,): ``2|P∩T| / (|P| + |T|)``, NaN where the class is absent from both.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and reference {tuple(target.shape)} differ in shape")
    p = pred.reshape(-1).long()
    t = target.reshape(-1).round().long()
    out = torch.empty(num_classes - 1, dtype=torch.float64)
    for c in range(1, num_classes):
        pc, tc = p == c, t == c
        denom = int(pc.sum()) + int(tc.sum())
        out[c - 1] = 2.0 * int((pc & tc).sum()) / denom if denom else float("nan")
    return out


def validate(
    model: nn.Module,
    cases: Any,
    roi_size: Sequence[int],
    class_names: Sequence[str],
    *,
    device: torch.device | str = "cpu",
    sw_batch_size: int = 2,
    overlap: float = 0.5,
    precision: Precision | None = None,
    dist_info: DistInfo | None = None,
    progress: bool = False,
) -> ValidationResult:
    """Segment each case by sliding window and score it; under ``dist_info`` each rank passes its own share.

    Args:
        model: the network (switched to eval mode for the call and restored afterwards).
        cases: a sequence (``len`` and indexing) of preprocessed items: ``image`` float32 (C, X, Y, Z),
            ``label`` (1, X, Y, Z) class indices, ``case_id``; e.g. a dataset of
            :func:`medattn.data.transforms.eval_transforms` (:func:`medattn.train.data.validation_dataset`).
        class_names: every class name, background first (K names).
        dist_info: when distributed, the per-class sums are reduced over ranks (every rank must call this).
    """
    from tqdm.auto import tqdm

    k = len(class_names)
    was_training = model.training
    model.eval()
    sums = torch.zeros(2, k - 1, dtype=torch.float64)  # row 0: sum of Dice, row 1: number of defined values
    per_case: dict[str, tuple[float, ...]] = {}
    try:
        for i in tqdm(range(len(cases)), desc="validate", unit="case", leave=False, disable=not progress):
            item = cases[i]
            logits = sliding_window_logits(
                model,
                item["image"],
                roi_size,
                sw_batch_size=sw_batch_size,
                overlap=overlap,
                precision=precision,
                device=device,
            )
            pred = logits.argmax(0).cpu()
            label = item["label"]
            label = label.as_tensor() if hasattr(label, "as_tensor") else torch.as_tensor(label)
            d = dice_per_class(pred, label[0].cpu(), k)
            defined = ~torch.isnan(d)
            sums[0] += torch.where(defined, d, torch.zeros_like(d))
            sums[1] += defined.double()
            per_case[str(item.get("case_id", i))] = tuple(float(v) for v in d)
    finally:
        model.train(was_training)
    counts = torch.tensor([float(len(cases))], dtype=torch.float64)
    if dist_info is not None and dist_info.enabled:
        sums = all_reduce_sum(sums, dist_info)
        counts = all_reduce_sum(counts, dist_info)
    per_class = tuple(float(s / n) if n > 0 else float("nan") for s, n in zip(sums[0], sums[1]))
    return ValidationResult(tuple(class_names[1:]), per_class, per_case, int(counts.item()))
