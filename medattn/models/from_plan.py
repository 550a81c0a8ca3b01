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

The widths are chosen here for every preset; what follows from the plan is the rule of the preset's family
(``fit_plan`` of its :class:`~medattn.models.families.Family`: ``fit_unet``, ``fit_monai``), so a new preset of a
family needs nothing here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

from torch import nn

from medattn.data.plan import Plan
from medattn.errors import ConfigError
from medattn.typing import Triple

MAX_WIDTH = 320


def network_overrides(
    model: str,
    plan: Plan,
    widths: Sequence[int] | None = None,
    deep_supervision: int | None = None,
    options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The config overrides :func:`build_network` passes to ``build_model`` (see the module docstring)."""
    from medattn.models.families import FAMILIES, PlanFit
    from medattn.models.registry import get_preset, resolve_config

    preset = get_preset(model)
    opts = dict(options or {})
    depth = len(plan.strides)
    if widths is not None and len(widths) > depth:
        raise ConfigError(
            f"widths {list(widths)}: {len(widths)} stages, but the plan's patch {list(plan.patch_size)} only "
            f"allows {depth} (strides {[list(s) for s in plan.strides]}); give at most {depth} widths"
        )
    if widths is None:
        base = int(resolve_config(model, plan.num_channels, plan.num_classes)["channels"][0])
        widths = [min(base * 2**i, MAX_WIDTH) for i in range(depth)]
    channels = tuple(int(w) for w in widths)
    fit = PlanFit(
        model=model,
        plan=plan,
        channels=channels,
        deep_supervision=deep_supervision,
        options=opts,
        resolve=partial(resolve_config, model, plan.num_channels, plan.num_classes),
    )
    over: dict[str, Any] = {"channels": channels}
    over.update(FAMILIES[preset.family].fit_plan(fit))
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


def output_scales(model: nn.Module) -> list[Triple] | None:
    """The deep-supervision output scales of ``model`` (unwrapping DDP), or None when it does not say."""
    net = getattr(model, "module", model)
    scales = getattr(net, "output_scales", None)
    if scales is None:
        return None
    return [(int(s[0]), int(s[1]), int(s[2])) for s in scales]
