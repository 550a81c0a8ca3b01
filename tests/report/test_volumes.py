"""volume_view: the image, label, prediction and attention the MONAI ``sliding_window_inference`` version gave."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference

from medattn.data.transforms import apply, eval_transforms
from medattn.models import build_model
from medattn.models.model_file import LoadedModel, load_model, save_model
from medattn.report.volumes import selective_gate, volume_view
from tests.conftest import blob_case, write_nifti
from tests.infer.conftest import small_plan


@pytest.fixture
def case(tmp_path: Path) -> tuple[LoadedModel, dict[str, Any]]:
    """An untrained tiny ag_unet (16-voxel windows) and a 28 x 12 x 22 case: several windows along X and Z, and
    along Y a volume smaller than the window, so windows are padded."""
    plan = small_plan()
    torch.manual_seed(0)
    net = build_model("ag_unet", plan.num_channels, plan.num_classes, channels=(4, 8, 16))
    loaded = load_model(save_model(tmp_path / "model.pt", net, plan))
    image, label = blob_case((28, 12, 22), seed=0)
    item = {
        "image": [str(write_nifti(tmp_path / "img.nii.gz", image))],
        "label": str(write_nifti(tmp_path / "lab.nii.gz", label)),
        "case_id": "blob_000",
    }
    return loaded, item


def _monai_view(loaded: LoadedModel, item: dict[str, Any], overlap: float, window_batch: int) -> dict[str, Any]:
    """What ``volume_view`` computed before it used medattn's sliding window: MONAI's Gaussian blend of the logits
    and every gate's map, the arg-max of the blended logits."""
    plan, k = loaded.plan, loaded.plan.num_classes

    def with_maps(x: torch.Tensor) -> torch.Tensor:
        logits, maps = loaded.model(x, return_attention=True)
        return torch.cat([logits[:, :k], *maps], dim=1)

    data = apply(eval_transforms(plan), {"image": item["image"][0], "label": item["label"]})
    x = torch.as_tensor(data["image"]).float()[None]
    with torch.inference_mode():
        out = sliding_window_inference(x, plan.patch_size, window_batch, with_maps, overlap=overlap, mode="gaussian")
    out = torch.as_tensor(out)[0].float()
    maps = [np.clip(m, 0.0, 1.0).astype(np.float32) for m in out[k:].numpy()]
    return {
        "image": np.asarray(data["image"][0], dtype=np.float32),
        "label": np.rint(np.asarray(data["label"][0])).astype(np.uint8),
        "prediction": out[:k].argmax(0).numpy().astype(np.uint8),
        "maps": maps,
    }


@pytest.mark.parametrize(("overlap", "window_batch"), [(0.5, 2), (0.25, 3)])
def test_volume_view_equals_the_monai_blend(case, overlap, window_batch) -> None:
    loaded, item = case
    expected = _monai_view(loaded, item, overlap, window_batch)
    view = volume_view(loaded, item, overlap=overlap, window_batch=window_batch)
    assert view.image.shape == (28, 12, 22) and view.gates == len(expected["maps"]) == 2
    np.testing.assert_array_equal(view.image, expected["image"])
    assert view.label is not None
    np.testing.assert_array_equal(view.label, expected["label"])
    assert view.prediction.dtype == np.uint8
    np.testing.assert_array_equal(view.prediction, expected["prediction"])
    assert len(np.unique(view.prediction)) >= 2  # more than one class compared
    gate = selective_gate(expected["maps"])
    assert view.attention_gate == gate and gate is not None and view.attention is not None
    assert view.attention.dtype == np.float32
    np.testing.assert_allclose(view.attention, expected["maps"][gate], atol=1e-5, rtol=0)
    assert float(np.ptp(view.attention)) > 1e-2  # the map varies: the comparison means something
