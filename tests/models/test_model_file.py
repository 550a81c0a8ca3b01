"""Loading a model file that is not a sound medattn model: each refused with a reason that fits it, naming the
file (never PyTorch's advice to retry with ``weights_only=False``); a model with NaN weights is refused before it
predicts garbage."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medattn.errors import DataError
from medattn.models import build_model
from medattn.models.model_file import load_model, save_model
from tests.infer.conftest import small_plan


@pytest.fixture
def good(tmp_path: Path) -> Path:
    return save_model(tmp_path / "good.pt", build_model("ag_unet", 1, 3, channels=(4, 8, 16)), small_plan())


def test_a_sound_model_file_loads(good: Path) -> None:
    assert load_model(good).model.training is False


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p, good: p.write_bytes(bytes(range(256)) * 8), "not a PyTorch zip archive"),
        (lambda p, good: p.write_bytes(good.read_bytes()[: good.stat().st_size // 2]), "not a PyTorch zip archive"),
        (lambda p, good: torch.save({"net": torch.nn.Linear(2, 2)}, p), "holds Python objects beyond tensors"),
        (lambda p, good: torch.save({"format": "other"}, p), "not a medattn model file (format 'other')"),
    ],
)
def test_a_file_that_is_not_a_sound_model_is_refused_for_its_reason(
    tmp_path: Path, good: Path, make, reason: str
) -> None:
    path = tmp_path / "bad.pt"
    make(path, good)
    with pytest.raises(DataError) as err:
        load_model(path)
    assert reason in str(err.value) and str(path) in str(err.value)
    assert "weights_only=False will likely succeed" not in str(err.value)


def test_a_model_with_non_finite_weights_is_refused(tmp_path: Path) -> None:
    net = build_model("ag_unet", 1, 3, channels=(4, 8, 16))
    with torch.no_grad():
        net.head.weight[0].fill_(float("nan"))
    path = save_model(tmp_path / "nan.pt", net, small_plan())
    with pytest.raises(DataError, match=r"non-finite \(NaN or Inf\) weights in 1 tensor\(s\), e.g. head.weight"):
        load_model(path)
