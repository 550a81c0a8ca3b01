"""The bridge between MONAI dictionary samples and Avalanche mini-batches.

MONAI pipelines return one dict per sample (``{"image": (C, X, Y, Z), "label": (1, X, Y, Z), "case_id": ...}``),
or a list of such dicts when a crop draws several patches per volume. Avalanche's templates expect a mini-batch
indexable as ``mbatch[0]`` (``mb_x``), ``mbatch[1]`` (``mb_y``) and ``mbatch[-1]`` (``mb_task_id``), every element
movable with ``.to(device)``, and its ``AvalancheDataset`` appends each sample's task label to the sample
(``sample["targets_task_labels"]`` for a dict).

:class:`SampleGroup` wraps a MONAI dataset so every item is one dict ``{"samples": [patch, ...]}`` (Avalanche can
then add the task label to it), and :func:`collate_segmentation` turns a list of such items into a
:class:`SegBatch`: ``[image, label, task]`` with the per-patch metadata in ``batch.meta``. Free-form case metadata
(manufacturer, field strength, ...) differs between cases, which makes MONAI's and PyTorch's default collation
fail or silently merge keys; it is kept as a plain list of dicts, one per patch, never collated.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

IMAGE = "image"
LABEL = "label"
SAMPLES = "samples"
TASK_KEY = "targets_task_labels"
#: Per-patch entries copied into ``SegBatch.meta`` (missing ones become None).
META_KEYS = ("case_id", "domain", "metadata")


class SegBatch(list):
    """An Avalanche mini-batch of segmentation patches or volumes: ``[image, label, task]`` plus ``meta``.

    Attributes (by position):
        0: ``image`` float32 tensor (B, C, X, Y, Z), plain ``torch.Tensor`` (MONAI's metadata removed).
        1: ``label`` float32 tensor (B, 1, X, Y, Z) of class indices.
        2: ``task`` int64 tensor (B,) of Avalanche task labels (0 for every domain: the stream is
           domain-incremental, the network never sees a task id).

    ``meta`` maps ``case_id``, ``domain`` and ``metadata`` to one entry per patch. It is a list subclass, not a
    tuple, because Avalanche's ``_unpack_minibatch`` turns tuples into plain lists (dropping attributes) and moves
    every element to the device in place, which keeps this object and its ``meta``.
    """

    meta: dict[str, list[Any]]

    def __init__(self, items: Iterable[Any] = (), meta: Mapping[str, list[Any]] | None = None) -> None:
        super().__init__(items)
        self.meta = dict(meta or {})

    def __copy__(self) -> SegBatch:  # pin_memory copies mutable sequences before replacing their elements
        return SegBatch(self, self.meta)


class SampleGroup(Dataset):
    """A MONAI dataset seen as one dict per item: ``{"samples": [patch dict, ...]}`` (see the module docstring).

    Args:
        data: any map-style dataset whose items are a dict or a list of dicts (MONAI ``Dataset`` or
            ``CacheDataset``).
    """

    def __init__(self, data: Any) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.data[index]
        samples = list(item) if isinstance(item, (list, tuple)) else [item]
        return {SAMPLES: samples}


def _plain(x: Any) -> torch.Tensor:
    """A MetaTensor or array as a plain float32 tensor (MONAI's metadata dropped)."""
    if hasattr(x, "as_tensor"):
        x = x.as_tensor()
    return torch.as_tensor(x, dtype=torch.float32)


def _flatten(items: Sequence[Any]) -> list[tuple[Mapping[str, Any], int]]:
    """(patch, task label) pairs from items that are groups, single dicts or (nested) lists of dicts."""
    out: list[tuple[Mapping[str, Any], int]] = []
    for item in items:
        if isinstance(item, Mapping) and SAMPLES in item:
            task = int(item.get(TASK_KEY, 0))
            out.extend((s, task) for s in item[SAMPLES])
        elif isinstance(item, Mapping):
            out.append((item, int(item.get(TASK_KEY, 0))))
        elif isinstance(item, (list, tuple)):
            out.extend(_flatten(item))
        else:
            raise TypeError(f"cannot collate a {type(item).__name__}; expected MONAI dict samples")
    return out


def collate_segmentation(items: Sequence[Any]) -> SegBatch:
    """Collate MONAI samples into a :class:`SegBatch` (see the module docstring).

    Raises:
        ValueError: when a sample has no ``label`` or the images differ in shape (whole volumes of different
            sizes need a batch size of 1), naming the cases.
    """
    pairs = _flatten(items)
    if not pairs:
        raise ValueError("cannot collate an empty batch")
    images, labels, tasks = [], [], []
    meta: dict[str, list[Any]] = {k: [] for k in META_KEYS}
    for sample, task in pairs:
        if LABEL not in sample:
            raise ValueError(f"sample of case {sample.get('case_id')!r} has no label; continual training needs them")
        images.append(_plain(sample[IMAGE]))
        labels.append(_plain(sample[LABEL]))
        tasks.append(task)
        for k in META_KEYS:
            meta[k].append(sample.get(k))
    shapes = {tuple(t.shape) for t in images}
    if len(shapes) > 1:
        raise ValueError(
            f"cannot batch images of different shapes {sorted(shapes)} (cases {meta['case_id']}); "
            "evaluate whole volumes with a batch size of 1"
        )
    return SegBatch(
        [torch.stack(images), torch.stack(labels), torch.as_tensor(tasks, dtype=torch.int64)],
        meta,
    )
