"""The network a run builds: the plan's pooling mapped onto the preset's stride pattern."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from medattn.data.plan import ChannelNorm, Plan
from medattn.errors import ConfigError
from medattn.models.from_plan import build_network, network_overrides

ISO = ((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2))
ANISO = ((1, 1, 1), (2, 2, 1), (2, 2, 2), (2, 2, 2))  # the third axis is coarse: pooled from the second step on
ANISO_K = ((3, 3, 1), (3, 3, 3), (3, 3, 3), (3, 3, 3))


def plan(strides=ISO, kernels=((3, 3, 3),) * 4, channels: int = 2, labels: int = 3) -> Plan:
    norm = ChannelNorm("T1", "MR", "zscore", 0.0, 1.0, 0.0, 1.0)
    return Plan(
        dataset="toy", channels=(norm,) * channels, labels={i: f"c{i}" for i in range(labels)},
        target_spacing=(1.0, 1.0, 3.0), anisotropic=True, median_shape=(40, 40, 16), patch_size=(32, 32, 16),
        batch_size=2, strides=strides, kernel_sizes=kernels, crop_foreground=False, foreground_ratio=0.33,
        memory_budget_mb=1024.0, estimated_memory_mb=100.0,
    )  # fmt: skip


def test_channels_depth_and_widths_come_from_the_plan() -> None:
    net = build_network("ag_unet", plan())
    cfg = net.config
    assert (cfg["in_channels"], cfg["out_channels"]) == (2, 3)
    assert cfg["channels"] == [16, 32, 64, 128]  # base 16 doubled over the plan's four stages
    assert cfg["deep_supervision"] == 2
    assert network_overrides("unet", plan(), widths=(8, 16, 32))["deep_supervision"] == 1
    with pytest.raises(ConfigError, match="at most 4 widths"):
        network_overrides("unet", plan(), widths=(8, 16, 32, 64, 128))


def test_anisotropic_pooling_lands_on_the_presets_pooling_stages() -> None:
    p = plan(ANISO, ANISO_K)
    full = network_overrides("ag_unet_fullres", p)  # stem at full resolution: the plan as it is
    assert full["strides"] == ANISO and full["kernel_sizes"] == ANISO_K
    strided = network_overrides("ag_unet", p)  # strided stem, bottleneck on the grid before it
    assert strided["strides"] == ((2, 2, 1), (2, 2, 2), (2, 2, 2), (1, 1, 1))
    assert strided["kernel_sizes"] == ((3, 3, 3),) * 4  # every stage works on a grid past the coarse-axis stage
    net = build_network("ag_unet", p, widths=(4, 8, 16, 32)).train()
    outs = net(torch.randn(1, 2, 32, 32, 16))
    assert [tuple(o.shape[2:]) for o in outs] == [(32, 32, 16), (8, 8, 8), (4, 4, 4)]  # scales 4x4x2, 8x8x4
    assert network_overrides("ag_unet", p, options={"strides": 2})["strides"] == 2  # the user's word wins


def test_monai_wrapper_takes_isotropic_plans_only() -> None:
    assert network_overrides("monai_attention_unet", plan())["strides"] == (2, 2, 2)
    with pytest.raises(ConfigError, match="isotropic"):
        network_overrides("monai_attention_unet", plan(ANISO, ANISO_K))
    with pytest.raises(ConfigError, match="deep supervision"):
        network_overrides("monai_attention_unet", plan(), deep_supervision=1)
    with pytest.raises(ConfigError, match="unknown model"):
        network_overrides("vnet", replace(plan()))
