"""Deterministic k-fold and fixed splits."""

from __future__ import annotations

from dataclasses import replace

import pytest

from medattn.data.manifest import Case, Channel, Domain, Manifest
from medattn.errors import ConfigError
from medattn.train.splits import kfold, make_split, resolve_fold


def manifest(splits: bool = False, n: tuple[int, int] = (7, 5)) -> Manifest:
    domains = []
    for name, count in zip(("siteA", "siteB"), n):
        cases = tuple(Case(f"{name}_{i:02d}", (f"{name}/{i}.nii.gz",), f"{name}/{i}_seg.nii.gz") for i in range(count))
        sp = {"train": tuple(c.id for c in cases[:-2]), "test": tuple(c.id for c in cases[-2:])} if splits else {}
        domains.append(Domain(name, cases, splits=sp))
    return Manifest("toy", (Channel("T1"),), {0: "bg", 1: "fg"}, tuple(domains))


def test_kfold_partitions_ids_deterministically_whatever_their_order() -> None:
    ids = [f"c{i:02d}" for i in range(11)]
    vals = [kfold(ids, 5, f, seed=0)[1] for f in range(5)]
    assert sorted(v for fold in vals for v in fold) == ids  # every id validates exactly once
    assert [len(v) for v in vals] == [3, 2, 2, 2, 2]
    for f in range(5):
        train, val = kfold(list(reversed(ids)), 5, f, seed=0)
        assert val == vals[f] and sorted(train + val) == ids and not set(train) & set(val)
    assert [kfold(ids, 5, f, seed=1)[1] for f in range(5)] != vals  # the seed matters
    with pytest.raises(ConfigError):
        kfold(ids, 5, 5)


def test_kfold_split_is_stratified_by_domain() -> None:
    m = manifest()
    split = make_split(m, "0", folds=5, split_seed=0)
    assert {i.split("_")[0] for i in split.val} == {"siteA", "siteB"}
    assert len(split.train) + len(split.val) == 12
    union = set()
    for f in range(5):
        union |= set(make_split(m, str(f), 5, 0).val)
    assert len(union) == 12


def test_fixed_split_and_default_fold() -> None:
    m = manifest(splits=True)
    assert resolve_fold(m, None) == "fixed"
    assert resolve_fold(manifest(), None) == "0"
    split = make_split(m, "fixed")
    assert split.val == ("siteA_05", "siteA_06", "siteB_03", "siteB_04")
    assert "test" in split.description
    with pytest.raises(ConfigError, match="no 'train' split"):
        make_split(manifest(), "fixed")
    everything = make_split(m, "all")
    assert len(everything.train) == 12 and everything.val == ()


def test_unlabelled_cases_are_left_out() -> None:
    m = manifest()
    d = m.domains[0]
    d = replace(d, cases=(replace(d.cases[0], label=None), *d.cases[1:]))
    split = make_split(replace(m, domains=(d, m.domains[1])), "all")
    assert "siteA_00" not in split.train and len(split.train) == 11
