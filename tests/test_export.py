"""``medattn export``: TorchScript and ONNX (run by ONNX Runtime on the CPU) networks reproduce PyTorch on a window
and, through the sliding window, on a whole volume (labels equal); the plan travels beside them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medattn.cli import main
from medattn.data.transforms import inference_transforms
from medattn.export import load_exported, plan_path
from medattn.infer.sliding import sliding_window_predict
from medattn.models.model_file import load_model
from tests.conftest import blob_case, write_nifti
from tests.infer.conftest import small_plan


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medattn.models import build_model
    from medattn.models.model_file import save_model

    torch.manual_seed(0)
    plan = small_plan(patch=(16, 24, 16))
    net = build_model("ag_unet", 1, 3, channels=(4, 8, 16))
    return save_model(tmp_path_factory.mktemp("m") / "model.pt", net, plan)


@pytest.mark.parametrize("fmt,name", [("torchscript", "net.ts"), ("onnx", "net.onnx")])
def test_exported_network_matches_pytorch_on_a_window_and_a_volume(model: Path, tmp_path: Path, fmt, name) -> None:
    out = tmp_path / name
    assert main(["export", str(model), str(out), "--format", fmt]) == 0
    doc = json.loads(plan_path(out).read_text())
    record = doc["export"]
    assert record["format"] == fmt and record["input"]["shape"] == [1, 1, 16, 24, 16]
    assert record["max_abs_diff_vs_pytorch"] < 1e-4  # measured 1.0e-6 (TorchScript) and 1.1e-6 (ONNX), Xeon CPU
    assert doc["labels"] == {"0": "background", "1": "core", "2": "rim"} and doc["patch_size"] == [16, 24, 16]
    assert record["network_sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()  # the file beside it
    assert record["normalisation"] == {"MRI": "zscore: per-volume z-score; no clipping (the dataset statistics of"
                                              " this channel are recorded, not used)"}  # fmt: skip

    loaded = load_model(model)
    exported = load_exported(out)
    window = torch.randn(2, 1, 16, 24, 16, generator=torch.Generator().manual_seed(5))  # two windows, one by one
    with torch.inference_mode():
        ref = loaded.model(window)
    ref = ref[0] if isinstance(ref, (list, tuple)) else ref
    assert float((exported(window) - ref).abs().max()) < 1e-4

    image = write_nifti(tmp_path / "scan.nii.gz", blob_case((41, 37, 29), seed=2)[0])
    data = inference_transforms(loaded.plan)({"image": str(image)})["image"].as_tensor()
    kwargs = {"overlap": 0.5, "return_probabilities": True, "num_classes": 3}
    with torch.inference_mode():
        torch_result = sliding_window_predict(data, loaded.model, (16, 24, 16), **kwargs)
        export_result = sliding_window_predict(data, exported, (16, 24, 16), **kwargs)
    assert torch_result.num_windows > 8
    assert torch.equal(torch_result.labels, export_result.labels)
    diff = float((torch_result.probabilities - export_result.probabilities).abs().max())
    assert diff < 1e-4, diff
    assert len(np.unique(torch_result.labels.numpy())) >= 2


def test_export_refuses_to_write_over_its_model(model: Path, capsys) -> None:
    assert main(["export", str(model), str(model), "--format", "torchscript"]) != 0
    assert load_model(model).plan.patch_size == (16, 24, 16)  # still the model file


def test_a_refused_export_leaves_the_previous_one_in_place(model: Path, tmp_path: Path, monkeypatch) -> None:
    """An export that does not reproduce PyTorch is not kept, and the good one already at OUT stays."""
    import medattn.export as export

    out = tmp_path / "net.ts"
    assert main(["export", str(model), str(out), "--format", "torchscript"]) == 0
    before, plan_before = out.read_bytes(), plan_path(out).read_bytes()
    monkeypatch.setattr(export, "MAX_ABS_DIFF", -1.0)  # every export now differs too much
    assert main(["export", str(model), str(out), "--format", "torchscript"]) != 0
    assert out.read_bytes() == before and plan_path(out).read_bytes() == plan_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.ts", "net.ts.plan.json"]  # no temporary left


def test_export_never_writes_over_a_file_that_is_not_an_earlier_export(model: Path, tmp_path: Path, capsys) -> None:
    """``export run1/model.pt run2/checkpoint.pt`` used to replace another run's checkpoint with the network."""
    other = tmp_path / "checkpoint.pt"
    other.write_bytes(b"another run's checkpoint")
    assert main(["export", str(model), str(other), "--format", "onnx"]) != 0
    assert "not an earlier export" in capsys.readouterr().err
    assert other.read_bytes() == b"another run's checkpoint" and not plan_path(other).exists()


def test_a_network_beside_another_exports_plan_is_refused(model: Path, tmp_path: Path, monkeypatch) -> None:
    """An export killed between its two renames leaves a new network beside the previous export's plan (the
    patch size, labels and normalisation of another model): loading that pair is refused, naming the file."""
    import medattn.data.io as io
    from medattn.errors import DataError
    from medattn.models import build_model
    from medattn.models.model_file import save_model

    out = tmp_path / "net.ts"
    assert main(["export", str(model), str(out), "--format", "torchscript"]) == 0
    load_exported(out)  # a whole export loads
    plan_before = plan_path(out).read_bytes()
    torch.manual_seed(1)
    other = save_model(tmp_path / "other.pt", build_model("ag_unet", 1, 3, channels=(4, 8, 16)), small_plan())

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies after the network's rename, before the plan's

    monkeypatch.setattr(io, "atomic_write_text", killed)
    assert main(["export", str(other), str(out), "--format", "torchscript"]) != 0  # "interrupted"
    assert plan_path(out).read_bytes() == plan_before  # the old plan, beside the new network
    with pytest.raises(DataError, match="not the one its plan"):
        load_exported(out)
    plan_path(out).unlink()  # the first export to OUT, killed the same way: a network without a plan
    with pytest.raises(DataError, match=r"no net\.ts\.plan\.json beside the network"):
        load_exported(out)
