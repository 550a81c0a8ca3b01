"""Training and validation data of a run: cached MONAI datasets and a deterministic stream of batches per epoch.

Each epoch's batches depend only on ``(seed, epoch, rank)``: the sampler order comes from a
``DistributedSampler`` (one replica when not distributed) whose epoch is set from the run's epoch, and the
augmentation random state is re-seeded from a ``torch.Generator`` built for that epoch (MONAI's ``DataLoader``
seeds the dataset's random transforms from it, in-process or per worker). A resumed run therefore draws the same
patches as an uninterrupted one without saving any transform state.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import DataLoader, Dataset
from torch.utils.data import DistributedSampler

from medattn.data.plan import Plan
from medattn.data.transforms import AugmentConfig, eval_transforms, make_dataset, train_transforms
from medattn.runtime import Rank

#: Keys of a datalist item the pipelines need (other keys, such as free-form metadata, would break collation).
ITEM_KEYS = ("image", "label", "case_id")


def epoch_seed(seed: int, epoch: int, rank: int, part: int = 0) -> int:
    """A 63-bit seed for (run seed, epoch, rank, pass within the epoch), well mixed (NumPy ``SeedSequence``)."""
    state = np.random.SeedSequence([seed, epoch, rank, part]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & (2**63 - 1)


def clean_items(items: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Datalist items reduced to :data:`ITEM_KEYS`."""
    return [{k: d[k] for k in ITEM_KEYS if k in d} for d in items]


def training_dataset(
    items: Sequence[Mapping[str, Any]],
    plan: Plan,
    augment: AugmentConfig,
    samples_per_volume: int,
    cache: str = "memory",
    cache_dir: Path | None = None,
    progress: bool = False,
) -> Dataset:
    """Cached preprocessing, then patch sampling with the plan's foreground ratio and augmentation."""
    return make_dataset(
        clean_items(items),
        train_transforms(plan, augment, samples_per_volume),
        cache=cache,
        cache_dir=cache_dir,
        progress=progress,
    )


def validation_dataset(
    items: Sequence[Mapping[str, Any]],
    plan: Plan,
    cache: str = "memory",
    cache_dir: Path | None = None,
    progress: bool = False,
) -> Dataset:
    """Whole preprocessed volumes with labels (deterministic)."""
    return make_dataset(clean_items(items), eval_transforms(plan), cache=cache, cache_dir=cache_dir, progress=progress)


@dataclass(frozen=True)
class BatchPlan:
    """How a process draws its batches: volumes per step (``batch_size / samples_per_volume``), steps per epoch."""

    volumes_per_step: int
    iterations: int


def batch_plan(
    num_train: int, batch_size: int, samples_per_volume: int, iterations: int | None, world: int
) -> BatchPlan:
    """Steps per epoch default to one pass over this process's share of the training volumes."""
    vps = max(1, batch_size // samples_per_volume)
    per_rank = math.ceil(num_train / world)
    return BatchPlan(vps, iterations if iterations is not None else max(1, math.ceil(per_rank / vps)))


def epoch_batches(
    dataset: Dataset,
    plan: BatchPlan,
    epoch: int,
    seed: int,
    info: Rank,
    workers: int = 0,
    pin_memory: bool = False,
) -> Iterator[dict[str, torch.Tensor]]:
    """Exactly ``plan.iterations`` collated batches for ``epoch`` on this rank (passes repeat as needed).

    Batches are dicts with ``image`` (B, C, X, Y, Z) and ``label`` (B, 1, X, Y, Z), ``B = batch_size`` (less
    only when a rank holds fewer volumes than one step needs).
    """
    sampler: DistributedSampler[Any] = DistributedSampler(
        dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed, drop_last=False
    )
    per_rank = len(sampler)
    drop_last = per_rank >= plan.volumes_per_step
    done = 0
    part = 0
    while done < plan.iterations:
        sampler.set_epoch(epoch * 1000 + part)
        gen = torch.Generator().manual_seed(epoch_seed(seed, epoch, info.rank, part))
        loader = DataLoader(
            dataset,
            batch_size=plan.volumes_per_step,
            sampler=sampler,
            num_workers=workers,
            generator=gen,
            drop_last=drop_last,
            pin_memory=pin_memory,
            persistent_workers=False,
        )
        for batch in loader:
            yield batch
            done += 1
            if done >= plan.iterations:
                break
        part += 1
