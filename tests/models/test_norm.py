"""The group/instance norm's own backward (:mod:`medattn.models.norm`): used for channels-last CPU tensors in
training, equal to a float64 computation of PyTorch's, and the network's gradients equal those of PyTorch's
backward within float32 rounding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import medattn.models.norm as norm
from medattn.models import build_model
from medattn.models.blocks import InstanceNorm3dGN, make_norm

CL = torch.channels_last_3d


@pytest.mark.parametrize("channels,groups", [(16, 16), (12, 4), (8, 1)])
def test_gradients_equal_a_float64_reference(channels: int, groups: int) -> None:
    g = torch.Generator().manual_seed(channels)
    x64 = torch.randn(2, channels, 9, 7, 11, generator=g, dtype=torch.float64) * 3 + 1
    dy64 = torch.randn(x64.shape, generator=g, dtype=torch.float64)
    w64 = torch.rand(channels, generator=g, dtype=torch.float64) + 0.5
    b64 = torch.rand(channels, generator=g, dtype=torch.float64)
    ref = [t.clone().requires_grad_(True) for t in (x64, w64, b64)]
    y_ref = F.group_norm(ref[0], groups, ref[1], ref[2], 1e-5)
    y_ref.backward(dy64)

    layer = norm.GroupNorm(groups, channels)
    with torch.no_grad():
        layer.weight.copy_(w64)
        layer.bias.copy_(b64)
    x = x64.float().contiguous(memory_format=CL).requires_grad_(True)
    y = layer(x)
    assert type(y.grad_fn).__name__ == "GroupNormFunctionBackward"  # the fast path served it
    y.backward(dy64.float().contiguous(memory_format=CL))
    assert x.grad is not None and x.grad.is_contiguous(memory_format=CL)
    torch.testing.assert_close(y.double(), y_ref.detach(), rtol=1e-5, atol=1e-5)
    for got, want in ((x.grad, ref[0].grad), (layer.weight.grad, ref[1].grad), (layer.bias.grad, ref[2].grad)):
        assert want is not None and got is not None
        scale = float(want.abs().max())
        assert float((got.double() - want).abs().max()) <= 1e-5 * scale + 1e-6


def test_other_inputs_take_pytorchs_own_path() -> None:
    layer = InstanceNorm3dGN(4)
    x = torch.randn(1, 4, 5, 6, 7, requires_grad=True)
    assert type(layer(x).grad_fn).__name__ == "NativeGroupNormBackward0"  # contiguous
    with torch.no_grad():
        assert layer(x.contiguous(memory_format=CL)).grad_fn is None  # inference
    assert type(make_norm("group", 16)).__name__ == "GroupNorm" and isinstance(make_norm("group", 16), norm.GroupNorm)


def test_network_gradients_match_pytorchs_backward(monkeypatch: pytest.MonkeyPatch) -> None:
    """One training step of a small channels-last U-Net with the fast backward and with PyTorch's: the same loss
    and gradients within float32 rounding."""
    torch.manual_seed(0)
    net = build_model("ag_unet_fullres", 1, 3, channels=(8, 16, 32))
    x = torch.randn(2, 1, 24, 20, 16, generator=torch.Generator().manual_seed(1))
    target = torch.randint(0, 3, (2, 24, 20, 16), generator=torch.Generator().manual_seed(2))

    def grads() -> dict[str, torch.Tensor]:
        net.zero_grad()
        out = net(x)
        F.cross_entropy(out[0] if isinstance(out, (list, tuple)) else out, target).backward()
        return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}

    fast = grads()
    monkeypatch.setattr(norm, "use_fast_backward", lambda x: False)
    slow = grads()
    assert fast.keys() == slow.keys() and len(fast) > 10
    for name in fast:
        scale = float(slow[name].abs().max())
        assert float((fast[name] - slow[name]).abs().max()) <= 1e-4 * scale + 1e-7, name
