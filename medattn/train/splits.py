"""Which cases train and which validate: the manifest's fixed split, a deterministic k-fold split, or all.

Held-out means held out: a case listed in a domain's ``test`` split (:data:`medattn.data.manifest.TEST_SPLITS`)
never trains and never validates, so it can pick neither a checkpoint nor anything else. The rules, per domain:

* ``fixed``: the ``train`` split trains. Validation comes from the ``val`` (or ``validation``) split when the domain
  has one; otherwise from a deterministic slice of ``train``: :data:`~medattn.data.manifest.VAL_FRACTION` of its
  labelled ids (sorted, then shuffled with ``split_seed``; at least one when the domain has two or more), which then
  do not train.
* ``0``..``k-1``: the domain's labelled cases outside its test split are sorted, shuffled with ``split_seed`` and cut
  into ``k`` near-equal folds, so every fold sees every scanner and the split depends only on the ids and the seed
  (not on the order cases are listed in, nor on the training seed).
* ``all``: every labelled case outside the test splits trains; nothing validates.

``Split.description`` (and the run's ``split.json``) says where validation came from.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medattn.data.manifest import VAL_FRACTION, VALIDATION_SPLITS, Domain, Manifest
from medattn.errors import ConfigError

log = logging.getLogger(__name__)


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


def holdout(ids: Sequence[str], fraction: float = VAL_FRACTION, seed: int = 0) -> tuple[list[str], list[str]]:
    """(train, val) ids: ``round(fraction * n)`` of ``ids`` validate (at least one when n >= 2, none when n < 2).

    The ids are sorted, then shuffled with ``seed``, so the result depends only on the ids and the seed.
    """
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"validation fraction must be in (0, 1), got {fraction}")
    order = sorted(ids)
    n_val = 0 if len(order) < 2 else min(len(order) - 1, max(1, round(fraction * len(order))))
    perm = np.random.default_rng(seed).permutation(len(order))
    val_idx = set(int(i) for i in perm[:n_val])
    val = sorted(order[i] for i in val_idx)
    train = sorted(order[i] for i in range(len(order)) if i not in val_idx)
    return train, val


def has_fixed_split(manifest: Manifest) -> bool:
    """Whether every domain names a non-empty ``train`` split."""
    return all(d.splits.get("train") for d in manifest.domains)


def _labelled(d: Domain) -> list[str]:
    return [c.id for c in d.cases if c.label is not None]


def _trainable(d: Domain) -> list[str]:
    """The labelled cases of ``d`` outside its test split: what k-fold and ``--fold all`` draw from."""
    held_out = d.held_out_ids()
    return [i for i in _labelled(d) if i not in held_out]


def _nnunet_folds(manifest: Manifest) -> int:
    """How many of nnU-Net's folds (``fold<k>_train``/``fold<k>_val`` splits, from ``splits_final.json``) every
    domain carries; 0 when they do not all carry the same complete set."""
    counts = set()
    for d in manifest.domains:
        k = 0
        while f"fold{k}_train" in d.splits and f"fold{k}_val" in d.splits:
            k += 1
        counts.add(k)
    return counts.pop() if len(counts) == 1 else 0


def resolve_fold(manifest: Manifest, fold: str | None) -> str:
    """``None`` -> ``"fixed"`` when the manifest has a train split for every domain, else ``"0"``."""
    if fold is not None:
        return fold
    return "fixed" if has_fixed_split(manifest) else "0"


def _fixed(d: Domain, split_seed: int) -> tuple[list[str], list[str], str]:
    """(train, val, where validation came from) of one domain's fixed split."""
    labelled = set(_labelled(d))
    held_out = d.held_out_ids()
    train = [i for i in d.splits["train"] if i in labelled]
    listed = {i for ids in d.splits.values() for i in ids}
    unused = sorted(labelled - listed)
    if unused:  # a case added to the manifest without adding it to a split
        log.warning(
            "domain %r: %d labelled case(s) are in none of its splits and are not used: %s%s",
            d.name,
            len(unused),
            unused[:5],
            " ..." if len(unused) > 5 else "",
        )
    leaked = sorted(set(train) & held_out)
    if leaked:
        raise ConfigError(
            f"domain {d.name!r}: case(s) {leaked[:5]} are in both its 'train' and its 'test' split; "
            "a test case must not train"
        )
    name = next((s for s in VALIDATION_SPLITS if d.splits.get(s)), None)
    if name is not None:
        val = [i for i in d.splits[name] if i in labelled]
        leaked = sorted(set(val) & held_out)
        if leaked:
            raise ConfigError(
                f"domain {d.name!r}: case(s) {leaked[:5]} are in both its {name!r} and its 'test' split; "
                "a test case must not pick a checkpoint"
            )
        return train, val, f"its '{name}' split"
    train, val = holdout(train, VAL_FRACTION, split_seed)
    return train, val, f"{VAL_FRACTION:.0%} of its 'train' split held back (split seed {split_seed})"


