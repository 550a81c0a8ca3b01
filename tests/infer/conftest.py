"""Fixtures for inference tests: a small plan and a model file built from an untrained ``ag_unet``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
import torch

from medattn.data.plan import ChannelNorm, Plan
from medattn.models import build_model
from medattn.models.model_file import save_model


def small_plan(
    labels: Mapping[int, str] | None = None,
    patch: tuple[int, int, int] = (16, 16, 16),
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    channels: int | tuple[str, ...] = 1,
    modality: str = "MR",
) -> Plan:
    """A plan for tiny test models; ``channels`` is a count (one channel is named "MRI", as ``make_msd``'s is)
    or the channel names; ``modality`` that of every channel."""
    if isinstance(channels, int):
        channels = ("MRI",) if channels == 1 else tuple(f"c{i}" for i in range(channels))
    return Plan(
        dataset="t",
        channels=tuple(ChannelNorm(name, modality, "zscore", 0, 1, 0, 1) for name in channels),
        labels=dict(labels or {0: "background", 1: "core", 2: "rim"}),
        target_spacing=spacing,
        anisotropic=False,
        median_shape=(16, 16, 16),
        patch_size=patch,
        batch_size=2,
        strides=((1, 1, 1), (2, 2, 2), (2, 2, 2)),
        kernel_sizes=((3, 3, 3),) * 3,
        crop_foreground=False,
        foreground_ratio=0.5,
        memory_budget_mb=100,
        estimated_memory_mb=10,
    )


@pytest.fixture
def model_file(tmp_path: Path) -> Callable[..., Path]:
    """``model_file(plan=None, seed=0)`` writes an untrained tiny ag_unet for ``plan`` and returns its path."""

    def _make(plan: Plan | None = None, seed: int = 0, name: str = "model.pt") -> Path:
        plan = plan or small_plan()
        torch.manual_seed(seed)
        net = build_model("ag_unet", plan.num_channels, plan.num_classes, channels=(4, 8, 16))
        return save_model(tmp_path / name, net, plan)

    return _make
