"""Replay: Avalanche's ``ReplayPlugin`` with a domain-balanced memory of foreground-centred patches.

Avalanche's default buffer (``ExperienceBalancedBuffer``) keeps whole dataset items, here a whole volume each,
so a memory budget buys few cases. :class:`ForegroundPatchBuffer` plugs into the same ``ReplayPlugin`` (an
Avalanche ``BalancedExemplarsBuffer``, one group per domain, the budget split equally over the domains seen) and
stores patches of the training patch size instead, each centred on a foreground voxel (a foreground class is drawn
first, so small structures get their share), spread round-robin over the domain's cases. Images are stored in
float16 and labels in uint8; stored patches are augmented afresh each time they are replayed.

The budget is ``mem_size`` patches (when given it replaces the default fraction), or ``memory_fraction`` of the
voxels of the training volumes seen so far (recomputed after each domain, so it grows with the data, as "at most
10% of the old data" means). Each training step draws ``mem_batch`` memory patches next to the current domain's
patches (default: as many as the current domain contributes).

**The per-domain floor.** A fraction of the voxels can round down to nothing: with the hippocampus plan (patch
40x56x40, about one padded volume) 10% of a seven-case site is 0.7 patches, so the memory is empty and replay trains
exactly as naive fine-tuning does. The fraction budget is therefore raised, after each domain, to at least
``min_patches_per_domain`` x the domains learned so far (logged at INFO, from what to what), and every learned domain
keeps at least the floor; a domain with fewer cases (or fewer cases with foreground) than the floor still gets it,
its patches spread round-robin over its cases. The default, :data:`MIN_PATCHES_PER_DOMAIN` = 16, is four memory
batches of the default ``mem_batch`` (2 volumes x 2 patches), so consecutive steps replay different patches, and two
or more patches per case of a seven-case site; it costs 16 patches per domain (about 4 MB for the hippocampus
patch, 50 MB for a four-channel 64x64x80 BraTS patch, host memory) and can exceed the fraction on small data (the
stored share is in the metrics). 0 disables the floor (the plain fraction, as before).

An explicit ``mem_size`` is a hard cap that the floor does not raise: it is the knob for a fixed memory (host RAM,
a data-sharing agreement), so it is honoured as given. When it leaves a domain fewer than the floor a warning says
so each time the memory is rebuilt (and, as before, when it leaves a domain nothing at all); drop ``mem_size`` to get
the fraction with the floor.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from avalanche.benchmarks.utils import AvalancheDataset
from avalanche.training.plugins import ReplayPlugin
from avalanche.training.storage_policy import BalancedExemplarsBuffer, ExemplarsBuffer
from torch.utils.data import Dataset

from medattn.continual.methods import Method, MethodContext, MethodSpec, Param
from medattn.errors import ConfigError

log = logging.getLogger(__name__)

#: The default memory budget: this share of the training voxels seen so far.
MEMORY_FRACTION = 0.1
#: The default floor of stored patches per learned domain under the fraction budget (see the module docstring).
MIN_PATCHES_PER_DOMAIN = 16


class MemoryPatches(Dataset):
    """Stored patches as MONAI dict samples (float32 image, float32 label), augmented by ``transform``."""

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, case_ids: Sequence[str], domain: str, transform: Any
    ) -> None:
        self.images, self.labels, self.case_ids, self.domain = images, labels, list(case_ids), domain
        self.transform = transform

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> Any:
        item = {
            "image": self.images[index].float(),
            "label": self.labels[index].float(),
            "case_id": self.case_ids[index],
            "domain": self.domain,
        }
        if self.transform is None:
            return item
        from monai.transforms import apply_transform

        return apply_transform(self.transform, item)


def extract_patches(
    volumes: Any, count: int, patch: Sequence[int], num_classes: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """``count`` foreground-centred patches from cached volumes, round-robin over cases in a random order.

    Args:
        volumes: indexable dataset of dicts with ``image`` (C, X, Y, Z) and ``label`` (1, X, Y, Z), each at least
            ``patch`` in size (the training pipeline pads to the patch).
        count: patches to extract.
        patch: patch size (X, Y, Z).
        num_classes: K; a class in 1..K-1 present in the case is drawn uniformly, then a voxel of it (a random
            voxel when the case has no foreground).
        rng: random generator (the draw is reproducible).

    Returns:
        (images (n, C, *patch) float16, labels (n, 1, *patch) uint8, case ids), ordered so that any prefix spreads
        over as many cases as possible.
    """
    n_cases = len(volumes)
    if count <= 0 or n_cases == 0:
        return torch.zeros(0), torch.zeros(0, dtype=torch.uint8), []
    order = [int(i) for i in rng.permutation(n_cases)]
    per_case = [count // n_cases + (1 if k < count % n_cases else 0) for k in range(n_cases)]
    per_case_patches: list[list[tuple[torch.Tensor, torch.Tensor, str]]] = []
    size = np.array(patch, dtype=int)
    for idx, n in zip(order, per_case):
        if n == 0:
            continue
        vol = volumes[idx]
        img = torch.as_tensor(vol["image"].as_tensor() if hasattr(vol["image"], "as_tensor") else vol["image"])
        lab = torch.as_tensor(vol["label"].as_tensor() if hasattr(vol["label"], "as_tensor") else vol["label"])
        shape = np.array(img.shape[1:], dtype=int)
        if np.any(shape < size):
            raise ValueError(f"volume of case {vol.get('case_id')!r} ({tuple(shape)}) is smaller than the patch")
        present = [c for c in range(1, num_classes) if bool((lab == c).any())]
        mine = []
        for _ in range(n):
            if present:
                c = present[int(rng.integers(len(present)))]
                where = torch.nonzero(lab[0] == c)
                centre = where[int(rng.integers(len(where)))].numpy()
            else:
                centre = np.array([int(rng.integers(s)) for s in shape])
            start = np.clip(centre - size // 2, 0, shape - size)
            sl = tuple(slice(int(a), int(a + b)) for a, b in zip(start, size))
            window = (slice(None), *sl)
            mine.append((img[window].to(torch.float16), lab[window].to(torch.uint8), str(vol.get("case_id"))))
        per_case_patches.append(mine)
    ordered = [p for k in range(max(per_case)) for case in per_case_patches if k < len(case) for p in [case[k]]]
    images = torch.stack([p[0] for p in ordered]).contiguous()
    labels = torch.stack([p[1] for p in ordered]).contiguous()
    return images, labels, [p[2] for p in ordered]


class PatchGroup(ExemplarsBuffer):
    """One domain's stored patches (an Avalanche ``ExemplarsBuffer``); shrinking keeps a prefix."""

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, case_ids: Sequence[str], domain: str, transform: Any
    ) -> None:
        super().__init__(int(images.shape[0]))
        self.images, self.labels, self.case_ids, self.domain = images, labels, list(case_ids), domain
        self.transform = transform
        self._dataset: AvalancheDataset | None = None

    @property
    def buffer(self) -> AvalancheDataset:
        from medattn.continual.scenario import avalanche_dataset

        if self._dataset is None:
            self._dataset = avalanche_dataset(
                MemoryPatches(self.images, self.labels, self.case_ids, self.domain, self.transform)
            )
        return self._dataset

    @buffer.setter
    def buffer(self, new_buffer: AvalancheDataset) -> None:
        raise AttributeError("a PatchGroup's buffer is built from its patches; use resize()")

    def resize(self, strategy: Any, new_size: int) -> None:
        self.max_size = int(new_size)
        if self.images.shape[0] > self.max_size:
            self.images = self.images[: self.max_size].clone()
            self.labels = self.labels[: self.max_size].clone()
            self.case_ids = self.case_ids[: self.max_size]
            self._dataset = None

    @property
    def voxels(self) -> int:
        return int(self.images.shape[0] * math.prod(self.images.shape[2:])) if self.images.numel() else 0


