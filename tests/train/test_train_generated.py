"""``medattn train`` on generated data (so a user's clone tests it): a run, an exact resume, and the input gate
that refuses bad cases before the first step (or leaves them out with ``--exclude-invalid``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from medattn.cli import main
from medattn.data.manifest import Case, Channel, Domain, Manifest
from medattn.train.logs import read_csv
from tests.conftest import blob_case, write_nifti
from tests.train.conftest import kill_and_resume

SHAPE = (20, 22, 18)
TINY = {
    "model": "ag_unet",
    "widths": "8,16,32",
    "epochs": 2,
    "iterations": 3,
    "patch_size": "16,16,16",
    "lr": 0.01,
    "seed": 1,
    "tensorboard": False,
    "val_every": 1,
}


def blob_dataset(root: Path, n_train: int = 5, n_val: int = 2, n_test: int = 2) -> Path:
    """A one-domain blob dataset with train/val/test splits; returns its manifest's path."""
    cases = []
    for i in range(n_train + n_val + n_test):
        image, label = blob_case(SHAPE, seed=i)
        write_nifti(root / "images" / f"c{i}.nii.gz", image)
        write_nifti(root / "labels" / f"c{i}.nii.gz", label)
        cases.append(Case(f"c{i}", (f"images/c{i}.nii.gz",), f"labels/c{i}.nii.gz"))
    ids = [c.id for c in cases]
    splits = {
        "train": tuple(ids[:n_train]),
        "val": tuple(ids[n_train : n_train + n_val]),
        "test": tuple(ids[n_train + n_val :]),
    }
    manifest = Manifest(
        name="blobs",
        channels=(Channel("MRI", "MR"),),
        labels={0: "background", 1: "core", 2: "rim"},
        domains=(Domain("site", tuple(cases), splits=splits),),
        base_dir=root,
    )
    return manifest.save(root / "manifest.json")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return blob_dataset(tmp_path_factory.mktemp("blobs"))


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


