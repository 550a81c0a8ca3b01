"""Validation segments with medattn's sliding window (MONAI's windows and weights) and scores with the one Dice."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference
from torch import nn

from medattn.models import build_model
from medattn.train.precision import Precision
from medattn.train.validation import validate

NAMES = ["background", "a", "b"]
WINDOW = (16, 16, 16)


def _cases() -> list[dict]:
    g = torch.Generator().manual_seed(0)
    out = []
    for i, size in enumerate([(30, 26, 21), (21, 12, 33)]):  # the second is smaller than the window on one axis
        image = torch.randn(1, *size, generator=g)
        label = torch.randint(0, 3, (1, *size), generator=g).float()
        out.append({"image": image, "label": label, "case_id": f"c{i}"})
    return out


def _numpy_dice(pred: np.ndarray, ref: np.ndarray, c: int) -> float:
    p, g = pred == c, ref == c
    denom = int(p.sum()) + int(g.sum())
    return 2.0 * int((p & g).sum()) / denom if denom else math.nan


def test_validation_dice_equals_monai_sliding_window_labels_scored_in_numpy() -> None:
    """The windows, overlap, Gaussian blend and batch of windows of the MONAI call validation used to make."""
    torch.manual_seed(0)
    net = build_model("ag_unet", 1, 3, channels=(4, 8, 16))
    net.train()
    cases = _cases()
    res = validate(net, cases, WINDOW, NAMES, sw_batch_size=2, overlap=0.5)
    assert net.training  # the mode is restored
    net.eval()
    for case in cases:
        with torch.inference_mode():
            logits = sliding_window_inference(case["image"][None], WINDOW, 2, net, overlap=0.5, mode="gaussian")
        pred = logits[0].argmax(0).numpy()
        ref = case["label"][0].numpy()
        expected = [_numpy_dice(pred, ref, c) for c in (1, 2)]
        np.testing.assert_allclose(res.per_case[case["case_id"]], expected, rtol=0, atol=1e-12)
    assert res.num_cases == 2 and res.num_empty == (0, 0)
    assert 0.0 < res.mean < 1.0


class _Recorder(nn.Module):
    """Records whether autocast was on for each forward pass; logits from a 1x1 convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 3, 1)
        self.autocast: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.autocast.append(torch.is_autocast_enabled("cpu"))
        return self.conv(x)


@pytest.mark.parametrize(("precision", "expected"), [(None, False), (Precision("bf16", "cpu", torch.bfloat16), True)])
def test_forward_passes_run_under_the_requested_precision(precision: Precision | None, expected: bool) -> None:
    net = _Recorder()
    res = validate(net, _cases()[:1], WINDOW, NAMES, precision=precision)
    assert net.autocast and set(net.autocast) == {expected}
    assert all(0.0 <= v <= 1.0 for v in res.per_class)
