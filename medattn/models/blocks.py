"""Convolutional building blocks of the U-Net: normalisation and activation factories, convolution blocks,
upsampling and the additive attention gate of Oktay et al. (2018).

Every block takes its normalisation and activation explicitly; nothing falls back to a hidden default. All tensors
are float (B, C, X, Y, Z); the blocks work in either memory format (contiguous or ``torch.channels_last_3d``).
"""

from __future__ import annotations

import torch
from torch import nn

from medattn.models.config import ActName, ModelConfigError, NormName, UpsampleName
from medattn.models.conv import Conv3d, ConvTranspose3d
from medattn.models.norm import GroupNorm
from medattn.models.resample import upsample_trilinear
from medattn.typing import Triple


class InstanceNorm3dGN(GroupNorm):
    """Affine instance normalisation computed as a group norm with one group per channel.

    Numerically the same as ``nn.InstanceNorm3d(channels, affine=True)`` (per sample and channel: zero mean, unit
    variance over X, Y, Z; then a learned scale and shift), but PyTorch's CPU group-norm kernel is several times
    faster than its instance-norm path (which reshapes to a batch norm) and keeps ``channels_last_3d`` layouts; the
    backward is :mod:`medattn.models.norm`'s.
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__(channels, channels, eps=eps, affine=True)


def _largest_divisor(n: int, at_most: int) -> int:
    return max(d for d in range(1, min(n, at_most) + 1) if n % d == 0)


def make_norm(kind: NormName, channels: int, groups: int = 8) -> nn.Module:
    """A normalisation layer over ``channels`` feature maps.

    Args:
        kind: ``"instance"`` (affine, see :class:`InstanceNorm3dGN`), ``"group"`` (the largest divisor of
            ``channels`` not above ``groups`` groups) or ``"batch"`` (``nn.BatchNorm3d``).
        channels: number of channels normalised.
        groups: requested number of groups for ``"group"``.
    """
    if kind == "instance":
        return InstanceNorm3dGN(channels)
    if kind == "group":
        return GroupNorm(_largest_divisor(channels, groups), channels, affine=True)
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    raise ModelConfigError(f"norm: {kind!r} is not one of 'instance', 'group', 'batch'")


def make_act(kind: ActName) -> nn.Module:
    """An activation: ``"relu"``, ``"leakyrelu"`` (negative slope 0.01), ``"gelu"`` or ``"silu"``."""
    if kind == "relu":
        return nn.ReLU(inplace=True)
    if kind == "leakyrelu":
        return nn.LeakyReLU(0.01, inplace=True)
    if kind == "gelu":
        return nn.GELU()
    if kind == "silu":
        return nn.SiLU(inplace=True)
    raise ModelConfigError(f"act: {kind!r} is not one of 'relu', 'leakyrelu', 'gelu', 'silu'")


def same_padding(kernel: Triple) -> Triple:
    """Padding that keeps the size of a stride-1 convolution with an odd ``kernel``."""
    return (kernel[0] // 2, kernel[1] // 2, kernel[2] // 2)


class ConvNormAct(nn.Sequential):
    """Convolution (no bias: the norm's shift replaces it), normalisation, then activation (unless ``act=None``)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: Triple,
        stride: Triple,
        norm: NormName,
        act: ActName | None,
        norm_groups: int = 8,
    ) -> None:
        layers: list[nn.Module] = [
            Conv3d(in_channels, out_channels, kernel, stride=stride, padding=same_padding(kernel), bias=False),
            make_norm(norm, out_channels, norm_groups),
        ]
        if act is not None:
            layers.append(make_act(act))
        super().__init__(*layers)


