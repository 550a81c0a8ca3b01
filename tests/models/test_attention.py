"""Volumetric attention blocks: shapes for odd sizes, and each checked against an independent computation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medattn.models.attention import (
    CBAM3d,
    GlobalSelfAttention3d,
    SqueezeExcitation3d,
    WindowSelfAttention3d,
    make_attention,
    sincos_3d,
)

CL = torch.channels_last_3d


def manual_transformer(block, t: torch.Tensor) -> torch.Tensor:
    """The pre-norm transformer layer written out with an explicit softmax (no SDPA)."""
    b, n, c = t.shape
    h = block.heads
    qkv = block.qkv(block.norm1(t)).view(b, n, 3, h, c // h)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # (B, heads, N, d)
    att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(c // h), dim=-1)
    t = t + block.proj((att @ v).transpose(1, 2).reshape(b, n, c))
    return t + block.mlp(block.norm2(t))


@pytest.mark.parametrize("kind", ["scse", "cbam", "mhsa", "wsa"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_blocks_keep_shape_for_odd_sizes(kind: str, channels_last: bool) -> None:
    block = make_attention(
        kind, 8, act="relu", reduction=2, heads=2, window=(2, 3, 4), mlp_ratio=2, pos_encoding="conv"
    )
    x = torch.randn(2, 8, 3, 5, 7)
    if channels_last:
        x = x.contiguous(memory_format=CL)
    y = block(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert not torch.allclose(y, x)


def test_scse_is_sum_of_channel_and_spatial_excitation() -> None:
    torch.manual_seed(0)
    se = SqueezeExcitation3d(6, reduction=3, act="relu")
    x = torch.randn(2, 6, 3, 4, 5)
    c = se.channel[0].weight.flatten(1), se.channel[0].bias, se.channel[2].weight.flatten(1), se.channel[2].bias
    pooled = x.mean(dim=(2, 3, 4))
    cse = torch.sigmoid(F.linear(F.relu(F.linear(pooled, c[0], c[1])), c[2], c[3]))[:, :, None, None, None]
    sse = torch.sigmoid(F.conv3d(x, se.spatial[0].weight, se.spatial[0].bias))
    torch.testing.assert_close(se(x), x * cse + x * sse, rtol=1e-5, atol=1e-6)
    assert se.channel[0].out_channels == 2


def test_cbam_channel_then_spatial_gate() -> None:
    torch.manual_seed(0)
    cbam = CBAM3d(4, reduction=2, act="relu", spatial_kernel=3)
    x = torch.randn(1, 4, 5, 5, 5)

    def mlp(v: torch.Tensor) -> torch.Tensor:
        return cbam.mlp(v)

    ca = torch.sigmoid(mlp(x.mean((2, 3, 4), keepdim=True)) + mlp(x.amax((2, 3, 4), keepdim=True)))
    xc = x * ca
    sa = torch.sigmoid(F.conv3d(torch.cat([xc.mean(1, True), xc.amax(1, True)], 1), cbam.spatial.weight, padding=1))
    torch.testing.assert_close(cbam(x), xc * sa, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="odd"):
        CBAM3d(4, 2, "relu", spatial_kernel=4)


def test_global_attention_matches_an_explicit_softmax() -> None:
    torch.manual_seed(0)
    mhsa = GlobalSelfAttention3d(8, heads=2, mlp_ratio=2, pos_encoding="none", act="gelu")
    x = torch.randn(2, 8, 2, 3, 4)
    tokens = x.flatten(2).transpose(1, 2)  # (B, N, C), raster order
    expected = manual_transformer(mhsa.block, tokens).transpose(1, 2).reshape(x.shape)
    torch.testing.assert_close(mhsa(x), expected, rtol=1e-4, atol=1e-5)


def test_window_attention_equals_global_attention_when_one_window_covers_the_map() -> None:
    torch.manual_seed(0)
    wsa = WindowSelfAttention3d(8, heads=2, window=(4, 4, 4), mlp_ratio=2, pos_encoding="conv", act="relu")
    mhsa = GlobalSelfAttention3d(8, heads=2, mlp_ratio=2, pos_encoding="conv", act="relu")
    mhsa.load_state_dict(wsa.state_dict())
    x = torch.randn(1, 8, 3, 4, 2)  # smaller than the window on every axis: the window is clamped to the map
    torch.testing.assert_close(wsa(x), mhsa(x), rtol=1e-4, atol=1e-5)


def test_window_attention_is_local_and_masks_its_padding() -> None:
    torch.manual_seed(0)
    wsa = WindowSelfAttention3d(4, heads=1, window=(2, 2, 4), mlp_ratio=1, pos_encoding="none", act="relu")
    x = torch.randn(1, 4, 2, 2, 6)  # W = 6: windows [0, 4) and [4, 6) + 2 padded voxels
    y = wsa(x)
    # each window alone gives the same numbers: no leakage between windows and none from the padding
    torch.testing.assert_close(y[..., :4], wsa(x[..., :4]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(y[..., 4:], wsa(x[..., 4:]), rtol=1e-5, atol=1e-6)
    x2 = x.clone()
    x2[..., 5] += 10
    torch.testing.assert_close(wsa(x2)[..., :4], y[..., :4])
    # samples of a batch do not mix (the padding mask is repeated per sample in the right order)
    xb = torch.randn(3, 4, 3, 2, 5)
    torch.testing.assert_close(wsa(xb)[1:2], wsa(xb[1:2]), rtol=1e-5, atol=1e-6)


def test_sincos_encoding_values_and_cache() -> None:
    pe = sincos_3d(13, (2, 3, 4))  # 2 frequencies per axis, one zero channel left over
    assert pe.shape == (13, 2, 3, 4)
    assert torch.all(pe[12] == 0)
    # channel 0: sin of the D index at frequency 1; channel 2: cos of D at frequency 1; channel 4: sin of H
    torch.testing.assert_close(pe[0, :, 0, 0], torch.sin(torch.arange(2.0)))
    torch.testing.assert_close(pe[2, 1, :, 0], torch.full((3,), math.cos(1.0)))
    torch.testing.assert_close(pe[4, 0, :, 0], torch.sin(torch.arange(3.0)))
    assert sincos_3d(13, (2, 3, 4)) is pe
    with_pe = GlobalSelfAttention3d(12, 2, 2, "sincos", "relu")
    without = GlobalSelfAttention3d(12, 2, 2, "none", "relu")
    without.load_state_dict(with_pe.state_dict())
    x = torch.randn(1, 12, 2, 2, 2)
    assert not torch.allclose(with_pe(x), without(x))


def test_heads_must_divide_channels() -> None:
    with pytest.raises(ValueError, match="heads"):
        GlobalSelfAttention3d(6, heads=4, mlp_ratio=2, pos_encoding="none", act="relu")
