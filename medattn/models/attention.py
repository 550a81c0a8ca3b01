"""Volumetric attention blocks that plug into any U-Net stage: scSE, CBAM-3D, global multi-head self-attention
(for the bottleneck) and windowed self-attention (cost linear in volume, for larger feature maps).

Each block maps a float tensor (B, C, X, Y, Z) to one of the same shape and works in either memory format. The two
self-attention blocks are pre-norm transformer layers over the voxels as tokens, computed with
``torch.nn.functional.scaled_dot_product_attention``; see :func:`make_attention` for the factory used by the
network.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from medattn.models.blocks import make_act
from medattn.models.config import ActName, AttentionName, ModelConfigError, PosEncodingName
from medattn.models.conv import Conv3d
from medattn.typing import Triple


class SqueezeExcitation3d(nn.Module):
    """Concurrent spatial and channel squeeze-and-excitation, scSE (Roy et al. 2018), in 3D.

    ``y = x * cse(x) + x * sse(x)`` with ``cse`` = global average pool -> 1x1x1 conv (C -> C/r) -> act -> 1x1x1
    conv (-> C) -> sigmoid, a (B, C, 1, 1, 1) channel weight, and ``sse`` = 1x1x1 conv (C -> 1) -> sigmoid, a
    (B, 1, X, Y, Z) voxel weight.
    """

    def __init__(self, channels: int, reduction: int, act: ActName) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.channel = nn.Sequential(
            Conv3d(channels, hidden, 1), make_act(act), Conv3d(hidden, channels, 1), nn.Sigmoid()
        )
        self.spatial = nn.Sequential(Conv3d(channels, 1, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cse = self.channel(x.mean(dim=(2, 3, 4), keepdim=True))
        return x * (cse + self.spatial(x))


class CBAM3d(nn.Module):
    """Convolutional block attention module (Woo et al. 2018) in 3D: a channel gate, then a spatial gate.

    Channel gate: a shared MLP (1x1x1 convs C -> C/r -> C with ``act``) on the global average and the global max,
    summed, sigmoid, multiplied in. Spatial gate: the channel-wise mean and max (2 maps) -> a
    ``spatial_kernel``-cubed convolution -> sigmoid, multiplied in. No normalisation inside the gates.
    """

    def __init__(self, channels: int, reduction: int, act: ActName, spatial_kernel: int = 7) -> None:
        super().__init__()
        if spatial_kernel < 1 or spatial_kernel % 2 == 0:
            raise ModelConfigError(f"CBAM3d: spatial_kernel must be odd and >= 1, got {spatial_kernel}")
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(Conv3d(channels, hidden, 1), make_act(act), Conv3d(hidden, channels, 1))
        self.spatial = Conv3d(2, 1, spatial_kernel, padding=spatial_kernel // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = x.mean(dim=(2, 3, 4), keepdim=True)
        mx = x.amax(dim=(2, 3, 4), keepdim=True)
        x = x * torch.sigmoid(self.mlp(avg) + self.mlp(mx))
        maps = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial(maps))


@lru_cache(maxsize=32)
def sincos_3d(channels: int, size: Triple) -> torch.Tensor:
    """Fixed 3D sine-cosine positional encoding, float32 (channels, X, Y, Z) on the CPU (cached; do not modify).

    ``channels // 6`` frequencies per axis (geometric from 1 to 1/10000 rad per voxel), a sine and a cosine
    each, for X, Y and Z in turn; the channels left over (``channels % 6``) are zero.
    """
    n_freq = channels // 6
    out = torch.zeros(channels, *size)
    if n_freq == 0:
        return out
    omega = 1.0 / (10000.0 ** (torch.arange(n_freq, dtype=torch.float64) / n_freq))
    for axis, n in enumerate(size):
        angle = torch.arange(n, dtype=torch.float64)[:, None] * omega[None, :]  # (n, n_freq)
        enc = torch.cat([angle.sin(), angle.cos()], dim=1).T.float()  # (2 n_freq, n)
        shape = [2 * n_freq, 1, 1, 1]
        shape[axis + 1] = n
        start = axis * 2 * n_freq
        out[start : start + 2 * n_freq] = enc.reshape(shape).expand(2 * n_freq, *size)
    return out


class PositionalEncoding3d(nn.Module):
    """Adds a positional encoding to (B, C, X, Y, Z) features: ``"conv"`` (learned depth-wise 3x3x3 convolution,
    a conditional encoding that works for any size and any window position), ``"sincos"`` (fixed, absolute in the
    feature grid) or ``"none"``."""

    def __init__(self, channels: int, kind: PosEncodingName) -> None:
        super().__init__()
        self.kind = kind
        self.conv: nn.Module | None = None
        if kind == "conv":
            self.conv = Conv3d(channels, channels, 3, padding=1, groups=channels, bias=True)
        elif kind not in ("sincos", "none"):
            raise ModelConfigError(f"pos_encoding: {kind!r} is not one of 'conv', 'sincos', 'none'")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv is not None:
            return x + self.conv(x)
        if self.kind == "sincos":
            size = (int(x.shape[2]), int(x.shape[3]), int(x.shape[4]))
            return x + sincos_3d(int(x.shape[1]), size).to(device=x.device, dtype=x.dtype)
        return x


class TokenTransformer(nn.Module):
    """A pre-norm transformer layer over tokens (B', N, C): multi-head self-attention, then an MLP, both residual.

    ``mask`` (optional, bool, broadcastable to (B', heads, N, N)) marks the keys each query may attend to.
    """

    def __init__(self, channels: int, heads: int, mlp_ratio: int, act: ActName) -> None:
        super().__init__()
        if channels % heads:
            raise ModelConfigError(f"attention: {heads} heads do not divide {channels} channels")
        self.heads = heads
        self.norm1 = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        self.norm2 = nn.LayerNorm(channels)
        self.mlp = nn.Sequential(
            nn.Linear(channels, mlp_ratio * channels), make_act(act), nn.Linear(mlp_ratio * channels, channels)
        )

    def forward(self, t: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = t.shape
        qkv = self.qkv(self.norm1(t)).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=mask)  # (B', heads, N, C/heads)
        t = t + self.proj(a.transpose(1, 2).reshape(b, n, c))
        out: torch.Tensor = t + self.mlp(self.norm2(t))
        return out


def _to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, X, Y, Z) -> (B, X, Y, Z, C) (a free view for ``channels_last_3d`` inputs)."""
    return x.permute(0, 2, 3, 4, 1)


class GlobalSelfAttention3d(nn.Module):
    """Multi-head self-attention over every voxel of a (small) feature map, e.g. the bottleneck.

    Cost grows with the square of the number of voxels: 4^3 = 64 tokens at a 64^3 window and 16x downsampling
    are cheap, 32^3 tokens are not (use :class:`WindowSelfAttention3d` there).
    """

    def __init__(self, channels: int, heads: int, mlp_ratio: int, pos_encoding: PosEncodingName, act: ActName) -> None:
        super().__init__()
        self.pos = PositionalEncoding3d(channels, pos_encoding)
        self.block = TokenTransformer(channels, heads, mlp_ratio, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, nx, ny, nz = x.shape
        t = _to_tokens(self.pos(x)).reshape(b, nx * ny * nz, c)
        return self.block(t).view(b, nx, ny, nz, c).permute(0, 4, 1, 2, 3)


class WindowSelfAttention3d(nn.Module):
    """Multi-head self-attention inside non-overlapping 3D windows (cost linear in the number of voxels).

    The map is zero-padded at the high end to a multiple of ``window`` (clamped to the map size on each axis);
    padded voxels are masked out as keys and cropped from the output. Windows do not shift: the convolutions
    around the block carry information across window borders.
    """

    def __init__(
        self,
        channels: int,
        heads: int,
        window: Triple,
        mlp_ratio: int,
        pos_encoding: PosEncodingName,
        act: ActName,
    ) -> None:
        super().__init__()
        if min(window) < 1:
            raise ModelConfigError(f"WindowSelfAttention3d: window edges must be >= 1, got {window}")
        self.window = window
        self.pos = PositionalEncoding3d(channels, pos_encoding)
        self.block = TokenTransformer(channels, heads, mlp_ratio, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, nx, ny, nz = x.shape
        wx, wy, wz = (min(s, n) for s, n in zip(self.window, (nx, ny, nz)))
        px, py, pz = (-nx) % wx, (-ny) % wy, (-nz) % wz
        t = _to_tokens(self.pos(x))  # (B, X, Y, Z, C)
        mask = None
        if px or py or pz:
            t = F.pad(t, (0, 0, 0, pz, 0, py, 0, px))
            valid = torch.zeros(1, nx + px, ny + py, nz + pz, dtype=torch.bool, device=x.device)
            valid[:, :nx, :ny, :nz] = True
            mask = _partition(valid.unsqueeze(-1), (wx, wy, wz)).reshape(-1, 1, 1, wx * wy * wz)
            mask = mask.repeat(b, 1, 1, 1)
        mx, my, mz = nx + px, ny + py, nz + pz
        tokens = _partition(t, (wx, wy, wz))  # (B * nwin, wx*wy*wz, C)
        tokens = self.block(tokens, mask)
        y = tokens.view(b, mx // wx, my // wy, mz // wz, wx, wy, wz, c)
        y = y.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, mx, my, mz, c)
        return y[:, :nx, :ny, :nz].permute(0, 4, 1, 2, 3)


def _partition(t: torch.Tensor, window: Triple) -> torch.Tensor:
    """(B, X, Y, Z, C) with sizes multiple of ``window`` -> (B * windows, prod(window), C), windows in raster order."""
    b, nx, ny, nz, c = t.shape
    wx, wy, wz = window
    t = t.reshape(b, nx // wx, wx, ny // wy, wy, nz // wz, wz, c).permute(0, 1, 3, 5, 2, 4, 6, 7)
    return t.reshape(b * (nx // wx) * (ny // wy) * (nz // wz), wx * wy * wz, c)


def make_attention(
    kind: AttentionName,
    channels: int,
    *,
    act: ActName,
    reduction: int,
    heads: int,
    window: Triple,
    mlp_ratio: int,
    pos_encoding: PosEncodingName,
) -> nn.Module:
    """The attention block named ``kind`` for a stage of width ``channels`` (``nn.Identity`` for ``"none"``)."""
    if kind == "none":
        return nn.Identity()
    if kind == "scse":
        return SqueezeExcitation3d(channels, reduction, act)
    if kind == "cbam":
        return CBAM3d(channels, reduction, act)
    if kind == "mhsa":
        return GlobalSelfAttention3d(channels, heads, mlp_ratio, pos_encoding, act)
    if kind == "wsa":
        return WindowSelfAttention3d(channels, heads, window, mlp_ratio, pos_encoding, act)
    raise ModelConfigError(f"attention: {kind!r} is not one of 'none', 'scse', 'cbam', 'mhsa', 'wsa'")