class ConvBlock(nn.Module):
    """``num_convs`` convolution-norm-activation layers; the first one has ``stride``; optionally residual.

    With ``residual=True`` the block computes ``act(convs(x) + shortcut(x))`` where the last convolution's
    activation moves after the sum and the shortcut is the identity when shapes match, otherwise an average pool
    by ``stride`` followed by a 1x1x1 convolution and norm (as in nnU-Net's residual encoders).

    Input (B, in_channels, X, Y, Z) -> output (B, out_channels, X / stride, Y / stride, Z / stride).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_convs: int,
        kernel: Triple,
        stride: Triple,
        norm: NormName,
        act: ActName,
        residual: bool = False,
        norm_groups: int = 8,
    ) -> None:
        super().__init__()
        if num_convs < 1:
            raise ModelConfigError(f"ConvBlock: num_convs must be >= 1, got {num_convs}")
        convs = []
        for i in range(num_convs):
            last_linear = residual and i == num_convs - 1
            convs.append(
                ConvNormAct(
                    in_channels if i == 0 else out_channels,
                    out_channels,
                    kernel,
                    stride if i == 0 else (1, 1, 1),
                    norm,
                    None if last_linear else act,
                    norm_groups,
                )
            )
        self.convs = nn.Sequential(*convs)
        self.shortcut: nn.Module | None = None
        self.out_act: nn.Module | None = None
        if residual:
            if in_channels == out_channels and stride == (1, 1, 1):
                self.shortcut = nn.Identity()
            else:
                pool: nn.Module = nn.Identity()
                if stride != (1, 1, 1):  # ceil mode: the same output size as the strided convolution
                    pool = nn.AvgPool3d(stride, stride, ceil_mode=True, count_include_pad=False)
                self.shortcut = nn.Sequential(
                    pool,
                    Conv3d(in_channels, out_channels, 1, bias=False),
                    make_norm(norm, out_channels, norm_groups),
                )
            self.out_act = make_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.convs(x)
        if self.shortcut is not None and self.out_act is not None:
            y = self.out_act(y + self.shortcut(x))
        return y


class Upsample(nn.Module):
    """Brings decoder features one stage finer: (B, in, X, Y, Z) -> (B, out, X*s0, Y*s1, Z*s2).

    ``mode="transposed"``: a transposed convolution with kernel = stride (each fine voxel is a learned linear
    map of its coarse parent; the cheapest learned upsampling). ``mode="trilinear"``: a 1x1x1 convolution at the
    coarse scale followed by trilinear interpolation (``align_corners=False``); the two commute, so doing the
    convolution first costs ``prod(scale)`` times less.
    """

    def __init__(self, in_channels: int, out_channels: int, scale: Triple, mode: UpsampleName) -> None:
        super().__init__()
        self.scale = scale
        self.mode = mode
        if mode == "transposed":
            self.conv: nn.Module = ConvTranspose3d(in_channels, out_channels, scale, bias=False)
        elif mode == "trilinear":
            self.conv = Conv3d(in_channels, out_channels, 1, bias=False)
        else:
            raise ModelConfigError(f"upsample: {mode!r} is not one of 'transposed', 'trilinear'")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.conv(x)
        if self.mode == "trilinear" and self.scale != (1, 1, 1):
            size = [n * s for n, s in zip(y.shape[2:], self.scale)]
            y = upsample_trilinear(y, size)
        return y


class AttentionGate(nn.Module):
    """Additive attention gate of Oktay et al. 2018 ("Attention U-Net"), gated from the coarser scale.

    With the skip features ``x`` (B, C_x, X, Y, Z) and the gating signal ``g`` (B, C_g, X/s0, Y/s1, Z/s2) taken
    from the decoder one stage coarser (before it is upsampled), the gate computes, at the coarse resolution,

        q = act(W_x * x + W_g * g + b),    alpha = sigmoid(psi * q + b_psi)

    where ``W_x`` is a convolution with kernel = stride = ``scale`` (it brings ``x`` to ``g``'s grid), ``W_g``
    and ``psi`` are 1x1x1 convolutions, then resamples ``alpha`` trilinearly to ``x``'s grid and returns
    ``(alpha * x, alpha)``. ``alpha`` is (B, 1, X, Y, Z) in [0, 1]. The gate has no normalisation layer (as in the
    paper) so that the attention coefficients are not re-centred per sample; its nonlinearity is ``act``. Where
    two stages share a grid (``scale = (1, 1, 1)``, e.g. the default bottleneck) ``W_x`` is a 1x1x1 convolution
    and the gate works at that grid.
    """

    def __init__(self, skip_channels: int, gate_channels: int, inter_channels: int, scale: Triple, act: ActName):
        super().__init__()
        self.theta_x = Conv3d(skip_channels, inter_channels, scale, stride=scale, bias=False)
        self.phi_g = Conv3d(gate_channels, inter_channels, 1, bias=True)
        self.act = make_act(act)
        self.psi = Conv3d(inter_channels, 1, 1, bias=True)

    def coefficients(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """The attention coefficients (B, 1, *x.shape[2:]), float in [0, 1]."""
        q = self.theta_x(x)
        if q.shape[2:] != g.shape[2:]:
            raise ValueError(
                f"AttentionGate: skip {tuple(x.shape)} does not reduce to the gating grid {tuple(g.shape)}; "
                "the input size must be a multiple of the network's required_multiple"
            )
        q = self.act(q + self.phi_g(g))
        alpha = torch.sigmoid(self.psi(q))
        if alpha.shape[2:] != x.shape[2:]:
            alpha = upsample_trilinear(alpha, x.shape[2:])
        return alpha

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha = self.coefficients(x, g)
        return x * alpha, alpha
