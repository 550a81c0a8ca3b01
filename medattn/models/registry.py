"""Model presets by name, building a model from a preset or a saved config, and the ``medattn models`` table.

A preset is data: a dict of :class:`~medattn.models.config.UNetConfig` fields (or MONAI's arguments for
``monai_attention_unet``). Per-stage fields can be written relative to the depth, ``{"last": "mhsa", "rest":
"none"}``, so a preset keeps its meaning when ``channels`` is overridden (see :data:`StageSelector`); the built
model's ``.config`` is always fully explicit and is what a checkpoint stores::

    net = build_model("ag_unet", in_channels=1, out_channels=3, channels=(16, 32, 64, 128))
    torch.save({"config": net.config, "state_dict": net.state_dict()}, "model.pt")
    net2 = model_from_checkpoint(torch.load("model.pt", weights_only=True))   # same network, same weights
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from torch import nn

from medattn.models import config as unet_config
from medattn.models import monai_attention_unet as monai_wrapper
from medattn.models.config import ModelConfigError
from medattn.text import format_table

StageSelector = Mapping[str, Any]
"""Per-stage values relative to the depth: ``{"rest": v}`` plus any of ``"first"``, ``"last"`` and stage indices
(``"1"``, ``"-2"``), e.g. ``{"last": "mhsa", "rest": "none"}``; expanded to one value per stage."""

#: The full-resolution stem: one convolution at the input's resolution, its skip fused by addition.
FULLRES: dict[str, Any] = {
    "strides": {"first": 1, "rest": 2},
    "encoder_convs": {"first": 1, "rest": 2},
    "decoder_convs": {"first": 0, "rest": 1},
    "fusion": "add",
}

PRESETS: dict[str, dict[str, Any]] = {
    "unet": {
        "description": "the same U-Net without gates (the baseline)",
        "arch": unet_config.ARCH,
        "gates": False,
    },
    "ag_unet": {
        "description": "additive attention gates on the skips (Oktay et al. 2018)",
        "arch": unet_config.ARCH,
        "gates": True,
    },
    "ag_unet_fullres": {
        "description": "ag_unet with a full-resolution stem and skip (one conv there, additive fusion)",
        "arch": unet_config.ARCH,
        "gates": True,
        **FULLRES,
    },
    "unet_fullres": {
        "description": "ag_unet_fullres without gates (its baseline)",
        "arch": unet_config.ARCH,
        "gates": False,
        **FULLRES,
    },
    "ag_unet_scse": {
        "description": "gates + scSE after every encoder and decoder block below the stem",
        "arch": unet_config.ARCH,
        "gates": True,
        "encoder_attention": {"first": "none", "rest": "scse"},
        "decoder_attention": {"first": "none", "rest": "scse"},
    },
    "ag_unet_cbam": {
        "description": "gates + CBAM-3D after every encoder block below the stem",
        "arch": unet_config.ARCH,
        "gates": True,
        "encoder_attention": {"first": "none", "rest": "cbam"},
    },
    "ag_unet_mhsa": {
        "description": "gates + multi-head self-attention at the bottleneck (hybrid CNN-Transformer)",
        "arch": unet_config.ARCH,
        "gates": True,
        "encoder_attention": {"last": "mhsa", "rest": "none"},
    },
    "ag_unet_wsa": {
        "description": "gates + windowed self-attention in encoder stages 1 and 2 (the larger feature maps)",
        "arch": unet_config.ARCH,
        "gates": True,
        "encoder_attention": {"1": "wsa", "2": "wsa", "rest": "none"},
    },
    "monai_attention_unet": {
        "description": "MONAI's AttentionUnet, wrapped (for comparison)",
        "arch": monai_wrapper.ARCH,
    },
}
PER_STAGE = {"strides": 0, "kernel_sizes": 0, "encoder_convs": 0, "encoder_attention": 0}
"""Per-stage fields: 0 = one value per stage, 1 = one per decoder stage (one fewer)."""
PER_STAGE.update({"decoder_convs": 1, "decoder_attention": 1})


def list_models() -> list[str]:
    """Names of the presets, in table order."""
    return list(PRESETS)


def expand_stages(value: Any, n: int, what: str) -> Any:
    """A :data:`StageSelector` -> a tuple of ``n`` per-stage values; any other value is returned unchanged."""
    if not isinstance(value, Mapping):
        return value
    if "rest" not in value:
        raise ModelConfigError(f"{what}: a per-stage selector needs a 'rest' value, got {dict(value)!r}")
    out = [value["rest"]] * n
    for key, v in value.items():
        if key == "rest":
            continue
        if key == "first":
            index = 0
        elif key == "last":
            index = n - 1
        else:
            try:
                index = int(key)
            except ValueError:
                raise ModelConfigError(
                    f"{what}: selector keys are 'first', 'last', 'rest' or stage numbers, got {key!r}"
                ) from None
        if not -n <= index < n:
            raise ModelConfigError(f"{what}: stage {key} does not exist in a network with {n} of them")
        out[index] = v
    return tuple(out)


def resolve_config(name: str, in_channels: int, out_channels: int, **overrides: Any) -> dict[str, Any]:
    """The explicit config dict of preset ``name`` with ``overrides`` applied (validated; nothing is built)."""
    if name not in PRESETS:
        raise ModelConfigError(f"unknown model {name!r}; available: {', '.join(PRESETS)}")
    doc = {k: copy.deepcopy(v) for k, v in PRESETS[name].items() if k != "description"}
    doc.update(overrides, in_channels=in_channels, out_channels=out_channels)
    if doc["arch"] == monai_wrapper.ARCH:
        return monai_wrapper.MonaiAttentionUNetConfig.from_dict(doc).to_dict()
    channels = doc.get("channels", unet_config.UNetConfig.channels)
    stages = len(channels) if isinstance(channels, (list, tuple)) else 0
    for key, fewer in PER_STAGE.items():
        if key in doc:
            doc[key] = expand_stages(doc[key], stages - fewer, key)
    return unet_config.UNetConfig.from_dict(doc).to_dict()


def build_model(name: str, in_channels: int, out_channels: int, **overrides: Any) -> nn.Module:
    """Build preset ``name`` (see :data:`PRESETS`) for ``in_channels`` image channels and ``out_channels`` classes.

    ``overrides`` are config fields (e.g. ``channels=(8, 16, 32)``, ``norm="group"``, ``deep_supervision=2``);
    an unknown one raises :class:`~medattn.models.config.ModelConfigError` listing the known ones.
    """
    return build_from_config(resolve_config(name, in_channels, out_channels, **overrides))


def build_from_config(config: Mapping[str, Any]) -> nn.Module:
    """Rebuild a network from its ``model.config`` dict (as stored in a checkpoint), with fresh weights."""
    if not isinstance(config, Mapping):
        raise ModelConfigError(f"model config: expected a mapping, got {type(config).__name__}")
    arch = config.get("arch", unet_config.ARCH)
    if arch == unet_config.ARCH:
        from medattn.models.unet import AttentionGatedUNet

        return AttentionGatedUNet(unet_config.UNetConfig.from_dict(config))
    if arch == monai_wrapper.ARCH:
        return monai_wrapper.MonaiAttentionUNet(monai_wrapper.MonaiAttentionUNetConfig.from_dict(config))
    raise ModelConfigError(f"model config: unknown arch {arch!r}; known: {unet_config.ARCH!r}, {monai_wrapper.ARCH!r}")


def model_from_checkpoint(doc: Mapping[str, Any], strict: bool = True) -> nn.Module:
    """Rebuild a model from ``{"config": model.config, "state_dict": model.state_dict(), ...}``."""
    if not isinstance(doc, Mapping) or "config" not in doc or "state_dict" not in doc:
        keys = sorted(doc) if isinstance(doc, Mapping) else type(doc).__name__
        raise ModelConfigError(f"checkpoint: expected the keys 'config' and 'state_dict', got {keys}")
    model = build_from_config(doc["config"])
    model.load_state_dict(doc["state_dict"], strict=strict)
    return model


def models_table(measure: bool, in_channels: int, out_channels: int, window: int) -> str:
    """The text table of ``medattn models``: per preset its parameters and forward FLOPs per voxel at a cubic
    ``window`` (counted, batch 1), and with ``measure`` the median forward time on this machine (eval mode,
    inference, the current thread settings) with the throughput in megavoxels per second."""
    import torch

    from medattn.models.flops import count_parameters, flops_per_voxel, time_forward

    if window < 1:
        raise ModelConfigError(f"--window: expected a positive edge in voxels, got {window}")
    header = ["model", "params", "kFLOP/voxel", "GFLOP/window"]
    if measure:
        header += ["ms/window", "Mvoxel/s"]
    header.append("description")
    rows = []
    voxels = window**3
    for name in PRESETS:
        with torch.device("meta"):  # counting needs shapes only: no weights are allocated or initialised
            shell = build_model(name, in_channels, out_channels)
        fpv = flops_per_voxel(shell, in_channels, window)
        row = [name, f"{count_parameters(shell) / 1e6:.2f}M", f"{fpv / 1e3:.1f}", f"{fpv * voxels / 1e9:.2f}"]
        if measure:
            model = build_model(name, in_channels, out_channels)
            t = time_forward(model, (1, in_channels, window, window, window), repeats=3)
            row += [f"{t.median * 1e3:.0f}", f"{voxels / t.median / 1e6:.2f}"]
        row.append(str(PRESETS[name]["description"]))
        rows.append(row)
    note = f"in_channels={in_channels}, out_channels={out_channels}, window {window}^3, batch 1, forward only"
    return "\n".join([format_table(header, rows), "", note])
