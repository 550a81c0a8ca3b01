"""MONAI's ``AttentionUnet``, wrapped with a config and input padding so it can be compared like for like.

Only for comparison: it gates with the decoder feature already upsampled to the skip's grid, uses BatchNorm
throughout (hard-coded), has no deep supervision and no attention read-out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from medattn.models.config import ModelConfigError
from medattn.models.padding import check_input, crop_to, pad_to_multiple
from medattn.typing import Triple

ARCH = "monai_attention_unet"


@dataclass(frozen=True)
class MonaiAttentionUNetConfig:
    """Arguments of ``monai.networks.nets.AttentionUnet`` (3D): widths finest first, one int stride per level
    below the first, isotropic kernels, dropout probability."""

    in_channels: int = 1
    out_channels: int = 2
    channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    strides: tuple[int, ...] = ()
    kernel_size: int = 3
    up_kernel_size: int = 3
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if len(self.channels) < 2 or any(not isinstance(c, int) or c < 1 for c in self.channels):
            raise ModelConfigError(f"channels: expected at least two positive widths, got {self.channels!r}")
        object.__setattr__(self, "channels", tuple(self.channels))
        strides = tuple(self.strides) if self.strides else (2,) * (len(self.channels) - 1)
        if len(strides) != len(self.channels) - 1 or any(not isinstance(s, int) or s < 1 for s in strides):
            raise ModelConfigError(
                f"strides: expected {len(self.channels) - 1} positive ints (one per level below the first), "
                f"got {self.strides!r}"
            )
        object.__setattr__(self, "strides", strides)
        for name in ("in_channels", "out_channels", "kernel_size", "up_kernel_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ModelConfigError(f"{name}: expected a positive int, got {value!r}")
        if not 0 <= self.dropout < 1:
            raise ModelConfigError(f"dropout: expected a probability in [0, 1), got {self.dropout!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch": ARCH,
            "format_version": 1,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "channels": list(self.channels),
            "strides": list(self.strides),
            "kernel_size": self.kernel_size,
            "up_kernel_size": self.up_kernel_size,
            "dropout": self.dropout,
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> MonaiAttentionUNetConfig:
        body = dict(doc)
        if body.pop("arch", ARCH) != ARCH:
            raise ModelConfigError(f"model config: arch is not {ARCH!r}")
        body.pop("format_version", None)
        known = {"in_channels", "out_channels", "channels", "strides", "kernel_size", "up_kernel_size", "dropout"}
        unknown = sorted(set(body) - known)
        if unknown:
            raise ModelConfigError(f"unknown options {unknown} for {ARCH}; known options: {sorted(known)}")
        for key in ("channels", "strides"):
            if key in body:
                value = body[key]
                if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) for v in value):
                    raise ModelConfigError(f"{ARCH}: {key} must be a list of integers, one per stage, got {value!r}")
                body[key] = tuple(value)
        return cls(**body)


class MonaiAttentionUNet(nn.Module):
    """``monai.networks.nets.AttentionUnet`` behind the same interface as ours: logits (B, out, X, Y, Z) for any
    input size (padded at the high end to :attr:`required_multiple`, cropped back) and a ``.config`` dict."""

    def __init__(self, config: MonaiAttentionUNetConfig | Mapping[str, Any] | None = None, **overrides: Any):
        super().__init__()
        from monai.networks.nets import AttentionUnet

        if config is None:
            cfg = MonaiAttentionUNetConfig(**overrides)
        elif isinstance(config, MonaiAttentionUNetConfig):
            cfg = MonaiAttentionUNetConfig.from_dict({**config.to_dict(), **overrides})
        else:
            cfg = MonaiAttentionUNetConfig.from_dict({**config, **overrides})
        self.cfg = cfg
        self.net = AttentionUnet(
            spatial_dims=3,
            in_channels=cfg.in_channels,
            out_channels=cfg.out_channels,
            channels=cfg.channels,
            strides=cfg.strides,
            kernel_size=cfg.kernel_size,
            up_kernel_size=cfg.up_kernel_size,
            dropout=cfg.dropout,
        )

    @property
    def config(self) -> dict[str, Any]:
        return self.cfg.to_dict()

    @property
    def required_multiple(self) -> Triple:
        m = math.prod(self.cfg.strides)
        return (m, m, m)

    def forward(self, x: torch.Tensor, return_attention: bool = False) -> torch.Tensor:
        if return_attention:
            raise ValueError(f"{ARCH} does not expose its attention maps; use an attention_gated_unet preset")
        check_input(x, self.cfg.in_channels, ARCH)
        size = tuple(int(s) for s in x.shape[2:])
        y: torch.Tensor = self.net(pad_to_multiple(x, self.required_multiple))
        return crop_to(y, size).contiguous()
