"""Padding an input to the multiple a network needs, and cropping its outputs back.

Padding goes at the high end of each axis so that a voxel of an output downsampled by ``s`` still covers input
voxels ``[j*s, (j+1)*s)``: low-resolution outputs crop to ``ceil(size / s)`` without any shift.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from medattn.typing import Triple


def padded_size(size: Sequence[int], multiple: Triple) -> Triple:
    """The smallest (X, Y, Z) >= ``size`` that is a multiple of ``multiple`` on every axis and spans at least two
    multiples in all (so the coarsest feature map has two voxels: normalising a single voxel is undefined); the
    extra multiple, when needed, goes to the last of the longest axes."""
    if len(size) != 3:
        raise ValueError(f"expected a 3D spatial size (X, Y, Z), got {tuple(size)}")
    cells = [max(1, math.ceil(n / m)) for n, m in zip(size, multiple)]
    if math.prod(cells) < 2:
        longest = max(range(3), key=lambda a: (cells[a] * multiple[a], a))
        cells[longest] += 1
    return (cells[0] * multiple[0], cells[1] * multiple[1], cells[2] * multiple[2])


def needs_padding(size: Sequence[int], multiple: Triple) -> bool:
    """Whether :func:`pad_to_multiple` would change an input of spatial ``size``."""
    return tuple(padded_size(size, multiple)) != tuple(size)


def check_input(x: torch.Tensor, in_channels: int, who: str) -> None:
    """Raise a ``ValueError`` unless ``x`` is a float (B, in_channels, X, Y, Z) tensor with non-empty axes."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{who}: expected a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 5:
        raise ValueError(f"{who}: expected a 5D tensor (B, C, X, Y, Z), got shape {tuple(x.shape)}")
    if x.shape[1] != in_channels:
        raise ValueError(f"{who}: expected {in_channels} input channel(s), got {x.shape[1]} (shape {tuple(x.shape)})")
    if not x.is_floating_point():
        raise ValueError(f"{who}: expected a floating-point input, got {x.dtype}")
    if min(x.shape[2:]) < 1 or x.shape[0] < 1:
        raise ValueError(f"{who}: empty input of shape {tuple(x.shape)}")


def pad_to_multiple(x: torch.Tensor, multiple: Triple, mode: str = "replicate") -> torch.Tensor:
    """Pad (B, C, X, Y, Z) at the high end of each axis up to a multiple of ``multiple`` (no copy if none needed).

    ``mode`` is any mode of ``torch.nn.functional.pad``; ``"replicate"`` repeats the border voxel so no artificial
    edge enters the window.
    """
    target = padded_size(x.shape[2:], multiple)
    pads = [t - n for t, n in zip(target, x.shape[2:])]
    if not any(pads):
        return x
    return F.pad(x, (0, pads[2], 0, pads[1], 0, pads[0]), mode=mode)


def crop_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """The low corner (B, C, *size) of ``x`` (a view; ``x`` itself when already that size)."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return x[:, :, : size[0], : size[1], : size[2]]


def downscaled_size(size: Sequence[int], scale: Triple) -> Triple:
    """``ceil(size / scale)`` per axis: the size of an output ``scale`` times coarser than an input of ``size``."""
    nx, ny, nz = (math.ceil(n / s) for n, s in zip(size, scale))
    return (nx, ny, nz)
