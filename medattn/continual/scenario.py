"""A manifest as an Avalanche domain-incremental benchmark: one experience per domain, in the order given.

``domain_scenario(manifest, plan)`` returns an Avalanche ``CLScenario`` with a ``train_stream`` and a
``test_stream``; experience ``i`` of both streams is domain ``i`` (its train split and its test split). Each
experience is a :class:`DomainExperience` (an Avalanche ``DatasetExperience``) whose ``dataset`` is an
``AvalancheDataset`` over MONAI data:

* **train**: the plan's deterministic preprocessing (load, orient, resample, normalise, crop to the body, pad to the
  patch) cached once per volume (``make_dataset``: memory, disk or none), then, per access, the random part of
  :func:`~medattn.data.transforms.train_transforms`: ``samples_per_volume`` foreground-oversampled patches and the
  augmentations. ``experience.volumes`` exposes the cached whole volumes (replay draws its patches from them).
* **test**: whole preprocessed volumes with labels (:func:`~medattn.data.transforms.eval_transforms`), cached,
  evaluated by sliding window.

Every sample carries Avalanche task label 0: the scenario is domain-incremental (the same classes everywhere, no
task id at test time). Mini-batches come from :func:`~medattn.continual.collate.collate_segmentation`.

Splits: a domain's own ``train``/``test`` split when the manifest has one; with a ``test`` split and no ``train``
split, the other labelled cases train; with neither, a deterministic split of its labelled cases (sorted ids, the
last ``test_fraction`` tested), logged as a warning so the choice is visible. The cases of a domain's ``test``
split are never trained on (nor learned from unlabelled), also when the run is scored on ``val``.

Unlabelled cases: a training case without a label (the manifest gives none, or ``medattn adapt --labelled N`` took
it away, :mod:`medattn.continual.labels`) is not trained on by the supervised methods; its image, preprocessed the
same way and cached, is ``experience.unlabelled``, which label-free methods read (self-training's pseudo-labels).
Test cases need their labels: they are what every method is scored on.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avalanche.benchmarks import CLScenario, DatasetExperience
from avalanche.benchmarks.scenarios.generic_scenario import EagerCLStream
from avalanche.benchmarks.scenarios.task_aware import with_task_labels
from avalanche.benchmarks.utils import AvalancheDataset
from avalanche.benchmarks.utils.data_attribute import TaskLabels
from avalanche.benchmarks.utils.flat_data import ConstantSequence
from torch.utils.data import Dataset

from medattn.continual.collate import SampleGroup, collate_segmentation
from medattn.data.fingerprint import native_spacing
from medattn.data.manifest import Manifest
from medattn.data.plan import Plan
from medattn.data.transforms import AugmentConfig, eval_transforms, make_dataset, train_transforms
from medattn.errors import ConfigError, DataError
from medattn.typing import Triple

log = logging.getLogger(__name__)

#: Domain-incremental: every experience shares task label 0.
TASK_LABEL = 0


class DomainExperience(DatasetExperience[AvalancheDataset]):
    """One domain's data in a stream (an Avalanche ``DatasetExperience``).

    Attributes:
        dataset: the ``AvalancheDataset`` (train: random patches; test: whole volumes).
        domain: the manifest's domain name.
        split: ``"train"`` or ``"test"``.
        case_ids: the cases of this split, in order.
        volumes: train experiences only: the cached, preprocessed whole volumes (dicts with ``image`` (C, X, Y, Z)
            and ``label`` (1, X, Y, Z), padded to at least the patch size), or None.
        unlabelled: train experiences only: the cached, preprocessed images of the training cases without a label
            (dicts with ``image`` only, padded to at least the patch size), or None when there are none.
        unlabelled_ids: their case ids, in order.
        unlabelled_spacing: their native voxel sizes on the RAS grid (from the headers of their first channel),
            in the same order: what a label-free method knows of the new scanner's resolution.
        plan_spacing: the spacing the volumes were resampled to, or None.
        random_transform: train experiences only: the random part of the pipeline (reseed it with
            :meth:`seed`), or None.
        patch_size: the training patch (X, Y, Z) in voxels.
    """

    def __init__(
        self,
        *,
        dataset: AvalancheDataset,
        domain: str,
        split: str,
        case_ids: Sequence[str],
        patch_size: Triple,
        volumes: Dataset | None = None,
        random_transform: Any = None,
        unlabelled: Dataset | None = None,
        unlabelled_ids: Sequence[str] = (),
        unlabelled_spacing: Sequence[Sequence[float]] = (),
        plan_spacing: Sequence[float] | None = None,
    ) -> None:
        super().__init__(dataset=dataset)
        self.domain = domain
        self.split = split
        self.case_ids = tuple(case_ids)
        self.patch_size = patch_size
        self.volumes = volumes
        self.random_transform = random_transform
        self.unlabelled = unlabelled
        self.unlabelled_ids = tuple(unlabelled_ids)
        self.unlabelled_spacing = tuple(tuple(float(v) for v in sp) for sp in unlabelled_spacing)
        self.plan_spacing = None if plan_spacing is None else tuple(float(v) for v in plan_spacing)

    def seed(self, seed: int) -> None:
        """Reseed the MONAI random transforms (patch sampling, augmentation) of this experience."""
        if self.random_transform is not None:
            self.random_transform.set_random_state(seed=int(seed) % (2**32))


class PatchDataset(Dataset):
    """Random patches of cached volumes: ``transform(deepcopy(volumes[i]))``.

    The copy keeps the cache intact: MONAI's cropping returns views of the cached tensors, and an augmentation
    that worked in place would otherwise write into the cache.
    """

    def __init__(self, volumes: Any, transform: Any) -> None:
        self.volumes = volumes
        self.transform = transform

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, index: int) -> Any:
        from monai.transforms import apply_transform

        return apply_transform(self.transform, copy.deepcopy(self.volumes[index]))


def avalanche_dataset(data: Dataset) -> AvalancheDataset:
    """An ``AvalancheDataset`` over a MONAI dataset: task label 0 per item, :func:`collate_segmentation`."""
    group = SampleGroup(data)
    # an empty ConstantSequence breaks Avalanche's task-label lookup (its fast path reads element 0)
    labels = ConstantSequence(TASK_LABEL, len(group)) if len(group) else []
    return AvalancheDataset(
        [group],
        data_attributes=[TaskLabels(labels)],
        collate_fn=collate_segmentation,
    )


def domain_split(
    manifest: Manifest, domain: str, train_split: str = "train", test_split: str = "test", test_fraction: float = 0.25
) -> tuple[list[str], list[str]]:
    """(train ids, test ids) of a domain's labelled cases; see the module docstring.

    A domain whose training cases are all unlabelled (:func:`unlabelled_ids`) may have no labelled training case;
    its test split must still hold a labelled case.
    """
    d = manifest.domain(domain)
    labelled = [c.id for c in d.cases if c.label is not None]
    pool = unlabelled_ids(manifest, domain, train_split, test_split)
    if len(labelled) < (1 if pool else 2):
        raise DataError(f"domain {domain!r} has {len(labelled)} labelled case(s); adapting needs at least 2")
    held = d.held_out_ids()  # the manifest's test cases: never trained on, whichever split is tested
    if train_split in d.splits and test_split in d.splits:
        train = [i for i in d.splits[train_split] if i in labelled and i not in held]
        test = [i for i in d.splits[test_split] if i in labelled]
        if not train and pool and test:
            return train, test
    elif test_split in d.splits:  # a test split and no train split: train on the other labelled cases
        test = [i for i in d.splits[test_split] if i in labelled]
        train = [i for i in labelled if i not in {*test, *held}]
        log.warning(
            "domain %r has no %r split; training on its %d labelled case(s) outside its %r split",
            domain,
            train_split,
            len(train),
            test_split,
        )
    else:
        ids = sorted(i for i in labelled if i not in held)
        n_test = max(1, round(test_fraction * len(ids)))
        train, test = ids[: len(ids) - n_test], ids[len(ids) - n_test :]
        log.warning(
            "domain %r has no %r split; testing on the last %d of its %d labelled case(s)%s: %s",
            domain,
            test_split,
            len(test),
            len(ids),
            f" outside its test split ({len(held)} held out)" if held else "",
            ", ".join(test),
        )
    if not train or not test:
        raise DataError(f"domain {domain!r}: the split leaves {len(train)} train and {len(test)} test case(s)")
    return train, test


def unlabelled_ids(manifest: Manifest, domain: str, train_split: str = "train", test_split: str = "test") -> list[str]:
    """Ids of a domain's training cases without a label: those of its ``train_split`` when it has fixed splits,
    else every case without a label (none of them can be tested)."""
    d = manifest.domain(domain)
    held = d.held_out_ids()  # unlabelled test images are not learned from either (label-free methods would)
    bare = [c.id for c in d.cases if c.label is None and c.id not in held]
    if train_split in d.splits and test_split in d.splits:
        wanted = set(d.splits[train_split])
        return [i for i in bare if i in wanted]
    return bare


@dataclass(frozen=True)
class ScenarioOptions:
    """How experiences are built.

    Attributes:
        domains: domain names in stream order; None: the manifest's order.
        patch_size: training patch (X, Y, Z); None: the plan's.
        samples_per_volume: patches drawn per volume access.
        augment: augmentation settings; None: the defaults.
        cache: ``"memory"``, ``"disk"`` (in ``cache_dir``) or ``"none"``.
        cache_dir: folder for ``"disk"`` caching.
        test_fraction: share of a domain's cases tested when the manifest has no split.
        eval_split: the split the test stream holds (``"test"``, or ``"val"`` for choosing hyper-parameters); a
            domain without fixed splits is split by ``test_fraction`` either way.
        workers: threads filling the memory cache.
        progress: show caching progress.
    """

    domains: tuple[str, ...] | None = None
    patch_size: Triple | None = None
    samples_per_volume: int = 2
    augment: AugmentConfig | None = None
    cache: str = "memory"
    cache_dir: str | None = None
    test_fraction: float = 0.25
    eval_split: str = "test"
    workers: int = 0
    progress: bool = False


def _split_random(transform: Any) -> tuple[Any, Any]:
    """(deterministic prefix, random suffix) of a MONAI Compose, split at the first random transform."""
    from monai.transforms import Compose, Randomizable

    first = transform.get_index_of_first(lambda t: isinstance(t, Randomizable))
    if first is None:
        return transform, Compose([])
    return Compose(transform.transforms[:first]), Compose(transform.transforms[first:])


def domain_scenario(
    manifest: Manifest, plan: Plan, options: ScenarioOptions | None = None, data_root: str | Path | None = None
) -> CLScenario:
    """Build the domain-incremental Avalanche benchmark (see the module docstring).

    Args:
        manifest: the dataset; its domains (or ``options.domains``) become the experiences, in that order.
        plan: the model's plan (preprocessing and patch geometry).
        options: see :class:`ScenarioOptions`.
        data_root: overrides the manifest's data root.

    Returns:
        An Avalanche ``CLScenario`` with ``train_stream`` and ``test_stream`` of :class:`DomainExperience`,
        decorated with task labels (``experience.task_label == 0``).
    """
    opts = options or ScenarioOptions()
    names = list(opts.domains) if opts.domains else manifest.domain_names
    if len(set(names)) != len(names):
        raise ConfigError(f"domains: each domain may appear once in the stream, got {names}")
    for n in names:
        manifest.domain(n)  # raises a ManifestError naming the known domains
    if opts.samples_per_volume < 1:
        raise ConfigError(f"samples_per_volume: expected >= 1, got {opts.samples_per_volume}")
    if int(manifest.num_channels) != plan.num_channels:
        raise DataError(
            f"the data have {manifest.num_channels} channel(s) {[c.name for c in manifest.channels]}, the model's "
            f"plan expects {plan.num_channels} ({[c.name for c in plan.channels]})"
        )
    train_plan = plan if opts.patch_size is None else dataclasses.replace(plan, patch_size=_triple(opts.patch_size))
    patch = tuple(int(v) for v in train_plan.patch_size)
    train_exps: list[DomainExperience] = []
    test_exps: list[DomainExperience] = []
    for name in names:
        train_ids, test_ids = domain_split(manifest, name, test_split=opts.eval_split, test_fraction=opts.test_fraction)
        pool_ids = unlabelled_ids(manifest, name)
        items = {d["case_id"]: d for d in manifest.datalist(name, data_root=data_root)}
        train_items = [items[i] for i in train_ids]
        test_items = [items[i] for i in test_ids]
        det, rand = _split_random(train_transforms(train_plan, opts.augment, opts.samples_per_volume))
        cache_dir = None if opts.cache_dir is None else Path(opts.cache_dir) / "train" / name
        volumes = make_dataset(train_items, det, opts.cache, cache_dir, opts.workers, opts.progress)
        unlabelled = None
        if pool_ids:
            pool_dir = None if opts.cache_dir is None else Path(opts.cache_dir) / "unlabelled" / name
            unlabelled = make_dataset(
                [items[i] for i in pool_ids], image_transforms(train_plan), opts.cache, pool_dir, opts.workers
            )
        train_exps.append(
            DomainExperience(
                dataset=avalanche_dataset(PatchDataset(volumes, rand)),
                domain=name,
                split="train",
                case_ids=train_ids,
                patch_size=(patch[0], patch[1], patch[2]),
                volumes=volumes,
                random_transform=rand,
                unlabelled=unlabelled,
                unlabelled_ids=pool_ids,
                unlabelled_spacing=[native_spacing(items[i]["image"][0]) for i in pool_ids],
                plan_spacing=train_plan.target_spacing,
            )
        )
        test_dir = None if opts.cache_dir is None else Path(opts.cache_dir) / "test" / name
        tests = make_dataset(test_items, eval_transforms(plan), opts.cache, test_dir, opts.workers, opts.progress)
        test_exps.append(
            DomainExperience(
                dataset=avalanche_dataset(tests),
                domain=name,
                split="test",
                case_ids=test_ids,
                patch_size=(patch[0], patch[1], patch[2]),
            )
        )
    bench = with_task_labels(CLScenario([EagerCLStream("train", train_exps), EagerCLStream("test", test_exps)]))
    for exp in bench.train_stream:  # a domain without labelled training cases has no item to read it from
        if not exp.task_labels:
            exp.task_label, exp.task_labels = TASK_LABEL, [TASK_LABEL]
    return bench


def image_transforms(plan: Plan) -> Any:
    """The deterministic preprocessing of a training image without its label, padded to the patch (what
    ``train_transforms``' deterministic part does to the image)."""
    from monai.transforms import Compose, SpatialPadd

    from medattn.data.transforms import IMAGE, preprocess_transforms

    return Compose(
        [
            *preprocess_transforms(plan, with_label=False),
            SpatialPadd(keys=[IMAGE], spatial_size=plan.patch_size, mode="constant"),
        ]
    )


def _triple(v: Sequence[int]) -> Triple:
    a, b, c = (int(x) for x in v)
    return (a, b, c)


def stream_domains(stream: Any) -> list[str]:
    """Domain names of a stream's experiences, in order."""
    return [exp.domain for exp in stream]
