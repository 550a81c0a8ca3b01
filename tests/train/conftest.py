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
    d = replace(d, cases=cases, splits={"train": tuple(ids[:n_train]), "val": tuple(ids[n_train:])})
    return replace(m, domains=(d,))


@pytest.fixture(scope="module")
def hippo_manifest(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A manifest file of the subset, in a temporary folder (its root points at the shared data)."""
    path = tmp_path_factory.mktemp("hippo") / "manifest.json"
    return hippocampus_subset(shared_data).save(path)


def kill_and_resume(config_path: Path, manifest: Manifest, run: Path) -> tuple[dict, dict]:
    """Train with the config of ``config_path`` (a full run's ``config.json``) into ``run``, kill it after its
    first epoch, resume it to the end; return (the killed run's checkpoint after epoch 1, the resumed run's
    final checkpoint)."""
    import torch

    from medattn.train.config import TrainConfig
    from medattn.train.logs import read_csv
    from medattn.train.trainer import EpochRecord, train

    def kill_after_first_epoch(record: EpochRecord) -> None:
        if record.epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig.load(config_path), manifest, run, progress=False, on_epoch_end=kill_after_first_epoch)
    assert [r["epoch"] for r in read_csv(run / "log.csv")] == [1]
    half = torch.load(run / "checkpoint.pt", weights_only=True)
    result = train(None, manifest, run, resume=True, progress=False)
    assert result.epochs == 2
    return half, torch.load(run / "checkpoint.pt", weights_only=True)
