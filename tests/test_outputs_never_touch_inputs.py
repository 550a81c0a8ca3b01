"""Every writing command refuses an output that is an input file, lies in the dataset's image or label folders, or
is its dataset.json / manifest (exit 2, a one-line message), and leaves the dataset byte for byte as it was."""

from __future__ import annotations

from pathlib import Path

import pytest

from medattn.cli import main
from tests.infer.conftest import model_file  # noqa: F401  (fixture)


def _snapshot(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def msd(make_msd) -> Path:
    return make_msd(n=2)


@pytest.mark.parametrize(
    ("command", "target"),
    [
        ("plan", "dataset.json"),
        ("plan", "labelsTr/blob_000.nii.gz"),
        ("plan", "labelsTr/plan.json"),
        ("manifest", "dataset.json"),
        ("manifest", "labelsTr/blob_001.nii.gz"),
        ("validate", "imagesTr/validation.json"),
        ("validate", "dataset.json"),
    ],
)
def test_dataset_commands_refuse_outputs_on_inputs(msd: Path, command: str, target: str, capsys) -> None:
    before = _snapshot(msd)
    assert main([command, str(msd), "-o", str(msd / target), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"medattn {command}: error:") and err.count("\n") == 1
    assert _snapshot(msd) == before


@pytest.mark.parametrize("option", ["-o", "--csv"])
def test_evaluate_refuses_outputs_on_inputs(msd: Path, tmp_path: Path, option: str, capsys) -> None:
    pred = tmp_path / "pred"
    pred.mkdir()
    (pred / "blob_000.nii.gz").write_bytes((msd / "labelsTr" / "blob_000.nii.gz").read_bytes())
    before = _snapshot(msd) | _snapshot(pred)
    for target in (msd / "dataset.json", msd / "labelsTr" / "metrics.json", pred / "blob_000.nii.gz"):
        extra = [option, str(target)] if option == "--csv" else ["-o", str(target)]
        assert main(["evaluate", str(pred), str(msd), *extra, "--quiet"]) == 2
        assert capsys.readouterr().err.count("\n") == 1
    assert _snapshot(msd) | _snapshot(pred) == before
    # beside the predictions is the usual place, and allowed
    assert main(["evaluate", str(pred), str(msd), "-o", str(pred / "metrics.json"), "--quiet", "--allow-missing"]) == 0


def test_train_adapt_drift_refuse_outputs_in_the_data(msd: Path, model_file) -> None:  # noqa: F811
    before = _snapshot(msd)
    assert main(["train", str(msd), "--out", str(msd / "labelsTr"), "--epochs", "1", "--quiet"]) == 2
    assert main(["adapt", str(model_file()), str(msd), "--out", str(msd / "imagesTr"), "--quiet"]) == 2
    assert main(["drift", str(model_file()), "--reference", str(msd), "--target", str(msd),
                 "-o", str(msd / "labelsTr" / "drift.json"), "--quiet"]) == 2  # fmt: skip
    assert _snapshot(msd) == before
