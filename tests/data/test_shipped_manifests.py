"""The manifests shipped in data_manifests/: held-out test splits, validation carved from training cases.

No data needed: only the JSON files are read.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from medattn.data.manifest import Manifest
from medattn.train.splits import make_split

DATA_MANIFESTS = Path(__file__).resolve().parents[2] / "data_manifests"
MANIFESTS = sorted(DATA_MANIFESTS.glob("*.json"))
#: sha256 (first 16 hex digits) of the sorted test ids joined by newlines, as committed before validation splits
#: existed: the test figures in the README stay comparable across the change.
TEST_IDS = {
    ("hippocampus.json", "vumc"): (42, "74320960d14fe614"),
    ("brats_sites.json", "CBICA"): (2, "549af086ee6bf10f"),
    ("brats_sites.json", "TCIA"): (1, "9d64b325a43d89ca"),
}


def _digest(ids: tuple[str, ...]) -> str:
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:16]


def test_the_shipped_manifests_are_there() -> None:
    names = {p.name for p in MANIFESTS}
    assert {"hippocampus.json", "brats_sites.json", "spinalcord.json"} <= names
    assert {name for name, _ in TEST_IDS} <= names


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_split_manifest_has_disjoint_train_val_test(path: Path) -> None:
    m = Manifest.load(path)
    for d in m.domains:
        if not d.splits:
            continue
        assert set(d.splits) == {"train", "val", "test"}, f"{path.name}:{d.name} splits {sorted(d.splits)}"
        train, val, test = (set(d.splits[k]) for k in ("train", "val", "test"))
        assert train and val and test, f"{path.name}:{d.name}: an empty split"
        assert not train & val and not train & test and not val & test, f"{path.name}:{d.name}: splits overlap"
        assert train | val | test == {c.id for c in d.cases}, f"{path.name}:{d.name}: splits do not cover the cases"
    if any(d.splits for d in m.domains):
        split = make_split(m, "fixed")
        assert set(split.val) == {i for d in m.domains for i in d.splits["val"]}
        assert not (set(split.train) | set(split.val)) & {i for d in m.domains for i in d.splits["test"]}


@pytest.mark.parametrize(("name", "domain"), sorted(TEST_IDS))
def test_test_ids_are_unchanged(name: str, domain: str) -> None:
    m = Manifest.load(DATA_MANIFESTS / name)
    test = m.domain(domain).splits["test"]
    assert (len(test), _digest(test)) == TEST_IDS[(name, domain)]


def test_hippocampus_split_sizes() -> None:
    m = Manifest.load(DATA_MANIFESTS / "hippocampus.json")
    assert {k: len(v) for k, v in m.domain("vumc").splits.items()} == {"train": 145, "val": 21, "test": 42}
