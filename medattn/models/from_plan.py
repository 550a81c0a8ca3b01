"""The network a run trains: a model preset shaped by the plan.

The plan decides *how much and along which axes* to pool, and the kernel for each grid; the preset decides *at
which stages* (its stride pattern: ``ag_unet`` pools in its stem and keeps the bottleneck on the grid before it,
``ag_unet_fullres`` keeps the stem at full resolution, as nnU-Net does). The plan's pooling steps
(``plan.strides[1:]``, e.g. ``(1, 2, 2)`` on anisotropic data) go, in order, to the stages where the preset pools;
each stage gets the plan's kernel for the grid it works on (in-plane kernels while an axis is still coarse).

The network has one stage per plan pooling step plus one (``len(plan.strides)``), input channels from the plan's
channels and one output per class. Widths default to the preset's base width doubled per stage (capped at 320, as
nnU-Net does); ``widths`` with fewer stages takes the plan's first pooling steps. ``model_options`` (any model
config field, ``strides`` and ``kernel_sizes`` included) win over all of this. MONAI's ``AttentionUnet`` wrapper
takes isotropic integer strides only and has no deep supervision.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from medattn.data.plan import Plan
from medattn.errors import ConfigError

MAX_WIDTH = 320


def network_overrides(
    model: str,
    plan: Plan,
    widths: Sequence[int] | None = None,
    deep_supervision: int | None = None,
    options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The config overrides :func:`build_network` passes to ``build_model`` (see the module docstring)."""
    from medattn.models import config as unet_config
    from medattn.models import monai_attention_unet
    from medattn.models.registry import PRESETS

    if model not in PRESETS:
        raise ConfigError(f"unknown model {model!r}; available: {', '.join(PRESETS)}")
    preset = PRESETS[model]
    opts = dict(options or {})
    depth = len(plan.strides)
    if widths is not None and len(widths) > depth:
        raise ConfigError(
            f"widths {list(widths)}: {len(widths)} stages, but the plan's patch {list(plan.patch_size)} only "
            f"allows {depth} (strides {[list(s) for s in plan.strides]}); give at most {depth} widths"
        )
    n = len(widths) if widths is not None else depth
    if widths is None:
        default = preset.get("channels", unet_config.UNetConfig.channels)
        base = int(default[0])
        widths = [min(base * 2**i, MAX_WIDTH) for i in range(n)]
    over: dict[str, Any] = {"channels": tuple(int(w) for w in widths)}
    steps = [tuple(int(v) for v in st) for st in plan.strides[1:n]]
    if preset["arch"] == monai_attention_unet.ARCH:
        if any(len(set(st)) != 1 for st in steps):
            raise ConfigError(
                f"{model} takes isotropic strides only; the plan pools {[list(st) for st in plan.strides]}. "
                "Use an attention-gated U-Net preset for anisotropic data."
            )
        over["strides"] = tuple(st[0] for st in steps)
        if deep_supervision:
            raise ConfigError(f"{model} has no deep supervision; leave deep_supervision unset or 0")
    elif "strides" not in opts:  # the user's strides stand as given (with the preset's kernels unless given too)
        from medattn.models.registry import resolve_config

        pattern = resolve_config(model, plan.num_channels, plan.num_classes, **{**over, **opts})["strides"]
        pooled = [max(st) > 1 for st in pattern]
        if sum(pooled) > len(steps):
            raise ConfigError(
                f"{model} pools at {sum(pooled)} of its {n} stages, the plan allows {len(steps)} pooling steps "
                f"({[list(st) for st in plan.strides]}); give model_options strides explicitly"
            )
        strides, kernels, used = [], [], 0
        for p in pooled:
            strides.append(steps[used] if p else (1, 1, 1))
            used += int(p)
            kernels.append(tuple(int(v) for v in plan.kernel_sizes[used]))
        over["strides"] = tuple(strides)
        over["kernel_sizes"] = tuple(kernels)
    if preset["arch"] != monai_attention_unet.ARCH:
        over["deep_supervision"] = min(2, n - 2) if deep_supervision is None else deep_supervision
    over.update(opts)
    return over


def build_network(
    model: str,
    plan: Plan,
    widths: Sequence[int] | None = None,
    deep_supervision: int | None = None,
    options: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Build preset ``model`` for ``plan`` (in/out channels, topology); raises :class:`ConfigError` on misfit."""
    from medattn.models.registry import build_model

    over = network_overrides(model, plan, widths, deep_supervision, options)
    return build_model(model, plan.num_channels, plan.num_classes, **over)


def output_scales(model: nn.Module) -> list[tuple[int, int, int]] | None:
    """The deep-supervision output scales of ``model`` (unwrapping DDP), or None when it does not say."""
    net = getattr(model, "module", model)
    scales = getattr(net, "output_scales", None)
    if scales is None:
        return None
    return [(int(s[0]), int(s[1]), int(s[2])) for s in scales]
