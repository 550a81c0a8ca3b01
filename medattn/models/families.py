"""The families of networks a preset can belong to: how each resolves its fields, builds, and fits a plan.

A family is one network class with its config class: medattn's
:class:`~medattn.models.unet.AttentionGatedUNet` (``"attention_gated_unet"``) and the wrapper of MONAI's
``AttentionUnet`` (``"monai_attention_unet"``). :data:`FAMILIES` is keyed by the ``arch`` that a model config
stores, so a model file finds its builder here without the preset that made it.

Presets (:data:`medattn.models.registry.PRESETS`) name a family and give values for its config fields; adding a
preset never touches this file. Adding a family means writing its three functions (resolve, build, fit a plan) and
adding one :class:`Family` entry to :data:`FAMILIES`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import nn

from medattn.errors import ConfigError
from medattn.models import config as unet_config
from medattn.models import monai_attention_unet as monai_wrapper
from medattn.models.config import ModelConfigError
from medattn.typing import Triple

if TYPE_CHECKING:
    from medattn.data.plan import Plan

StageSelector = Mapping[str, Any]
"""Per-stage values relative to the depth: ``{"rest": v}`` plus any of ``"first"``, ``"last"`` and stage indices
(``"1"``, ``"-2"``), e.g. ``{"last": "mhsa", "rest": "none"}``; expanded to one value per stage."""

PER_STAGE = {"strides": 0, "kernel_sizes": 0, "encoder_convs": 0, "encoder_attention": 0}
"""Per-stage fields of :class:`~medattn.models.config.UNetConfig`: 0 = one value per stage, 1 = one per decoder
stage (one fewer)."""
PER_STAGE.update({"decoder_convs": 1, "decoder_attention": 1})


@dataclass(frozen=True)
class PlanFit:
    """A preset being shaped to a preprocessing plan: what a family's ``fit_plan`` decides from.

    Attributes:
        model: the preset's name (for messages).
        plan: the plan (pooling steps and kernels per grid, in (X, Y, Z) order).
        channels: the stage widths already chosen, finest first; the network has ``len(channels)`` stages.
        deep_supervision: extra outputs asked for; ``None`` leaves the family's default.
        options: the user's model config fields; they are applied after ``fit_plan`` and win over it.
        resolve: the preset's explicit config dict (in/out channels from the plan) for the given overrides.
    """

    model: str
    plan: Plan
    channels: tuple[int, ...]
    deep_supervision: int | None
    options: Mapping[str, Any]
    resolve: Callable[..., dict[str, Any]]

    @property
    def steps(self) -> list[Triple]:
        """The plan's pooling steps for the stages below the first (``plan.strides[1 : len(channels)]``)."""
        return [(int(st[0]), int(st[1]), int(st[2])) for st in self.plan.strides[1 : len(self.channels)]]


@dataclass(frozen=True)
class Family:
    """How one network class is configured, built and fitted to a plan.

    Attributes:
        arch: the ``arch`` its configs store (the key in :data:`FAMILIES`, and the ``family`` a preset names).
        resolve: preset fields with overrides and in/out channels (a fresh dict it may change) -> the explicit,
            validated, JSON-ready config dict; raises :class:`ModelConfigError` naming a bad field.
        build: a config dict (explicit, as ``resolve`` returns it or a model file stores it) -> the network with
            fresh weights.
        fit_plan: the config overrides that shape a preset to a plan (see :class:`PlanFit`); raises
            :class:`~medattn.errors.ConfigError` when the plan does not fit the family.
    """

    arch: str
    resolve: Callable[[dict[str, Any]], dict[str, Any]]
    build: Callable[[Mapping[str, Any]], nn.Module]
    fit_plan: Callable[[PlanFit], dict[str, Any]]


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


# --- attention_gated_unet: medattn's own network -------------------------------------------------------------


def resolve_unet(doc: dict[str, Any]) -> dict[str, Any]:
    """:class:`~medattn.models.config.UNetConfig` fields, per-stage selectors expanded for the depth."""
    channels = doc.get("channels", unet_config.UNetConfig.channels)
    stages = len(channels) if isinstance(channels, (list, tuple)) else 0
    for key, fewer in PER_STAGE.items():
        if key in doc:
            doc[key] = expand_stages(doc[key], stages - fewer, key)
    return unet_config.UNetConfig.from_dict(doc).to_dict()


def build_unet(config: Mapping[str, Any]) -> nn.Module:
    from medattn.models.unet import AttentionGatedUNet

    return AttentionGatedUNet(unet_config.UNetConfig.from_dict(config))


def fit_unet(fit: PlanFit) -> dict[str, Any]:
    """The plan's pooling steps go, in order, to the stages where the preset pools, each stage with the plan's
    kernel for its grid (unless the options give ``strides``); two deep-supervision outputs by default."""
    over: dict[str, Any] = {}
    steps, n = fit.steps, len(fit.channels)
    if "strides" not in fit.options:  # the user's strides stand as given (with the preset's kernels unless given)
        pattern = fit.resolve(**{"channels": fit.channels, **fit.options})["strides"]
        pooled = [max(st) > 1 for st in pattern]
        if sum(pooled) > len(steps):
            raise ConfigError(
                f"{fit.model} pools at {sum(pooled)} of its {n} stages, the plan allows {len(steps)} pooling steps "
                f"({[list(st) for st in fit.plan.strides]}); give model_options strides explicitly"
            )
        strides, kernels, used = [], [], 0
        for p in pooled:
            strides.append(steps[used] if p else (1, 1, 1))
            used += int(p)
            kernels.append(tuple(int(v) for v in fit.plan.kernel_sizes[used]))
        over["strides"] = tuple(strides)
        over["kernel_sizes"] = tuple(kernels)
    over["deep_supervision"] = min(2, n - 2) if fit.deep_supervision is None else fit.deep_supervision
    return over


# --- monai_attention_unet: MONAI's AttentionUnet, wrapped for comparison ----------------------------------------


def resolve_monai(doc: dict[str, Any]) -> dict[str, Any]:
    return monai_wrapper.MonaiAttentionUNetConfig.from_dict(doc).to_dict()


def build_monai(config: Mapping[str, Any]) -> nn.Module:
    return monai_wrapper.MonaiAttentionUNet(monai_wrapper.MonaiAttentionUNetConfig.from_dict(config))


def fit_monai(fit: PlanFit) -> dict[str, Any]:
    """One isotropic integer stride per pooling step; no deep supervision."""
    steps = fit.steps
    if any(len(set(st)) != 1 for st in steps):
        raise ConfigError(
            f"{fit.model} takes isotropic strides only; the plan pools {[list(st) for st in fit.plan.strides]}. "
            "Use an attention-gated U-Net preset for anisotropic data."
        )
    if fit.deep_supervision:
        raise ConfigError(f"{fit.model} has no deep supervision; leave deep_supervision unset or 0")
    return {"strides": tuple(st[0] for st in steps)}


FAMILIES: dict[str, Family] = {
    f.arch: f
    for f in (
        Family(unet_config.ARCH, resolve_unet, build_unet, fit_unet),
        Family(monai_wrapper.ARCH, resolve_monai, build_monai, fit_monai),
    )
}
"""Every family by the ``arch`` its configs store."""
