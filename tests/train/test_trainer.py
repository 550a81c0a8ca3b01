"""Training on real hippocampus cases: the loss falls, model.pt is self-contained, and a killed run resumes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from medattn.cli import main
from medattn.data.manifest import Manifest
from medattn.errors import ConfigError
from medattn.train.config import TrainConfig
from medattn.train.logs import read_csv
from medattn.train.trainer import train
from tests.train.conftest import TINY, kill_and_resume

pytestmark = pytest.mark.realdata

RUN_FILES = ("model.pt", "model_last.pt", "checkpoint.pt", "config.json", "plan.json", "split.json", "log.csv")


@pytest.fixture(scope="module")
def full_run(hippo_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two uninterrupted epochs through the command line, options from a YAML file."""
    tmp = tmp_path_factory.mktemp("full")
    cfg = tmp / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    run = tmp / "run"
    assert main(["train", str(hippo_manifest), "--out", str(run), "--config", str(cfg), "--quiet"]) == 0
    return run


def test_training_writes_the_run_and_the_loss_falls(full_run: Path) -> None:
    for name in RUN_FILES:
        assert (full_run / name).is_file(), name
    assert any((full_run / "tensorboard").iterdir())
    rows = read_csv(full_run / "log.csv")
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[1]["train_loss"] < rows[0]["train_loss"]
    for r in rows:  # validated every epoch, Dice per class in [0, 1]
        assert 0.0 <= r["val_dice_Anterior"] <= 1.0 and 0.0 <= r["val_dice_Posterior"] <= 1.0
    assert rows[1]["lr"] < rows[0]["lr"] == TINY["lr"]
    cfg = TrainConfig.load(full_run / "config.json")  # the resolved config: plan-derived values filled in
    assert cfg.widths == (8, 16, 32) and cfg.patch_size == (24, 32, 24) and cfg.fold == "fixed"
    assert cfg.batch_size == 2 and cfg.foreground_ratio == pytest.approx(0.33)
    split = json.loads((full_run / "split.json").read_text())
    assert len(split["train"]) == 4 and len(split["val"]) == 2
    summary = json.loads((full_run / "summary.json").read_text())
    best = max(rows, key=lambda r: r["val_dice"] or -1.0)
    assert summary["best_epoch"] == best["epoch"] and summary["best_val_dice"] == pytest.approx(best["val_dice"])


PREDICT = """
import json, sys, torch
from medattn.data.transforms import inference_transforms, apply
from medattn.models.model_file import load_model
from medattn.infer.sliding import sliding_window_predict
m = load_model(sys.argv[1])
item = apply(inference_transforms(m.plan), {"image": sys.argv[2]})
r = sliding_window_predict(item["image"], m.model, m.plan.patch_size, window_batch=2, return_probabilities=True)
torch.save({"labels": r.labels, "probabilities": r.probabilities}, sys.argv[3])
print(json.dumps({"labels": m.labels, "epoch": m.meta["epoch"], "shape": list(item["image"].shape)}))
"""


def test_model_file_loads_and_predicts_in_a_fresh_process(full_run: Path, hippo_manifest: Path, tmp_path: Path) -> None:
    from medattn.infer.sliding import sliding_window_predict
    from medattn.models.model_file import load_model

    case = Manifest.load(hippo_manifest).datalist(split="val")[0]["image"][0]
    out = tmp_path / "prediction.pt"
    proc = subprocess.run(
        [sys.executable, "-c", PREDICT, str(full_run / "model.pt"), case, str(out)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["labels"] == {"0": "background", "1": "Anterior", "2": "Posterior"}
    assert info["epoch"] == json.loads((full_run / "summary.json").read_text())["best_epoch"]
    saved = torch.load(out, weights_only=True)
    assert saved["probabilities"].shape == (3, *info["shape"][1:])
    assert saved["labels"].shape == tuple(info["shape"][1:])
    # The same file, loaded here, gives the same numbers: nothing outside model.pt was needed.
    from medattn.data.transforms import apply, inference_transforms

    loaded = load_model(full_run / "model.pt")
    item = apply(inference_transforms(loaded.plan), {"image": case})
    patch = loaded.plan.patch_size
    here = sliding_window_predict(item["image"], loaded.model, patch, window_batch=2, return_probabilities=True)
    assert torch.allclose(saved["probabilities"], here.probabilities, atol=1e-5)
    assert torch.equal(saved["labels"], here.labels)


def test_killed_run_resumes_and_matches_the_uninterrupted_run(
    full_run: Path, hippo_manifest: Path, tmp_path: Path
) -> None:
    manifest = Manifest.load(hippo_manifest)
    config = TrainConfig.load(full_run / "config.json")
    run = tmp_path / "run"
    half, done = kill_and_resume(full_run / "config.json", manifest, run)
    assert half["epoch"] == 1 and half["scheduler"]["last_epoch"] == 1
    with pytest.raises(ConfigError, match="--resume"):
        train(config, manifest, run, progress=False)  # a new run must not overwrite it
    full = torch.load(full_run / "checkpoint.pt", weights_only=True)
    assert done["epoch"] == full["epoch"] == 2
    steps = {int(s["step"]) for s in done["optimizer"]["state"].values()}
    assert steps == {2 * TINY["iterations"]}  # AdamW's step count continued from the first epoch
    assert done["scheduler"]["last_epoch"] == full["scheduler"]["last_epoch"] == 2
    assert [r["lr"] for r in read_csv(run / "log.csv")] == pytest.approx(
        [r["lr"] for r in read_csv(full_run / "log.csv")]
    )
    # Same batches, same augmentation, same optimiser state: the same weights as the uninterrupted run.
    for k, v in full["model"].items():
        torch.testing.assert_close(done["model"][k], v, rtol=1e-5, atol=1e-6, msg=k)
    for k, v in full["optimizer"]["state"].items():
        torch.testing.assert_close(done["optimizer"]["state"][k]["exp_avg"], v["exp_avg"], rtol=1e-5, atol=1e-7)
    # Resuming a finished run does nothing; changing an option on resume is refused.
    assert train(None, manifest, run, resume=True, progress=False).epochs == 2
    assert main(["train", str(hippo_manifest), "--out", str(run), "--resume", "--epochs", "5", "--quiet"]) == 2
