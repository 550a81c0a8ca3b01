"""Model presets by name, building a model from a preset or a saved config, and the ``medattn models`` table.

A preset is one :class:`Preset` in :data:`PRESETS`: a name, the family of networks it belongs to (its ``arch``, a
key of :data:`~medattn.models.families.FAMILIES`), a one-line description and the config fields that set it apart
(:class:`~medattn.models.config.UNetConfig` fields for ``attention_gated_unet``, MONAI's arguments for
``monai_attention_unet``). Per-stage fields can be written relative to the depth, ``{"last": "mhsa", "rest":
"none"}``, so a preset keeps its meaning when ``channels`` is overridden (see
:data:`~medattn.models.families.StageSelector`); the built model's ``.config`` is always fully explicit and is
what a checkpoint stores::

    net = build_model("ag_unet", in_channels=1, out_channels=3, channels=(16, 32, 64, 128))
    torch.save({"config": net.config, "state_dict": net.state_dict()}, "model.pt")
    net2 = model_from_checkpoint(torch.load("model.pt", weights_only=True))   # same network, same weights

Adding a preset is adding data: one more ``Preset(...)`` in :data:`BUILTIN_PRESETS` below (and its pinned sizes
in ``tests/models/test_presets.py``) or, from outside the package, one call to :func:`register_preset`::

    register_preset(Preset("ag_unet_res", "attention_gated_unet", "ag_unet with residual blocks",
                           {"gates": True, "residual": True}))

Nothing else changes: :func:`build_model`, :func:`~medattn.models.from_plan.build_network` (with the plan rules
of its family), ``medattn models`` and model files pick it up (a model file stores the explicit config with its
``arch`` and loads without the preset). The preset is checked when registered: its family must exist and its fields
must make a valid config at the family's default depth. A new family of networks (its own class and config) is its
resolve, build and fit-a-plan functions and one :class:`~medattn.models.families.Family` entry in
:data:`~medattn.models.families.FAMILIES`; no function here or in :mod:`~medattn.models.from_plan` changes.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from torch import nn

from medattn.models import config as unet_config
from medattn.models import monai_attention_unet as monai_wrapper
from medattn.models.config import ModelConfigError
from medattn.models.families import FAMILIES, StageSelector, expand_stages
from medattn.text import format_table

__all__ = [
    "BUILTIN_PRESETS",
    "FULLRES",
    "PRESETS",
    "Preset",
    "StageSelector",
    "build_from_config",
    "build_model",
    "expand_stages",
    "get_preset",
    "list_models",
    "model_from_checkpoint",
    "models_table",
    "register_preset",
    "resolve_config",
]

#: Fields a preset cannot set: the family gives ``arch``, each build call gives the channels.
RESERVED = ("arch", "format_version", "in_channels", "out_channels")


@dataclass(frozen=True)
class Preset:
    """A named network, as data: its family and the config fields that set it apart.

    Args:
        name: the name users give (``build_model``, ``--model``, the ``medattn models`` row).
        family: the ``arch`` of its family, a key of :data:`~medattn.models.families.FAMILIES`.
        description: one line for ``medattn models``.
        defaults: config fields of that family (per-stage ones may be
            :data:`~medattn.models.families.StageSelector` dicts); a field left out takes the config's default,
            and overrides given when building win. Stored read-only.
    """

    name: str
    family: str
    description: str
    defaults: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or any(c.isspace() for c in self.name):
            raise ModelConfigError(f"preset name: expected a non-empty name without spaces, got {self.name!r}")
        if not isinstance(self.description, str):
            raise ModelConfigError(f"preset {self.name!r}: description must be a string, got {self.description!r}")
        if not isinstance(self.defaults, Mapping):
            raise ModelConfigError(
                f"preset {self.name!r}: defaults must be a mapping of config fields, got {type(self.defaults).__name__}"
            )
        reserved = sorted(set(self.defaults) & set(RESERVED))
        if reserved:
            raise ModelConfigError(
                f"preset {self.name!r}: {reserved} cannot be preset (the family gives arch, each build the channels)"
            )
        object.__setattr__(self, "defaults", MappingProxyType(dict(self.defaults)))


#: The full-resolution stem: one convolution at the input's resolution, its skip fused by addition.
FULLRES: Mapping[str, Any] = MappingProxyType(
    {
        "strides": {"first": 1, "rest": 2},
        "encoder_convs": {"first": 1, "rest": 2},
        "decoder_convs": {"first": 0, "rest": 1},
        "fusion": "add",
    }
)

_AG, _MONAI = unet_config.ARCH, monai_wrapper.ARCH

PRESETS: dict[str, Preset] = {}
"""Every preset by name, in ``medattn models`` order; add one with :func:`register_preset`."""


def _resolve(preset: Preset, in_channels: int, out_channels: int, overrides: Mapping[str, Any]) -> dict[str, Any]:
    doc = {k: copy.deepcopy(v) for k, v in preset.defaults.items()}
    doc.update(overrides, in_channels=in_channels, out_channels=out_channels)
    return FAMILIES[preset.family].resolve(doc)


def register_preset(preset: Preset) -> Preset:
    """Add ``preset`` to :data:`PRESETS` after checking it: a new name, a known family, fields that make a valid
    config (at the family's default depth, 1 input channel, 2 classes); raises :class:`ModelConfigError`."""
    if not isinstance(preset, Preset):
        raise ModelConfigError(f"register_preset: expected a Preset, got {type(preset).__name__}")
    if preset.name in PRESETS:
        raise ModelConfigError(f"preset {preset.name!r} exists already ({PRESETS[preset.name].description})")
    if preset.family not in FAMILIES:
        raise ModelConfigError(
            f"preset {preset.name!r}: unknown family {preset.family!r}; known: {', '.join(map(repr, FAMILIES))}"
        )
    try:
        _resolve(preset, 1, 2, {})
    except ModelConfigError as e:
        raise ModelConfigError(f"preset {preset.name!r}: {e}") from e
    PRESETS[preset.name] = preset
    return preset


BUILTIN_PRESETS: tuple[Preset, ...] = (
    Preset("unet", _AG, "the same U-Net without gates (the baseline)", {"gates": False}),
    Preset("ag_unet", _AG, "additive attention gates on the skips (Oktay et al. 2018)", {"gates": True}),
    Preset(
        "ag_unet_fullres",
        _AG,
        "ag_unet with a full-resolution stem and skip (one conv there, additive fusion)",
        {"gates": True, **FULLRES},
    ),
    Preset("unet_fullres", _AG, "ag_unet_fullres without gates (its baseline)", {"gates": False, **FULLRES}),
    Preset(
        "ag_unet_scse",
        _AG,
        "gates + scSE after every encoder and decoder block below the stem",
        {
            "gates": True,
            "encoder_attention": {"first": "none", "rest": "scse"},
            "decoder_attention": {"first": "none", "rest": "scse"},
        },
    ),
    Preset(
        "ag_unet_cbam",
        _AG,
        "gates + CBAM-3D after every encoder block below the stem",
        {"gates": True, "encoder_attention": {"first": "none", "rest": "cbam"}},
    ),
    Preset(
        "ag_unet_mhsa",
        _AG,
        "gates + multi-head self-attention at the bottleneck (hybrid CNN-Transformer)",
        {"gates": True, "encoder_attention": {"last": "mhsa", "rest": "none"}},
    ),
    Preset(
        "ag_unet_wsa",
        _AG,
        "gates + windowed self-attention in encoder stages 1 and 2 (the larger feature maps)",
        {"gates": True, "encoder_attention": {"1": "wsa", "2": "wsa", "rest": "none"}},
    ),
    Preset("monai_attention_unet", _MONAI, "MONAI's AttentionUnet, wrapped (for comparison)"),
)
"""The presets medattn ships, in ``medattn models`` order: add a preset here, as one more entry."""
for _preset in BUILTIN_PRESETS:
    register_preset(_preset)


def list_models() -> list[str]:
    """Names of the presets, in table order."""
    return list(PRESETS)


def get_preset(name: str) -> Preset:
    """The preset called ``name``; an unknown name raises :class:`ModelConfigError` listing the known ones."""
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise ModelConfigError(f"unknown model {name!r}; available: {', '.join(PRESETS)}") from None


def resolve_config(name: str, in_channels: int, out_channels: int, **overrides: Any) -> dict[str, Any]:
    """The explicit config dict of preset ``name`` with ``overrides`` applied (validated; nothing is built)."""
    return _resolve(get_preset(name), in_channels, out_channels, overrides)


def build_model(name: str, in_channels: int, out_channels: int, **overrides: Any) -> nn.Module:
    """Build preset ``name`` (see :data:`PRESETS`) for ``in_channels`` image channels and ``out_channels`` classes.

    ``overrides`` are config fields (e.g. ``channels=(8, 16, 32)``, ``norm="group"``, ``deep_supervision=2``);
    an unknown one raises :class:`~medattn.models.config.ModelConfigError` listing the known ones.
    """
    return build_from_config(resolve_config(name, in_channels, out_channels, **overrides))


def build_from_config(config: Mapping[str, Any]) -> nn.Module:
    """Rebuild a network from its ``model.config`` dict (as stored in a checkpoint), with fresh weights.

    The config's ``arch`` picks the family (:data:`~medattn.models.families.FAMILIES`); a config without one is
    an ``attention_gated_unet``'s. No preset is needed.
    """
    if not isinstance(config, Mapping):
        raise ModelConfigError(f"model config: expected a mapping, got {type(config).__name__}")
    arch = config.get("arch", unet_config.ARCH)
    family = FAMILIES.get(arch) if isinstance(arch, str) else None
    if family is None:
        raise ModelConfigError(f"model config: unknown arch {arch!r}; known: {', '.join(map(repr, FAMILIES))}")
    return family.build(config)


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
        row.append(PRESETS[name].description)
        rows.append(row)
    note = f"in_channels={in_channels}, out_channels={out_channels}, window {window}^3, batch 1, forward only"
    return "\n".join([format_table(header, rows), "", note])