@pytest.fixture(scope="module")
def full_run(data: Path, config_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("full") / "run"
    assert main(["train", str(data), "--out", str(run), "--config", str(config_file), "--quiet"]) == 0
    return run


def test_training_on_generated_data_writes_the_run(full_run: Path) -> None:
    for name in ("model.pt", "model_last.pt", "checkpoint.pt", "config.json", "plan.json", "split.json", "log.csv"):
        assert (full_run / name).is_file(), name
    split = json.loads((full_run / "split.json").read_text())
    assert split["val"] == ["c5", "c6"] and "c7" not in split["train"] + split["val"]  # test never trains/validates
    assert split["excluded"] == []
    rows = read_csv(full_run / "log.csv")
    assert [r["epoch"] for r in rows] == [1, 2] and all(np.isfinite(float(r["val_dice"])) for r in rows)
    summary = json.loads((full_run / "summary.json").read_text())
    assert summary["val_cases"] == 2 and summary["excluded"] == []


def test_killed_run_resumes_exactly_on_generated_data(full_run: Path, data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    half, done = kill_and_resume(full_run / "config.json", Manifest.load(data), run)
    assert half["epoch"] == 1
    full = torch.load(full_run / "checkpoint.pt", weights_only=True)
    for k, v in full["model"].items():
        torch.testing.assert_close(done["model"][k], v, rtol=1e-5, atol=1e-6, msg=k)
    assert main(["train", str(data), "--out", str(run), "--resume", "--epochs", "5", "--quiet"]) == 2


def test_resume_refuses_data_whose_files_changed_since_the_run_started(
    full_run: Path, data: Path, tmp_path: Path
) -> None:
    """``split.json`` records a digest of every training and validation case's files; a label edited in place (or
    another dataset with the same case ids) is refused on ``--resume``, naming the case."""
    import shutil

    import nibabel as nib

    from medattn.data.importers import load_dataset
    from medattn.errors import DataError
    from medattn.train.config import TrainConfig
    from medattn.train.trainer import EpochRecord, train

    copy = tmp_path / "blobs"
    shutil.copytree(data.parent, copy)  # the dataset folder of the manifest ``data``
    manifest = load_dataset(copy / data.name)
    run = tmp_path / "run"

    def kill_after_first_epoch(record: EpochRecord) -> None:
        if record.epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        config = TrainConfig.load(full_run / "config.json")
        train(config, manifest, run, progress=False, on_epoch_end=kill_after_first_epoch)
    split = json.loads((run / "split.json").read_text())
    assert sorted(split["file_digests"]) == sorted(split["train"] + split["val"])
    case = next(c for _, c in manifest.iter_cases() if c.id == split["train"][0])
    assert case.label is not None
    path = manifest.resolve(case.label)
    img = nib.load(path)
    edited = np.asarray(img.dataobj).copy()
    edited[edited == 2] = 1  # a label corrected in place: same id, same grid, other voxels
    nib.save(nib.Nifti1Image(edited, img.affine, img.header), str(path))
    with pytest.raises(DataError, match=rf"files of 1 case\(s\) differ .*{case.id}"):
        train(None, manifest, run, resume=True, progress=False)


# ---- the input gate ---------------------------------------------------------------------------------------------


def spoil(root: Path) -> dict[str, str]:
    """Spoil five training cases the ways users' data are spoilt; returns case -> words its reason must hold."""
    image, label = blob_case(SHAPE, seed=0)
    write_nifti(root / "labels" / "c0.nii.gz", label[:-2])  # label of another shape
    shifted = np.eye(4)
    shifted[0, 3] = 10.0
    write_nifti(root / "labels" / "c1.nii.gz", blob_case(SHAPE, seed=1)[1], shifted)  # label 10 mm off its image
    write_nifti(root / "labels" / "c2.nii.gz", np.where(label == 2, 5, label).astype(np.uint8))  # undeclared 5
    whole = (root / "images" / "c3.nii.gz").read_bytes()
    (root / "images" / "c3.nii.gz").write_bytes(whole[: len(whole) // 2])  # truncated
    image[3, 4, 5] = np.nan
    write_nifti(root / "images" / "c4.nii.gz", image)  # a NaN voxel
    return {
        "c0": "spatial shape",
        "c1": "origin",
        "c2": "label value(s) 5",
        "c3": "truncated",
        "c4": "1 NaN",
    }


def test_bad_cases_stop_training_before_it_starts(tmp_path: Path, config_file: Path, capsys) -> None:
    data = blob_dataset(tmp_path / "data", n_train=7)
    expected = spoil(tmp_path / "data")
    run = tmp_path / "run"
    assert main(["train", str(data), "--out", str(run), "--config", str(config_file), "--quiet"]) == 3
    err = capsys.readouterr().err
    assert "5 of 9 case(s) failed the input checks" in err and "--exclude-invalid" in err
    for case, words in expected.items():
        line = next(x for x in err.splitlines() if f"case {case!r}" in x)
        assert words in line, (case, line)
    assert "Traceback" not in err
    assert not (run / "checkpoint.pt").exists() and not (run / "plan.json").exists()


def test_exclude_invalid_trains_on_the_rest_and_lists_them(tmp_path: Path, config_file: Path, capsys) -> None:
    data = blob_dataset(tmp_path / "data", n_train=7)
    expected = spoil(tmp_path / "data")
    # a broken test case does not matter: training never reads the test split
    whole = (tmp_path / "data" / "images" / "c9.nii.gz").read_bytes()
    (tmp_path / "data" / "images" / "c9.nii.gz").write_bytes(whole[:100])
    run = tmp_path / "run"
    args = ["train", str(data), "--out", str(run), "--config", str(config_file), "--exclude-invalid", "--quiet"]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "5 case(s) failed the input checks and were left out" in out
    split = json.loads((run / "split.json").read_text())
    assert split["train"] == ["c5", "c6"] and split["val"] == ["c7", "c8"]
    assert sorted(e["case"] for e in split["excluded"]) == sorted(expected)
    summary = json.loads((run / "summary.json").read_text())
    assert {e["case"]: e["reason"] for e in summary["excluded"]}.keys() == expected.keys()
    assert (run / "model.pt").is_file()


def test_unwritable_run_folder_fails_in_one_line_before_any_data_is_read(
    data: Path,
    read_only_dir: Path,
    capsys,
) -> None:
    assert main(["train", str(data), "--out", str(read_only_dir / "run"), "--epochs", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("medattn train: error: --out") and "cannot write" in err and err.count("\n") == 1


def test_all_folds_trains_every_fold_with_one_plan_and_resumes(data: Path, config_file: Path, tmp_path: Path) -> None:
    """``--fold all-folds`` (nnU-Net's k folds in one command): OUT/fold_k for each k, disjoint validation cases
    that together cover every non-test case, one plan for all (so they are one ensemble); ``--resume`` returns at
    once on finished folds and starts a missing one; without it an existing run is refused."""
    from medattn.models.ensemble import load_models

    out = tmp_path / "cv"
    args = ["train", str(data), "--out", str(out), "--config", str(config_file), "--quiet", "--epochs", "1"]
    assert main([*args, "--fold", "all-folds", "--folds", "3"]) == 0
    folds = sorted(out.glob("fold_*"))
    assert [f.name for f in folds] == ["fold_0", "fold_1", "fold_2"]
    vals = [json.loads((f / "split.json").read_text())["val"] for f in folds]
    assert sorted(v for val in vals for v in val) == [f"c{i}" for i in range(7)]  # c7, c8: test, never read
    plans = {(f / "plan.json").read_text() for f in folds}
    assert len(plans) == 1
    assert load_models([out], "cpu").members == 3
    mtime = (folds[1] / "model.pt").stat().st_mtime_ns
    import shutil

    shutil.rmtree(folds[2])
    assert main([*args, "--fold", "all-folds", "--folds", "3", "--resume"]) == 0
    assert (folds[1] / "model.pt").stat().st_mtime_ns == mtime and (folds[2] / "model.pt").is_file()
    assert main([*args, "--fold", "all-folds", "--folds", "3"]) == 2


@pytest.mark.parametrize("rank", [0, 1])
def test_all_folds_announces_each_fold_on_rank_0_only(
    rank: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Under torchrun every rank runs the fold loop; only rank 0 prints "fold k of K" and the closing hint, so a
    two-process job does not say everything twice. (The folds themselves are stubbed: only the loop is tested.)"""
    import argparse

    from medattn.commands import train as train_command

    calls: list[str] = []
    monkeypatch.setattr(train_command, "train_one", lambda a: calls.append(a.out) or 0)
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", "2")
    args = argparse.Namespace(out=str(tmp_path / "cv"), folds=2, fold="all-folds", resume=False, plan=None, quiet=False)
    assert train_command.run_all_folds(args) == 0
    assert calls == [str(tmp_path / "cv" / "fold_0"), str(tmp_path / "cv" / "fold_1")]
    printed = capsys.readouterr().out
    assert ("fold 1 of 2" in printed) == (rank == 0) and ("2 folds in" in printed) == (rank == 0)
