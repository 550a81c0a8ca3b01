"""3D convolution layers that reach oneDNN on the CPU for every shape, not only for the large ones.

PyTorch picks its convolution backend with a heuristic written for 2D images: on the CPU with a batch of one and
kernels of at most 3, a convolution whose ``C * D * H`` is below 20480 runs the im2col fallback
(``aten::slow_conv3d``), which is 2-6x slower than oneDNN in 3D and copies ``channels_last_3d`` inputs back to
contiguous ones. Batch-one windows are the common case of sliding-window inference. :class:`Conv3d` calls oneDNN's
convolution (``torch.mkldnn_convolution``, which has autograd support) directly when the input is a float32 CPU
tensor and oneDNN is available and enabled (``torch.backends.mkldnn.enabled``); anywhere else (CUDA, ``meta``,
float64, bfloat16, CPU autocast, oneDNN disabled by the caller) it is exactly ``nn.Conv3d``. The parameters and
state-dict keys are those of ``nn.Conv3d``. At a 64^3 window the slow path would take nearly every convolution of
the default network; ``bench/bench_models.py --explore`` times the network with PyTorch's own dispatch.

:class:`ConvTranspose3d` handles the one transposed convolution the U-Net uses, kernel = stride (each fine voxel
is a linear map of its coarse parent). Where PyTorch would take its slow path (batch one, small ``C * D * H``) it
computes the same numbers as a matrix product followed by a depth-to-space rearrangement, several times faster;
elsewhere PyTorch's oneDNN path, which writes its output directly, is the faster one and is used.
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from medattn.typing import Triple


def use_onednn(x: torch.Tensor) -> bool:
    """Whether :class:`Conv3d` sends ``x`` to oneDNN directly: float32 on the CPU with oneDNN available and on,
    outside CPU autocast (whose casting rules apply to ``conv3d``, not to the direct call)."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and not x.is_mkldnn
        and torch.backends.mkldnn.is_available()
        and bool(torch.backends.mkldnn.enabled)
        and not torch.is_autocast_enabled("cpu")
    )


def _torch_would_use_slow_path(x: torch.Tensor) -> bool:
    """PyTorch's rule (``ConvParams::use_mkldnn``) for a batch-one CPU float32 input with kernels of at most 3:
    oneDNN only when ``C * D * H > 20480``; otherwise its im2col fallback."""
    return use_onednn(x) and x.shape[0] == 1 and x.shape[1] * x.shape[2] * x.shape[3] <= 20480


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` (zero padding only) that always uses oneDNN for float32 CPU inputs; see the module docstring."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.padding_mode != "zeros" or isinstance(self.padding, str):
            raise ValueError("medattn Conv3d supports numeric zero padding only")

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if use_onednn(input):
            return torch.mkldnn_convolution(
                input,
                weight,
                bias,
                list(cast(tuple[int, ...], self.padding)),
                list(self.stride),
                list(self.dilation),
                self.groups,
            )
        return F.conv3d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class ConvTranspose3d(nn.ConvTranspose3d):
    """``nn.ConvTranspose3d`` with kernel = stride and no padding; a GEMM plus depth-to-space where PyTorch's own
    CPU path would be its slow fallback (see the module docstring), PyTorch's otherwise.

    Input (B, C_in, X, Y, Z) -> output (B, C_out, X*k0, Y*k1, Z*k2). The GEMM path writes the output in
    ``channels_last_3d`` or contiguous layout as ``channels_last_output`` says (``None``: like the input).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: Triple,
        bias: bool = True,
        channels_last_output: bool | None = None,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel, stride=kernel, bias=bias)
        self.channels_last_output = channels_last_output

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if output_size is not None or not _torch_would_use_slow_path(x):
            return super().forward(x, output_size)
        b, _, nx, ny, nz = x.shape
        k0, k1, k2 = self.kernel_size
        c_out = self.out_channels
        # weight (C_in, C_out, k0, k1, k2) -> (C_in, k0*k1*k2*C_out): the channel vector of each fine voxel
        weight = self.weight.permute(0, 2, 3, 4, 1).reshape(self.in_channels, k0 * k1 * k2 * c_out)
        tokens = x.permute(0, 2, 3, 4, 1).reshape(-1, self.in_channels)  # a view when x is channels_last_3d
        if self.bias is None:
            y = torch.mm(tokens, weight)
        else:  # the bias of output channel c repeats for each of the k0*k1*k2 sub-voxels
            y = torch.addmm(self.bias.repeat(k0 * k1 * k2), tokens, weight)
        y = y.view(b, nx, ny, nz, k0, k1, k2, c_out)
        channels_last = self.channels_last_output
        if channels_last is None:
            channels_last = x.is_contiguous(memory_format=torch.channels_last_3d)
        # one depth-to-space copy, straight into the requested layout
        if channels_last:
            out = y.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, nx * k0, ny * k1, nz * k2, c_out).permute(0, 4, 1, 2, 3)
        else:
            out = y.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(b, c_out, nx * k0, ny * k1, nz * k2)
        return out


class _ContiguousGradInChannelsLast(torch.autograd.Function):
    """``x.contiguous()`` whose backward hands the gradient back in ``channels_last_3d``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> Any:
        return x.contiguous()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        return grad.contiguous(memory_format=torch.channels_last_3d)


def contiguous_output(x: torch.Tensor) -> torch.Tensor:
    """``x.contiguous()`` for a network output, with its gradient returned in ``x``'s ``channels_last_3d`` layout
    where autograd records it.

    The losses and metrics read logits contiguously (a softmax over 2-3 classes is faster so), and
    ``Tensor.contiguous``'s backward passes the loss's contiguous gradient on as it is. oneDNN's backward of
    the output convolution that made ``x`` then works in the contiguous layout and converts its channels-last
    input to it first: 7.5 against 3.6 ms for the backward of a 16 -> 3 1x1x1 convolution at 40x56x40, batch 2
    (one thread of the 2-core AMD EPYC, one-off), and in a training step, where that input is no longer in the
    cache, the conversion alone measured 9 ms. A copy of the few-channel gradient avoids it.
    """
    if (
        torch.is_grad_enabled()
        and x.requires_grad
        and x.ndim == 5
        and not x.is_contiguous()
        and x.is_contiguous(memory_format=torch.channels_last_3d)
    ):
        out: torch.Tensor = _ContiguousGradInChannelsLast.apply(x)
        return out
    return x.contiguous()
