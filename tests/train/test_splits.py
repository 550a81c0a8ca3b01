"""Deterministic k-fold and fixed splits; a test split never trains and never validates."""

from __future__ import annotations

from dataclasses import replace

import pytest

from medattn.data.manifest import Case, Channel, Domain, Manifest
from medattn.errors import ConfigError
from medattn.train.splits import VAL_FRACTION, holdout, kfold, make_split, resolve_fold


def manifest(splits: bool = False, n: tuple[int, int] = (7, 5), val: bool = False) -> Manifest:
    """Two domains; with ``splits`` the last two cases of each are its test split, with ``val`` the two before them
    its val split, and the rest its train split."""
    domains = []
    for name, count in zip(("siteA", "siteB"), n, strict=True):
        cases = tuple(Case(f"{name}_{i:02d}", (f"{name}/{i}.nii.gz",), f"{name}/{i}_seg.nii.gz") for i in range(count))
        ids = [c.id for c in cases]
        sp: dict[str, tuple[str, ...]] = {}
        if splits:
            n_val = 2 if val else 0
            sp = {"train": tuple(ids[: -2 - n_val]), "test": tuple(ids[-2:])}
            if val:
                sp["val"] = tuple(ids[-4:-2])
        domains.append(Domain(name, cases, splits=sp))
    return Manifest("toy", (Channel("T1"),), {0: "bg", 1: "fg"}, tuple(domains))


def held_out(m: Manifest) -> set[str]:
    return {i for d in m.domains for i in d.splits.get("test", ())}


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


def test_default_fold_and_missing_train_split() -> None:
    assert resolve_fold(manifest(splits=True), None) == "fixed"
    assert resolve_fold(manifest(), None) == "0"
    with pytest.raises(ConfigError, match="no 'train' split"):
        make_split(manifest(), "fixed")


def test_fixed_split_without_val_validates_on_a_slice_of_train_never_on_test() -> None:
    m = manifest(splits=True, n=(12, 5))  # train splits of 10 and 3 cases, test splits of 2 each
    split = make_split(m, "fixed", split_seed=0)
    train_splits = {i for d in m.domains for i in d.splits["train"]}
    assert not (set(split.train) | set(split.val)) & held_out(m)
    assert set(split.train) | set(split.val) == train_splits and not set(split.train) & set(split.val)
    # 20% of each domain's train split, at least one case: 2 of siteA's 10, 1 of siteB's 3.
    assert sorted(i.split("_")[0] for i in split.val) == ["siteA", "siteA", "siteB"]
    assert VAL_FRACTION == 0.2
    assert "20% of its 'train' split held back (split seed 0)" in split.description
    assert "4 test case(s) left out" in split.description
    # Deterministic: the same ids and seed give the same slice whatever the order the cases are listed in.
    assert make_split(m, "fixed", split_seed=0) == split
    flipped = replace(
        m,
        domains=tuple(
            replace(d, cases=d.cases[::-1], splits={k: v[::-1] for k, v in d.splits.items()}) for d in m.domains
        ),
    )
    assert set(make_split(flipped, "fixed", split_seed=0).val) == set(split.val)
    assert any(set(make_split(m, "fixed", split_seed=s).val) != set(split.val) for s in (1, 2, 3))


def test_fixed_split_with_val_uses_it() -> None:
    m = manifest(splits=True, val=True)
    split = make_split(m, "fixed")
    assert split.val == ("siteA_03", "siteA_04", "siteB_01", "siteB_02")
    assert split.train == ("siteA_00", "siteA_01", "siteA_02", "siteB_00")
    assert "validation from siteA: its 'val' split, siteB: its 'val' split" in split.description
    named = replace(m, domains=tuple(replace(d, splits={**d.splits, "validation": d.splits["val"]}) for d in m.domains))
    named = replace(
        named,
        domains=tuple(replace(d, splits={k: v for k, v in d.splits.items() if k != "val"}) for d in named.domains),
    )
    assert make_split(named, "fixed").val == split.val


def test_kfold_and_all_leave_out_the_test_split() -> None:
    m = manifest(splits=True, val=True)
    test_cases = held_out(m)
    union: set[str] = set()
    for f in range(5):
        split = make_split(m, str(f), folds=5, split_seed=0)
        assert not (set(split.train) | set(split.val)) & test_cases
        assert len(split.train) + len(split.val) == 8
        union |= set(split.val)
    assert len(union) == 8  # the train and val splits are cross-validated; the test split never enters
    everything = make_split(m, "all")
    assert len(everything.train) == 8 and everything.val == () and not set(everything.train) & test_cases
    assert "4 test case(s) left out" in everything.description


