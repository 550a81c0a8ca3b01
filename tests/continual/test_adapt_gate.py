"""``medattn adapt`` checks every case before the first step: a bad case stops the run naming it, or with
``--exclude-invalid`` is left out and listed; channels that are not the model's are refused."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch

from medattn.cli import main
from tests.conftest import write_nifti
from tests.continual.conftest import shift_case, write_shift_dataset


def _args(model: Path, manifest: Path, out: Path, *extra: str) -> list[str]:
    return [
        "adapt", str(model), str(manifest), "--strategies", "naive", "--out", str(out), "--epochs", "1",
        "--patch-size", "16,16,16", "--augment", "none", "--loggers", "csv", "--device", "cpu", "--quiet", *extra,
    ]  # fmt: skip


def test_bad_cases_stop_adaptation_or_are_left_out(start_model: Path, tmp_path: Path, capsys) -> None:
    root = tmp_path / "data"
    manifest = write_shift_dataset(root)
    image, label = shift_case(1001, invert=True)
    image[2, 3, 4] = np.nan
    write_nifti(root / "B" / "B_1.nii.gz", image)  # a training case of the new scanner
    write_nifti(root / "A" / "A_5_seg.nii.gz", np.where(label == 2, 7, label).astype(np.uint8))  # a test case of A

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(_args(start_model, manifest, tmp_path / "run")) == 3
        err = capsys.readouterr().err
        assert "2 of 12 case(s) failed the input checks, so adaptation did not start" in err
        assert "case 'B_1'" in err and "1 NaN" in err and "case 'A_5'" in err and "label value(s) 7" in err
        assert not (tmp_path / "run" / "naive").exists()

        out = tmp_path / "run2"
        assert main(_args(start_model, manifest, out, "--exclude-invalid")) == 1
    printed = capsys.readouterr().out
    assert "2 case(s) failed the input checks and were left out" in printed
    excluded = json.loads((out / "excluded.json").read_text())
    assert sorted(e["case"] for e in excluded) == ["A_5", "B_1"]
    metrics = json.loads((out / "naive" / "metrics.json").read_text())
    assert metrics["domains"] == ["A", "B"] and len(metrics["rows"]) == 2


def test_channels_other_than_the_model_are_refused(start_model: Path, tmp_path: Path, capsys) -> None:
    doc = torch.load(start_model, weights_only=True)
    doc["plan"]["channels"][0]["name"] = "T2w"
    other = tmp_path / "t2_model.pt"
    torch.save(doc, other)
    manifest = write_shift_dataset(tmp_path / "data")
    assert main(_args(other, manifest, tmp_path / "run")) == 3
    err = capsys.readouterr().err
    assert "the input's channels are MR; the model expects T2w" in err
