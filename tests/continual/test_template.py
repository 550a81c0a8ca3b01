"""The segmentation template's own arguments are honoured (without running a training loop)."""

from __future__ import annotations

import pytest
import torch


def _strategy(**kw: object):  # type: ignore[no-untyped-def]
    from medattn.continual.template import SegmentationStrategy
    from medattn.models.registry import build_model

    torch.manual_seed(0)
    model = build_model("unet", 1, 3, channels=(4, 8), deep_supervision=0)
    args: dict[str, object] = {"window": (16, 16, 16), "class_names": ["background", "a", "b"]}
    args.update(kw)
    return SegmentationStrategy(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), **args)


def test_window_overlap_and_batch_reach_the_sliding_window_predictor() -> None:
    s = _strategy(overlap=0.25, window_batch=3)
    assert s.predictor.window == (16, 16, 16)
    assert s.predictor.overlap == (0.25, 0.25, 0.25) and s.predictor.window_batch == 3
    s.model.train()
    labels = s.predict_volumes(torch.randn(2, 1, 20, 18, 22))
    assert labels.shape == (2, 1, 20, 18, 22) and labels.dtype == torch.int64 and int(labels.max()) < 3
    assert s.model.training  # the caller's mode is restored


def test_gradients_are_clipped_to_grad_clip() -> None:
    s = _strategy(grad_clip=0.5)
    s.loss = sum(p.sum() for p in s.model.parameters()) * 1e4
    s.optimizer.zero_grad()
    s.backward()
    s.optimizer_step()
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in s.model.parameters()]))
    assert float(norm) == pytest.approx(0.5, rel=1e-4)


def test_cpu_runs_in_float32_and_bad_arguments_are_refused() -> None:
    from medattn.errors import ConfigError

    s = _strategy(precision="auto")
    assert s.precision.dtype is None and s.scaler is None
    with pytest.raises(ConfigError, match="fp16"):
        _strategy(precision="fp16")
    with pytest.raises(ConfigError, match="class_names"):
        _strategy(class_names=["background", "a"])
    with pytest.raises(ConfigError, match="num_classes"):
        _strategy(num_classes=1)