def test_a_case_in_train_or_val_and_test_is_refused() -> None:
    m = manifest(splits=True, val=True)
    d = m.domains[0]
    leaky = replace(d, splits={**d.splits, "train": (*d.splits["train"], d.splits["test"][0])})
    with pytest.raises(ConfigError, match=r"siteA_05.*'train' and its 'test' split"):
        make_split(replace(m, domains=(leaky, m.domains[1])), "fixed")
    leaky = replace(d, splits={**d.splits, "val": (*d.splits["val"], d.splits["test"][0])})
    with pytest.raises(ConfigError, match=r"siteA_05.*'val' and its 'test' split"):
        make_split(replace(m, domains=(leaky, m.domains[1])), "fixed")


def test_holdout_sizes() -> None:
    ids = [f"c{i:02d}" for i in range(21)]
    train, val = holdout(ids, 0.2, seed=0)
    assert len(val) == 4 and sorted(train + val) == ids and not set(train) & set(val)
    assert holdout(ids[::-1], 0.2, seed=0) == (train, val)
    assert [len(holdout(ids[:n], 0.2)[1]) for n in (0, 1, 2, 3, 5, 8)] == [0, 0, 1, 1, 1, 2]
    with pytest.raises(ConfigError, match="fraction"):
        holdout(ids, 1.0)


def test_unlabelled_cases_are_left_out() -> None:
    m = manifest()
    d = m.domains[0]
    d = replace(d, cases=(replace(d.cases[0], label=None), *d.cases[1:]))
    split = make_split(replace(m, domains=(d, m.domains[1])), "all")
    assert "siteA_00" not in split.train and len(split.train) == 11


def test_more_folds_than_cases_is_refused() -> None:
    """10 folds of 4 + 4 cases would leave folds that validate on nothing and train on the same cases (and go into
    an ensemble as near-copies); 5 folds of two domains with 4 cases each leave fold 4 without a validation case."""
    m = manifest(n=(4, 4))
    with pytest.raises(ConfigError, match="10 folds need at least 10 labelled cases outside the test split, found 8"):
        make_split(m, "0", folds=10)
    assert make_split(m, "3", folds=5).val  # folds 0..3 each validate on a case of each domain
    with pytest.raises(ConfigError, match=r"fold 4 of 5 validates on no case .*'siteA': 4, 'siteB': 4"):
        make_split(m, "4", folds=5)


def test_a_labelled_case_in_no_split_is_named(caplog: pytest.LogCaptureFixture) -> None:
    m = manifest(splits=True)
    d = m.domains[0]
    extra = Case("siteA_new", ("siteA/new.nii.gz",), "siteA/new_seg.nii.gz")  # added without adding it to a split
    m = replace(m, domains=(replace(d, cases=(*d.cases, extra)), *m.domains[1:]))
    with caplog.at_level("WARNING"):
        split = make_split(m, "fixed")
    assert "siteA_new" not in split.train + split.val
    assert "domain 'siteA': 1 labelled case(s) are in none of its splits and are not used: ['siteA_new']" in caplog.text


def test_nnunet_folds_of_the_dataset_are_the_folds_trained() -> None:
    """A dataset imported with nnU-Net's splits_final.json (``fold<k>_train``/``fold<k>_val``) trains those folds
    (a patient's scans stay on one side), not a shuffle of medattn's; another --folds is refused."""
    m = manifest(splits=True)  # siteA_00..04 train, 05, 06 test; siteB_00..02 train, 03, 04 test
    folds = {
        "siteA": [("siteA_00", "siteA_01"), ("siteA_02", "siteA_03", "siteA_04")],
        "siteB": [("siteB_00",), ("siteB_01", "siteB_02")],
    }
    domains = []
    for d in m.domains:
        sp = dict(d.splits)
        for k in (0, 1):
            val = folds[d.name][k]
            sp[f"fold{k}_val"] = val
            sp[f"fold{k}_train"] = tuple(i for i in d.splits["train"] if i not in val)
        domains.append(replace(d, splits=sp))
    m = replace(m, domains=tuple(domains))
    split = make_split(m, "1", folds=2)
    assert sorted(split.val) == ["siteA_02", "siteA_03", "siteA_04", "siteB_01", "siteB_02"]
    assert sorted(split.train) == ["siteA_00", "siteA_01", "siteB_00"]
    assert "nnU-Net" in split.description
    with pytest.raises(ConfigError, match="carries nnU-Net's 2 folds"):
        make_split(m, "0", folds=5)
