"""What a model costs: parameters, FLOPs counted by ``torch.utils.flop_counter``, and measured forward time.

FLOPs count convolutions (transposed included), matrix products and attention (``scaled_dot_product_attention``),
a multiply-add being 2 FLOPs; normalisation, activations and element-wise products are not counted. Counting runs
on a copy of the network on the ``meta`` device, so it allocates nothing and takes well under a second.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Forward FLOPs of ``model`` in eval mode on one float32 input of ``input_shape`` (B, C, X, Y, Z).

    A model with real weights is deep-copied to the ``meta`` device (its parameters and mode are untouched); a
    model built on the ``meta`` device (``with torch.device("meta"): ...``) is used as it is, its mode restored.
    """
    if len(input_shape) != 5:
        raise ValueError(f"count_flops: expected an input shape (B, C, X, Y, Z), got {tuple(input_shape)}")
    on_meta = all(t.is_meta for t in [*model.parameters(), *model.buffers()])
    meta = model if on_meta else copy.deepcopy(model).to("meta")
    was_training = meta.training
    meta.eval()
    x = torch.empty(*input_shape, device="meta")
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            meta(x)
    finally:
        meta.train(was_training)
    return int(counter.get_total_flops())


def flops_per_voxel(model: nn.Module, in_channels: int, window: int | Sequence[int]) -> float:
    """Forward FLOPs per input voxel for one window (cubic edge ``window``, or (X, Y, Z)), batch 1."""
    size = (window,) * 3 if isinstance(window, int) else tuple(window)
    return count_flops(model, (1, in_channels, *size)) / math.prod(size)


@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of repeated calls: the median and the fastest and slowest runs."""

    median: float
    low: float
    high: float
    runs: int


def time_forward(
    model: nn.Module, input_shape: Sequence[int], repeats: int = 5, warmup: int = 1, seed: int = 0
) -> Timing:
    """Time ``model(x)`` in eval mode under ``torch.inference_mode`` on the model's device and dtype.

    Uses the caller's thread settings (this function changes no global state). Synchronises CUDA if needed.
    """
    if repeats < 1:
        raise ValueError(f"time_forward: repeats must be >= 1, got {repeats}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*input_shape, generator=gen).to(device=device, dtype=dtype)
    was_training = model.training
    model.eval()
    times = []
    try:
        with torch.inference_mode():
            for i in range(warmup + repeats):
                start = time.perf_counter()
                model(x)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if i >= warmup:
                    times.append(time.perf_counter() - start)
    finally:
        model.train(was_training)
    return Timing(statistics.median(times), min(times), max(times), len(times))
