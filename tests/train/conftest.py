"""Small real-data runs shared by the training tests: a handful of hippocampus cases and a tiny network."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from medattn.data.importers import load_dataset
from medattn.data.manifest import Manifest

#: Tiny settings: a 3-stage U-Net on 24x32x24 patches, 4 steps per epoch, augmentation on (its random state is
#: part of what resume must restore).
TINY = {
    "model": "ag_unet",
    "widths": "8,16,32",
    "epochs": 2,
    "iterations": 4,
    "patch_size": "24,32,24",
    "lr": 0.01,
    "seed": 3,
    "tensorboard": True,
}


def hippocampus_subset(shared_data: Path, n_train: int = 4, n_val: int = 2) -> Manifest:
    """The first ``n_train + n_val`` hippocampus cases with a fixed split (the last ``n_val`` validate)."""
    m = load_dataset(shared_data / "Task04_Hippocampus")
    d = m.domains[0]
    cases = d.cases[: n_train + n_val]
    ids = [c.id for c in cases]
    d = replace(d, cases=cases, splits={"train": tuple(ids[:n_train]), "test": tuple(ids[n_train:])})
    return replace(m, domains=(d,))


@pytest.fixture(scope="module")
def hippo_manifest(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A manifest file of the subset, in a temporary folder (its root points at the shared data)."""
    path = tmp_path_factory.mktemp("hippo") / "manifest.json"
    return hippocampus_subset(shared_data).save(path)