class ForegroundPatchBuffer(BalancedExemplarsBuffer[PatchGroup]):
    """Domain-balanced patch memory (see the module docstring).

    Args:
        mem_size: total patches; None when ``memory_fraction`` sets the budget.
        memory_fraction: budget as a fraction of the voxels of the training volumes seen so far.
        patch_size: stored patch size (X, Y, Z).
        num_classes: K, background included.
        transform_factory: builds the augmentation applied when a patch is replayed (None: none).
        seed: seed of the patch draw (combined with the domain's position in the stream).
        min_patches_per_domain: the fraction budget is raised to at least this many patches per learned domain
            (0: no floor); an explicit ``mem_size`` is not raised (see the module docstring).
    """

    max_size: int  # Avalanche's ExemplarsBuffer attribute: the total budget in patches

    def __init__(
        self,
        *,
        mem_size: int | None,
        memory_fraction: float | None,
        patch_size: Sequence[int],
        num_classes: int,
        transform_factory: Callable[[], Any] | None = None,
        seed: int = 0,
        min_patches_per_domain: int = MIN_PATCHES_PER_DOMAIN,
    ) -> None:
        if (mem_size is None) == (memory_fraction is None):
            raise ConfigError("replay: give exactly one of mem_size (patches) and memory_fraction (of the old data)")
        if mem_size is not None and (isinstance(mem_size, bool) or not isinstance(mem_size, int) or mem_size < 0):
            raise ConfigError(f"replay: mem_size must be a number of patches >= 0, got {mem_size!r}")
        if memory_fraction is not None and not 0 < float(memory_fraction) <= 1:
            raise ConfigError(f"replay: memory_fraction must lie in (0, 1], got {memory_fraction!r}")
        floor = min_patches_per_domain
        if isinstance(floor, bool) or not isinstance(floor, int) or floor < 0:
            raise ConfigError(
                f"replay: min_patches_per_domain must be a number of patches >= 0 (0: none), got {floor!r}"
            )
        super().__init__(max_size=int(mem_size or 0), adaptive_size=True)
        self.memory_fraction = None if memory_fraction is None else float(memory_fraction)
        self.patch_size = tuple(int(p) for p in patch_size)
        self.num_classes = int(num_classes)
        self.transform = transform_factory() if transform_factory is not None else None
        self.seed = int(seed)
        self.min_patches_per_domain = int(floor)
        self.num_exps = 0
        self.seen_voxels = 0

    def seed_transform(self, seed: int) -> None:
        """Reseed the replay augmentation (called before each training experience, so resumed runs match)."""
        if self.transform is not None and hasattr(self.transform, "set_random_state"):
            self.transform.set_random_state(seed=int(seed) % (2**32))

    @property
    def stored_voxels(self) -> int:
        return sum(g.voxels for g in self.buffer_groups.values())

    @property
    def stored_per_domain(self) -> dict[str, int]:
        """Stored patches per domain name, in stream order."""
        out: dict[str, int] = {}
        for g in self.buffer_groups.values():
            out[g.domain] = out.get(g.domain, 0) + len(g.case_ids)
        return out

    @property
    def stored_fraction(self) -> float:
        """Stored voxels over the voxels of the training volumes seen so far."""
        return self.stored_voxels / self.seen_voxels if self.seen_voxels else 0.0

    def post_adapt(self, agent: Any, exp: Any) -> None:
        volumes = getattr(exp, "volumes", None)
        if volumes is None:
            raise ConfigError("replay needs experiences from medattn.continual.scenario (with cached volumes)")
        self.num_exps += 1
        for i in range(len(volumes)):
            self.seen_voxels += int(math.prod(volumes[i]["image"].shape[1:]))
        self._set_budget()
        lens = self.get_group_lengths(self.num_exps)
        rng = np.random.default_rng([self.seed, self.num_exps])
        images, labels, ids = extract_patches(volumes, lens[-1], self.patch_size, self.num_classes, rng)
        self.buffer_groups[self.num_exps - 1] = PatchGroup(images, labels, ids, exp.domain, self.transform)
        for ll, group in zip(lens, self.buffer_groups.values()):
            group.resize(agent, ll)
        log.info(
            "replay memory: %d patches over %d domain(s) (%s), %.1f%% of the training voxels seen",
            sum(len(g.case_ids) for g in self.buffer_groups.values()),
            len(self.buffer_groups),
            ", ".join(f"{d} {n}" for d, n in self.stored_per_domain.items()),
            100 * self.stored_fraction,
        )
        if self.max_size < self.num_exps:
            log.warning("replay memory of %d patches leaves some domain without any; raise the budget", self.max_size)

    def _set_budget(self) -> None:
        """``max_size`` after a domain: the fraction budget raised to the floor, or the explicit ``mem_size``."""
        floor = self.min_patches_per_domain * self.num_exps
        if self.memory_fraction is None:  # an explicit mem_size: a hard cap, not raised
            if self.num_exps <= self.max_size < floor:
                log.warning(
                    "replay memory: mem_size %d is a hard cap, leaving %d domain(s) %d patch(es) each, below "
                    "min_patches_per_domain %d; drop mem_size (the fraction budget keeps the floor) or raise it to %d",
                    self.max_size,
                    self.num_exps,
                    self.max_size // self.num_exps,
                    self.min_patches_per_domain,
                    floor,
                )
            return
        budget = int(self.memory_fraction * self.seen_voxels // math.prod(self.patch_size))
        self.max_size = max(budget, floor)
        if floor > budget:
            log.info(
                "replay memory: the budget of %d patch(es) (memory_fraction %g of %d training voxels) is raised to "
                "%d, min_patches_per_domain %d x %d domain(s)",
                budget,
                self.memory_fraction,
                self.seen_voxels,
                self.max_size,
                self.min_patches_per_domain,
                self.num_exps,
            )

    # ---- resumable state -------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "max_size": int(self.max_size),
            "num_exps": self.num_exps,
            "seen_voxels": self.seen_voxels,
            "groups": {
                str(k): {"image": g.images, "label": g.labels, "case_ids": list(g.case_ids), "domain": g.domain}
                for k, g in self.buffer_groups.items()
            },
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.max_size = int(state["max_size"])
        self.num_exps = int(state["num_exps"])
        self.seen_voxels = int(state["seen_voxels"])
        self.buffer_groups = {
            int(k): PatchGroup(g["image"], g["label"], g["case_ids"], g["domain"], self.transform)
            for k, g in state["groups"].items()
        }


class PatchReplayPlugin(ReplayPlugin):
    """Avalanche's ``ReplayPlugin`` over a :class:`ForegroundPatchBuffer`, with resumable state."""

    def __init__(self, storage_policy: ForegroundPatchBuffer, batch_size_mem: int, seed: int = 0) -> None:
        super().__init__(mem_size=storage_policy.max_size, batch_size_mem=batch_size_mem, storage_policy=storage_policy)
        self.seed = int(seed)

    def before_training_exp(
        self, strategy: Any, num_workers: int = 0, shuffle: bool = True, drop_last: bool = False, **kwargs: Any
    ) -> None:
        policy = self.storage_policy
        if isinstance(policy, ForegroundPatchBuffer):
            policy.seed_transform(self.seed * 1_000_003 + strategy.clock.train_exp_counter)
        super().before_training_exp(strategy, num_workers=num_workers, shuffle=shuffle, drop_last=drop_last, **kwargs)

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        # ReplayPlugin calls the buffer's deprecated update(), which only forwards to post_adapt.
        self.storage_policy.post_adapt(strategy, strategy.experience)

    def state_dict(self) -> dict[str, Any]:
        return self.storage_policy.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.storage_policy.load_state_dict(state)


def build(params: Mapping[str, Any], context: MethodContext) -> MethodSpec:
    mem_size, fraction = params["mem_size"], params["memory_fraction"]
    if mem_size is not None and fraction == MEMORY_FRACTION:
        fraction = None  # an explicit patch count replaces the default fraction
    buffer = ForegroundPatchBuffer(
        mem_size=mem_size,
        memory_fraction=fraction,
        patch_size=context.patch_size,
        num_classes=context.num_classes,
        transform_factory=context.augment_transform,
        seed=context.seed,
        min_patches_per_domain=params["min_patches_per_domain"],
    )
    mem_batch = params["mem_batch"]
    if mem_batch is None:
        mem_batch = context.train_mb_size * context.samples_per_volume
    if isinstance(mem_batch, bool) or not isinstance(mem_batch, int) or mem_batch < 1:
        raise ConfigError(f"replay: mem_batch must be a positive number of patches, got {mem_batch!r}")
    plugin = PatchReplayPlugin(buffer, batch_size_mem=mem_batch, seed=context.seed)
    return MethodSpec(name="replay", plugins=[plugin], params={**params, "mem_batch": mem_batch})


METHOD = Method(
    name="replay",
    description="replay a domain-balanced memory of foreground-centred patches (Avalanche ReplayPlugin)",
    params=(
        Param("mem_size", None, "stored patches in total; when set it replaces memory_fraction"),
        Param("memory_fraction", MEMORY_FRACTION, "budget: this share of the training voxels seen so far"),
        Param("mem_batch", None, "memory patches per step; null: as many as the current domain contributes"),
        Param(
            "min_patches_per_domain",
            MIN_PATCHES_PER_DOMAIN,
            "floor of stored patches per learned domain under memory_fraction (not mem_size); 0: none",
        ),
    ),
    build=build,
)
