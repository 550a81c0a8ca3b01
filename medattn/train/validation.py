"""Validation: sliding-window labels of whole preprocessed volumes and Dice per foreground class.

:func:`validate` segments each case with the one sliding-window implementation,
:class:`medattn.infer.sliding.SlidingWindowPredictor` (the one ``medattn predict`` uses: Gaussian-weighted windows
stitched slab by slab, so only the label volume, one byte per voxel, spans the whole volume), and scores it with
:func:`medattn.dice.dice_per_class` (the one Dice of every command: a class absent from both prediction and
reference is NaN, left out of the means and counted in :attr:`ValidationResult.num_empty`). Under a distributed job
each rank passes its own share of the cases and the sums are reduced so every rank gets the same result.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from medattn.dice import dice_per_class
from medattn.infer.sliding import SlidingWindowPredictor
from medattn.runtime import Rank
from medattn.train.distributed import all_reduce_sum
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
        num_empty: per foreground class, the cases (over all processes) where the class is absent from both
            prediction and reference: its Dice is undefined and left out of :attr:`per_class`.
    """

    class_names: tuple[str, ...]
    per_class: tuple[float, ...]
    per_case: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    num_cases: int = 0
    num_empty: tuple[int, ...] = ()

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
    dist_info: Rank | None = None,
    progress: bool = False,
) -> ValidationResult:
    """Segment each case by sliding window and score it; under ``dist_info`` each rank passes its own share.

    Each volume is segmented by :class:`~medattn.infer.sliding.SlidingWindowPredictor` with Gaussian blending
    (MONAI's window layout and weights): the image stays where the dataset put it (normally the CPU) and only
    window batches go to ``device``; windows are stitched on ``device`` when the label volume and one slab of
    per-class sums fit in half of its free memory, else on the CPU. No full-volume logits are formed.

    Args:
        model: the network (switched to eval mode for the call and restored afterwards), on ``device``.
        cases: a sequence (``len`` and indexing) of preprocessed items: ``image`` float32 (C, X, Y, Z),
            ``label`` (1, X, Y, Z) class indices, ``case_id``; e.g. a dataset of
            :func:`medattn.data.transforms.eval_transforms` (:func:`medattn.train.data.validation_dataset`).
        roi_size: window size (X, Y, Z) in voxels, usually the training patch; smaller volumes are zero-padded.
        class_names: every class name, background first (K names).
        device: where the network runs.
        sw_batch_size: windows per forward pass.
        overlap: fraction of a window shared with its neighbour.
        precision: autocast setting of the forward passes (None: float32); blending sums stay float32.
        dist_info: when distributed, the per-class sums are reduced over ranks (every rank must call this).
        progress: show a progress bar over cases.
    """
    from tqdm.auto import tqdm

    k = len(class_names)
    dev = torch.device(device)

    def network(x: torch.Tensor) -> Any:
        with precision.autocast() if precision is not None else torch.autocast(dev.type, enabled=False):
            return model(x)

    predictor = SlidingWindowPredictor(
        network,
        tuple(int(r) for r in roi_size),
        overlap=overlap,
        window_batch=sw_batch_size,
        blend="gaussian",
        sw_device=dev,
        num_classes=k,
    )
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, k - 1, dtype=torch.float64)  # rows: sum of Dice, defined values, undefined values
    per_case: dict[str, tuple[float, ...]] = {}
    try:
        for i in tqdm(range(len(cases)), desc="validate", unit="case", leave=False, disable=not progress):
            item = cases[i]
            image = item["image"]
            image = image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)
            pred = predictor(image.float()).labels.cpu()
            label = item["label"]
            label = label.as_tensor() if hasattr(label, "as_tensor") else torch.as_tensor(label)
            d = torch.from_numpy(dice_per_class(pred, label[0].cpu(), range(1, k)))
            defined = ~torch.isnan(d)
            sums[0] += torch.where(defined, d, torch.zeros_like(d))
            sums[1] += defined.double()
            sums[2] += (~defined).double()
            per_case[str(item.get("case_id", i))] = tuple(float(v) for v in d)
    finally:
        model.train(was_training)
    counts = torch.tensor([float(len(cases))], dtype=torch.float64)
    if dist_info is not None and dist_info.enabled:
        sums = all_reduce_sum(sums, dist_info)
        counts = all_reduce_sum(counts, dist_info)
    per_class = tuple(float(s / n) if n > 0 else float("nan") for s, n in zip(sums[0], sums[1]))
    empty = tuple(int(n) for n in sums[2])
    return ValidationResult(tuple(class_names[1:]), per_class, per_case, int(counts.item()), empty)
