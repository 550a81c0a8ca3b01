"""Which cases train and which validate: a deterministic k-fold split, the manifest's fixed split, or all.

The k-fold split is stratified by domain: each domain's labelled case ids are sorted, shuffled with
``split_seed`` and cut into ``k`` near-equal folds, so every fold sees every scanner and the split depends only on
the ids and the seed (not on the order cases are listed in, nor on the training seed).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medattn.data.manifest import Domain, Manifest
from medattn.errors import ConfigError

log = logging.getLogger(__name__)

#: Split names read as the validation side of a fixed split, in order of preference.
VALIDATION_SPLITS = ("val", "validation", "test")


@dataclass(frozen=True)
class Split:
    """Case ids for training and validation, and how they were chosen (e.g. ``"fold 0 of 5 (seed 0)"``)."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    description: str

    def to_dict(self) -> dict[str, object]:
        return {"train": list(self.train), "val": list(self.val), "description": self.description}


def kfold(ids: Sequence[str], k: int, fold: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """(train, val) ids of ``fold`` in a k-fold split of ``ids`` (sorted, then shuffled with ``seed``).

    With fewer than ``k`` ids some folds have no validation case.
    """
    if not 0 <= fold < k:
        raise ConfigError(f"fold {fold} is outside 0..{k - 1}")
    order = sorted(ids)
    perm = np.random.default_rng(seed).permutation(len(order))
    chunks = np.array_split(perm, k)
    val_idx = set(int(i) for i in chunks[fold])
    val = sorted(order[i] for i in val_idx)
    train = sorted(order[i] for i in range(len(order)) if i not in val_idx)
    return train, val


def has_fixed_split(manifest: Manifest) -> bool:
    """Whether every domain names a non-empty ``train`` split."""
    return all(d.splits.get("train") for d in manifest.domains)


def _labelled(d: Domain) -> list[str]:
    return [c.id for c in d.cases if c.label is not None]


def resolve_fold(manifest: Manifest, fold: str | None) -> str:
    """``None`` -> ``"fixed"`` when the manifest has a train split for every domain, else ``"0"``."""
    if fold is not None:
        return fold
    return "fixed" if has_fixed_split(manifest) else "0"


def make_split(manifest: Manifest, fold: str, folds: int = 5, split_seed: int = 0) -> Split:
    """The training and validation cases of ``manifest`` (labelled cases only; unlabelled ones are skipped).

    Args:
        fold: ``"0"``..``"k-1"``, ``"fixed"`` (each domain's ``train`` split against its ``val``, ``validation``
            or ``test`` split) or ``"all"`` (every labelled case trains; nothing validates).
    """
    train: list[str] = []
    val: list[str] = []
    unlabelled = [c.id for _, c in manifest.iter_cases() if c.label is None]
    if unlabelled:
        log.warning("%d case(s) have no label and are left out of training: %s", len(unlabelled), unlabelled[:5])
    if fold == "all":
        for d in manifest.domains:
            train += _labelled(d)
        desc = "all cases, no validation"
    elif fold == "fixed":
        if not has_fixed_split(manifest):
            missing = [d.name for d in manifest.domains if not d.splits.get("train")]
            raise ConfigError(f"--fold fixed: domain(s) {missing} have no 'train' split in the manifest; use --fold 0")
        names = set()
        for d in manifest.domains:
            labelled = set(_labelled(d))
            train += [i for i in d.splits["train"] if i in labelled]
            name = next((s for s in VALIDATION_SPLITS if s in d.splits), None)
            if name is not None:
                names.add(name)
                val += [i for i in d.splits[name] if i in labelled]
        desc = f"the manifest's fixed split (train against {'/'.join(sorted(names)) or 'nothing'})"
    else:
        if not fold.isdigit():
            raise ConfigError(f"fold: expected 0..{folds - 1}, 'fixed' or 'all', got {fold!r}")
        for d in manifest.domains:
            t, v = kfold(_labelled(d), folds, int(fold), split_seed)
            train += t
            val += v
        desc = f"fold {fold} of {folds} (split seed {split_seed}, stratified by domain)"
    if not train:
        raise ConfigError(f"{manifest.name}: no labelled case to train on ({desc})")
    overlap = set(train) & set(val)
    if overlap:
        raise ConfigError(
            f"{manifest.name}: cases {sorted(overlap)[:5]} are in both the train and the validation split"
        )
    return Split(tuple(train), tuple(val), desc)
