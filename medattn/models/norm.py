"""Group and instance normalisation with a backward pass that is fast in ``channels_last_3d`` on the CPU (and the
gated skip addition of the attention U-Net, :func:`gated_add`).

PyTorch's CPU group-norm backward (``aten::native_group_norm_backward``) is several times slower on a
``channels_last_3d`` tensor than on a contiguous one: measured 14.0 against 2.4 ms (forward and backward) for a
(2, 16, 40, 56, 40) instance norm on 2 threads of an AMD EPYC (AVX-512), where the forward alone is the same speed
in both layouts. The U-Net runs channels-last because its oneDNN convolutions are faster so (a whole training step of
``ag_unet_fullres`` is 1.4x faster than with contiguous tensors), which made the norms' backward a quarter of a
training step. :class:`GroupNormFunction` keeps PyTorch's forward (``torch.native_group_norm``, which also returns
the statistics) and computes the gradients from two per-channel reductions (both in one pass, by PyTorch's
batch-norm backward kernel per sample: :func:`_channel_sums`) and two fused multiply-adds, all of which stream the
channels-last memory in order:

    xhat = (x - mu_g) * r_g,   y = gamma_c * xhat + beta_c
    dbeta_c = sum_n sum_s dy,   dgamma_c = sum_n r_g (sum_s dy x - mu_g sum_s dy)
    dx = A_c dy + B_g x + C_g   with A = r_g gamma_c, P_g = sum_{c in g} gamma_c sum_s dy,
    Q_g = sum_{c in g} gamma_c r_g (sum_s dy x - mu_g sum_s dy), B = -r_g^2 Q_g / M, C = -r_g P_g / M - B mu_g

(``M`` = voxels per group: channels per group x spatial size). It is used for float32 CPU tensors in
``channels_last_3d`` that need a gradient; anything else (CUDA, contiguous tensors, inference) goes through
``F.group_norm`` unchanged. The backward is once-differentiable: a second derivative through it raises. The
gradients equal PyTorch's within float32 rounding (checked against float64 in ``tests/models/test_norm.py``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable


class GroupNormFunction(torch.autograd.Function):
    """``F.group_norm(x, groups, weight, bias, eps)`` with the backward of the module docstring."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, groups: int, eps: float) -> Any:
        n, c = x.shape[:2]
        y, mean, rstd = torch.native_group_norm(x, weight, bias, n, c, x[0, 0].numel(), groups, eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.groups = groups
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dy: torch.Tensor) -> Any:
        x, weight, mean, rstd = ctx.saved_tensors
        groups = ctx.groups
        n, c = x.shape[:2]
        per = c // groups
        m = per * x[0, 0].numel()
        mu = mean.view(n, groups, 1).expand(n, groups, per).reshape(n, c)
        r = rstd.view(n, groups, 1).expand(n, groups, per).reshape(n, c)
        sum_dy, dyxhat = _channel_sums(dy, x, mu, r)  # sum_s dy and sum_s dy * xhat, per (N, C)
        dweight = dyxhat.sum(0)
        dbias = sum_dy.sum(0)
        p = (sum_dy * weight).view(n, groups, per).sum(-1)  # (N, G)
        q = (dyxhat * weight).view(n, groups, per).sum(-1)
        rg, mg = rstd.view(n, groups), mean.view(n, groups)
        b = -rg * rg * q / m
        cc = -rg * p / m - b * mg
        shape = (n, c) + (1,) * (x.ndim - 2)

        def per_channel(v: torch.Tensor) -> torch.Tensor:
            return v.view(n, groups, 1).expand(n, groups, per).reshape(shape)

        dx = torch.addcmul(per_channel(cc), x, per_channel(b))
        dx.addcmul_(dy, (r * weight).view(shape))
        return dx, dweight, dbias, None, None


def _channel_sums(
    dy: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, r: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample and channel, ``sum_s dy`` and ``sum_s dy (x - mu) r`` (each (N, C)), in one pass over memory.

    These are the weight and bias gradients of a batch norm of one sample whose saved statistics are ``mu`` and
    ``r``, which PyTorch's CPU ``native_batch_norm_backward`` computes in one vectorised pass over a
    channels-last tensor without its input gradient: 1.24 against 3.07 ms for ``dy.sum`` and ``(dy * x).sum``
    on a (2, 16, 40, 56, 40) tensor (one thread of the 2-core AMD EPYC, freed memory retained as ``medattn
    train`` runs, 21 interleaved repeats, median), the same at coarser grids.
    """
    sums_dy, sums_dyxhat = [], []
    for i in range(x.shape[0]):
        _, dyxhat, sum_dy = torch.ops.aten.native_batch_norm_backward(
            # the kernel reads the statistics as dense arrays: an expanded (stride-0) view would be misread
            dy[i : i + 1],
            x[i : i + 1],
            None,
            None,
            None,
            mu[i].contiguous(),
            r[i].contiguous(),
            True,
            0.0,
            [False, True, True],
        )
        sums_dy.append(sum_dy)
        sums_dyxhat.append(dyxhat)
    return torch.stack(sums_dy), torch.stack(sums_dyxhat)


def use_fast_backward(x: torch.Tensor) -> bool:
    """Whether :class:`GroupNormFunction` serves ``x``: float32 on the CPU, channels-last 3D, gradient wanted."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and x.ndim == 5
        and torch.is_grad_enabled()
        and not x.is_contiguous()
        and x.is_contiguous(memory_format=torch.channels_last_3d)
        and not torch.is_autocast_enabled("cpu")
    )


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` (affine) whose CPU channels-last backward is :class:`GroupNormFunction`'s; same parameters
    and state-dict keys."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.affine and use_fast_backward(x) and (x.requires_grad or self.weight.requires_grad):
            out: torch.Tensor = GroupNormFunction.apply(x, self.weight, self.bias, self.num_groups, self.eps)
            return out
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


class GatedAddFunction(torch.autograd.Function):
    """``up + skip * alpha`` (``alpha`` with one channel, broadcast) with a backward that does the three products
    it needs and no more: PyTorch's ``addcmul`` backward also multiplies each full-size gradient by its ``value``
    (1 here), a wasted pass over the finest feature map (3.5 of a 175 ms training step of ``ag_unet_fullres``)."""

    @staticmethod
    def forward(ctx: Any, up: torch.Tensor, skip: torch.Tensor, alpha: torch.Tensor) -> Any:
        ctx.save_for_backward(skip, alpha)
        return torch.addcmul(up, skip, alpha)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        skip, alpha = ctx.saved_tensors
        d_skip = grad * alpha if ctx.needs_input_grad[1] else None
        d_alpha = (grad * skip).sum(dim=1, keepdim=True) if ctx.needs_input_grad[2] else None
        return grad, d_skip, d_alpha


def gated_add(up: torch.Tensor, skip: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``up + skip * alpha``: :class:`GatedAddFunction` where autograd records it, ``up.addcmul_`` (in place: no
    new full-size tensor) otherwise."""
    if torch.is_grad_enabled() and (up.requires_grad or skip.requires_grad or alpha.requires_grad):
        out: torch.Tensor = GatedAddFunction.apply(up, skip, alpha)
        return out
    return up.addcmul_(skip, alpha)
