"""The trilinear upsampling by 2 of :mod:`medattn.models.resample`: the same values and gradients as PyTorch's
``F.interpolate`` (its own autograd, float64), in both memory layouts, for one and several channels, odd sizes,
axes left at scale 1; and it serves training only (other sizes and inference go to ``F.interpolate``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medattn.models.resample import upsample_trilinear

CL = torch.channels_last_3d


def _reference(x: torch.Tensor, size: tuple[int, ...], grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ref = x.detach().clone().requires_grad_(True)
    y = F.interpolate(ref, size=size, mode="trilinear", align_corners=False)
    y.backward(grad)
    assert ref.grad is not None
    return y.detach(), ref.grad


@pytest.mark.parametrize(
    "shape,size,layout",
    [
        ((2, 1, 5, 7, 3), (10, 14, 6), "contiguous"),  # a gate's coefficient map: its own forward too
        ((2, 6, 5, 7, 3), (10, 14, 6), "channels_last"),  # decoder features: PyTorch's forward, own backward
        ((1, 3, 4, 1, 6), (8, 2, 12), "contiguous"),  # an axis of length 1
        ((2, 4, 5, 6, 7), (5, 12, 14), "channels_last"),  # the first axis kept (an anisotropic plan's stage)
        ((1, 1, 3, 4, 5), (6, 4, 10), "contiguous"),
    ],
)
def test_values_and_gradients_equal_pytorchs(shape: tuple[int, ...], size: tuple[int, ...], layout: str) -> None:
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    grad = torch.randn(shape[:2] + size, generator=g, dtype=torch.float64)
    if layout == "channels_last":
        x, grad = x.contiguous(memory_format=CL), grad.contiguous(memory_format=CL)
    want_y, want_grad = _reference(x, size, grad)

    mine = x.clone().requires_grad_(True)
    y = upsample_trilinear(mine, size)
    assert type(y.grad_fn).__name__ == "Upsample2xFunctionBackward"  # the fast path served it
    y.backward(grad)
    assert mine.grad is not None
    torch.testing.assert_close(y.detach(), want_y, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mine.grad, want_grad, rtol=1e-12, atol=1e-12)
    if layout == "channels_last":
        assert y.is_contiguous(memory_format=CL) and mine.grad.is_contiguous(memory_format=CL)


def test_float32_gradients_within_rounding_of_float64() -> None:
    g = torch.Generator().manual_seed(3)
    x64 = torch.randn(2, 8, 10, 14, 10, generator=g, dtype=torch.float64)
    grad64 = torch.randn(2, 8, 20, 28, 20, generator=g, dtype=torch.float64)
    _, want = _reference(x64, (20, 28, 20), grad64)
    x = x64.float().contiguous(memory_format=CL).requires_grad_(True)
    upsample_trilinear(x, (20, 28, 20)).backward(grad64.float().contiguous(memory_format=CL))
    assert x.grad is not None
    torch.testing.assert_close(x.grad.double(), want, rtol=1e-5, atol=1e-5)


def test_other_sizes_and_inference_go_to_pytorch() -> None:
    x = torch.randn(1, 2, 4, 4, 4, requires_grad=True)
    odd = upsample_trilinear(x, (9, 8, 8))  # not 1x or 2x along the first axis
    assert "Upsample2xFunction" not in type(odd.grad_fn).__name__
    torch.testing.assert_close(odd, F.interpolate(x, size=(9, 8, 8), mode="trilinear", align_corners=False))
    with torch.no_grad():
        y = upsample_trilinear(x, (8, 8, 8))
    assert y.grad_fn is None
    torch.testing.assert_close(y, F.interpolate(x.detach(), size=(8, 8, 8), mode="trilinear", align_corners=False))


def test_second_derivative_is_refused() -> None:
    x = torch.randn(1, 1, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(upsample_trilinear(x, (6, 6, 6)).pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        gx.sum().backward()


def test_network_gradients_match_pytorchs_upsampling(monkeypatch: pytest.MonkeyPatch) -> None:
    """One training step of a small channels-last attention U-Net (decoder upsampling and gate maps both go
    through it) with this upsampling and with ``F.interpolate``: the same gradients within float32 rounding."""
    import medattn.models.resample as resample
    from medattn.models import build_model

    torch.manual_seed(0)
    net = build_model("ag_unet_fullres", 1, 3, channels=(8, 16, 32))
    x = torch.randn(2, 1, 24, 20, 16, generator=torch.Generator().manual_seed(1))
    target = torch.randint(0, 3, (2, 24, 20, 16), generator=torch.Generator().manual_seed(2))
    calls = {"n": 0}
    own = resample.Upsample2xFunction

    class Counting:
        @staticmethod
        def apply(*args: object) -> torch.Tensor:
            calls["n"] += 1
            out: torch.Tensor = own.apply(*args)
            return out

    def grads() -> dict[str, torch.Tensor]:
        net.zero_grad()
        out = net(x)
        F.cross_entropy(out[0] if isinstance(out, (list, tuple)) else out, target).backward()
        return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}

    monkeypatch.setattr(resample, "Upsample2xFunction", Counting)
    fast = grads()
    served = calls["n"]
    assert served >= 4  # two decoder stages, each an upsampling and a gate map
    monkeypatch.setattr(resample, "use_fast_upsample", lambda x: False)
    slow = grads()
    assert calls["n"] == served  # PyTorch's upsampling alone
    assert fast.keys() == slow.keys() and len(fast) > 10
    for name in fast:
        scale = float(slow[name].abs().max())
        assert float((fast[name] - slow[name]).abs().max()) <= 1e-4 * scale + 1e-7, name