def make_split(manifest: Manifest, fold: str, folds: int = 5, split_seed: int = 0) -> Split:
    """The training and validation cases of ``manifest`` (labelled cases only; unlabelled ones are skipped).

    Cases of a domain's ``test`` split are left out of every mode (see the module docstring).

    Args:
        fold: ``"0"``..``"k-1"`` (k-fold over the cases outside the test split), ``"fixed"`` (each domain's
            ``train`` split, validated on its ``val``/``validation`` split or else on a held-back
            :data:`~medattn.data.manifest.VAL_FRACTION` of ``train``) or ``"all"`` (every case outside the test split
            trains; nothing validates).
        folds: k of the k-fold split.
        split_seed: seed of the k-fold shuffle and of the held-back slice of ``train``.

    Raises:
        ConfigError: an unknown fold, no ``train`` split for ``fixed``, a case in both a train (or validation) and
            a test split, or nothing to train on.
    """
    train: list[str] = []
    val: list[str] = []
    unlabelled = [c.id for _, c in manifest.iter_cases() if c.label is None]
    if unlabelled:
        log.warning("%d case(s) have no label and are left out of training: %s", len(unlabelled), unlabelled[:5])
    n_test = sum(len(d.held_out_ids()) for d in manifest.domains)
    left_out = f"; {n_test} test case(s) left out" if n_test else ""
    if fold == "all":
        for d in manifest.domains:
            train += _trainable(d)
        desc = f"all cases, no validation{left_out}"
    elif fold == "fixed":
        if not has_fixed_split(manifest):
            missing = [d.name for d in manifest.domains if not d.splits.get("train")]
            raise ConfigError(f"--fold fixed: domain(s) {missing} have no 'train' split in the manifest; use --fold 0")
        sources = []
        for d in manifest.domains:
            t, v, source = _fixed(d, split_seed)
            train += t
            val += v
            sources.append(f"{d.name}: {source}" if len(manifest.domains) > 1 else source)
        desc = f"the manifest's fixed split (train; validation from {', '.join(sources)}){left_out}"
    else:
        if not fold.isdigit():
            raise ConfigError(f"fold: expected 0..{folds - 1}, 'fixed' or 'all', got {fold!r}")
        pool = sum(len(_trainable(d)) for d in manifest.domains)
        if pool < folds:
            raise ConfigError(
                f"{manifest.name}: {folds} folds need at least {folds} labelled cases outside the test split, "
                f"found {pool}: some folds would validate on nothing and train on the same cases"
            )
        nnunet = _nnunet_folds(manifest)
        if nnunet:  # the dataset's own folds (nnU-Net's splits_final.json), kept so that a patient stays on one side
            if folds != nnunet:
                raise ConfigError(
                    f"{manifest.name} carries nnU-Net's {nnunet} folds (splits_final.json); use --folds {nnunet}"
                )
            if int(fold) >= folds:
                raise ConfigError(f"fold {fold} is outside 0..{folds - 1}")
            for d in manifest.domains:
                usable = set(_trainable(d))
                train += [i for i in d.splits[f"fold{fold}_train"] if i in usable]
                val += [i for i in d.splits[f"fold{fold}_val"] if i in usable]
            desc = f"fold {fold} of nnU-Net's {folds} (the dataset's splits_final.json){left_out}"
        else:
            for d in manifest.domains:
                t, v = kfold(_trainable(d), folds, int(fold), split_seed)
                train += t
                val += v
            desc = f"fold {fold} of {folds} (split seed {split_seed}, stratified by domain){left_out}"
        if not val:  # the domains stratified apart: each has fewer cases than folds
            sizes = {d.name: len(_trainable(d)) for d in manifest.domains}
            raise ConfigError(
                f"{manifest.name}: fold {fold} of {folds} validates on no case (labelled cases outside the test "
                f"split per domain: {sizes}; each domain is split into {folds} folds); use fewer folds"
            )
    if not train:
        raise ConfigError(f"{manifest.name}: no labelled case to train on ({desc})")
    overlap = set(train) & set(val)
    if overlap:
        raise ConfigError(
            f"{manifest.name}: cases {sorted(overlap)[:5]} are in both the train and the validation split"
        )
    return Split(tuple(train), tuple(val), desc)
