"""Building blocks checked against independent computations: PyTorch's own layers and the gate's formula."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medattn.models.blocks import AttentionGate, ConvBlock, InstanceNorm3dGN, Upsample, make_act, make_norm
from medattn.models.conv import Conv3d, ConvTranspose3d

CL = torch.channels_last_3d


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(
    ("cin", "cout", "kernel", "stride", "groups"),
    [(1, 4, 3, 1, 1), (6, 4, (1, 3, 3), (1, 2, 2), 1), (8, 8, 3, 1, 8), (3, 5, 2, 2, 1)],
)
def test_conv3d_matches_torch_values_and_gradients(channels_last, cin, cout, kernel, stride, groups) -> None:
    torch.manual_seed(0)
    ref = nn.Conv3d(cin, cout, kernel, stride=stride, padding=0 if kernel == 2 else 1, groups=groups)
    ref.padding = (0, 0, 0) if kernel == 2 else tuple(k // 2 for k in ref.kernel_size)
    ours = Conv3d(cin, cout, kernel, stride=stride, padding=ref.padding, groups=groups)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(1, cin, 6, 7, 8)  # batch 1, small C*X*Y: the shape PyTorch sends to its slow path
    if channels_last:
        x = x.contiguous(memory_format=CL)
    x.requires_grad_(True)
    y_ref, y = ref(x), ours(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5)
    g_ref = torch.autograd.grad(y_ref.square().sum(), [x, ref.weight])
    g = torch.autograd.grad(y.square().sum(), [x, ours.weight])
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.filterwarnings("ignore:TF32")
def test_conv3d_defers_to_torch_where_onednn_does_not_apply() -> None:
    conv = Conv3d(2, 3, 3, padding=1).double()
    x = torch.randn(1, 2, 4, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(conv(x), F.conv3d(x, conv.weight, conv.bias, padding=1))
    with torch.backends.mkldnn.flags(enabled=False):
        xf = torch.randn(1, 2, 4, 4, 4)
        conv.float()
        torch.testing.assert_close(conv(xf), F.conv3d(xf, conv.weight, conv.bias, padding=1))
    with pytest.raises(ValueError, match="zero padding"):
        Conv3d(2, 3, 3, padding=1, padding_mode="reflect")


@pytest.mark.parametrize("batch", [1, 2])  # batch 1: the GEMM path; batch 2: PyTorch's oneDNN path
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("kernel", [(2, 2, 2), (1, 2, 2), (2, 1, 3)])
def test_transposed_conv_matches_torch(kernel, channels_last, batch) -> None:
    torch.manual_seed(0)
    ref = nn.ConvTranspose3d(6, 4, kernel, stride=kernel)
    ours = ConvTranspose3d(6, 4, kernel)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(batch, 6, 3, 4, 5)
    if channels_last:
        x = x.contiguous(memory_format=CL)
    x.requires_grad_(True)
    y_ref, y = ref(x), ours(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    if batch == 1:
        assert y.is_contiguous(memory_format=CL if channels_last else torch.contiguous_format)
    g_ref = torch.autograd.grad(y_ref.square().sum(), [x, ref.weight, ref.bias])
    g = torch.autograd.grad(y.square().sum(), [x, ours.weight, ours.bias])
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    ours.channels_last_output = not channels_last  # the layout can also be chosen, with the same numbers
    y2 = ours(x)
    torch.testing.assert_close(y2, y_ref, rtol=1e-5, atol=1e-5)
    if batch == 1:
        assert y2.is_contiguous(memory_format=torch.contiguous_format if channels_last else CL)


def test_instance_norm_is_torch_instance_norm() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 5, 4, 6, 7) * 3 + 1
    ours, ref = InstanceNorm3dGN(5), nn.InstanceNorm3d(5, affine=True)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 2)
        ours.bias.uniform_(-1, 1)
    ref.load_state_dict(ours.state_dict())
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-4)


def test_norm_and_act_factories() -> None:
    assert isinstance(make_norm("batch", 8), nn.BatchNorm3d)
    group = make_norm("group", 12, groups=8)  # 8 does not divide 12: the largest divisor below it, 6
    assert isinstance(group, nn.GroupNorm) and group.num_groups == 6
    assert make_norm("instance", 12).num_groups == 12
    assert isinstance(make_act("leakyrelu"), nn.LeakyReLU) and make_act("leakyrelu").negative_slope == 0.01
    with pytest.raises(ValueError, match="norm"):
        make_norm("layer", 4)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="act"):
        make_act("tanh")  # type: ignore[arg-type]


def test_conv_block_shapes_and_residual_shortcut() -> None:
    x = torch.randn(2, 4, 8, 9, 10)
    plain = ConvBlock(4, 6, 2, (3, 3, 3), (2, 2, 2), "instance", "relu")
    res = ConvBlock(4, 6, 2, (3, 3, 3), (2, 2, 2), "instance", "relu", residual=True)
    assert plain(x).shape == res(x).shape == (2, 6, 4, 5, 5)
    # the shortcut is a 1x1x1 conv (24 weights) and a norm (12): exactly what residual adds
    n = sum(p.numel() for p in res.parameters()) - sum(p.numel() for p in plain.parameters())
    assert n == 4 * 6 + 2 * 6
    same = ConvBlock(6, 6, 1, (3, 3, 3), (1, 1, 1), "batch", "relu", residual=True)
    assert isinstance(same.shortcut, nn.Identity)


def test_trilinear_upsample_commutes_with_the_1x1_conv() -> None:
    torch.manual_seed(0)
    up = Upsample(6, 3, (1, 2, 2), "trilinear")
    x = torch.randn(1, 6, 3, 4, 5)
    late = F.conv3d(F.interpolate(x, scale_factor=(1, 2, 2), mode="trilinear"), up.conv.weight)
    torch.testing.assert_close(up(x), late, rtol=1e-5, atol=1e-5)
    assert Upsample(6, 3, (2, 2, 2), "transposed")(x).shape == (1, 3, 6, 8, 10)


def test_attention_gate_follows_the_additive_formula() -> None:
    torch.manual_seed(0)
    gate = AttentionGate(skip_channels=4, gate_channels=6, inter_channels=3, scale=(1, 2, 2), act="relu")
    x = torch.randn(2, 4, 3, 8, 6)
    g = torch.randn(2, 6, 3, 4, 3)
    y, alpha = gate(x, g)
    q = F.relu(F.conv3d(x, gate.theta_x.weight, stride=(1, 2, 2)) + F.conv3d(g, gate.phi_g.weight, gate.phi_g.bias))
    a = torch.sigmoid(F.conv3d(q, gate.psi.weight, gate.psi.bias))
    expected = F.interpolate(a, size=(3, 8, 6), mode="trilinear", align_corners=False)
    assert alpha.shape == (2, 1, 3, 8, 6)
    torch.testing.assert_close(alpha, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(y, x * expected, rtol=1e-5, atol=1e-6)
    assert float(alpha.detach().min()) >= 0 and float(alpha.detach().max()) <= 1
    with pytest.raises(ValueError, match="required_multiple"):
        gate(x, torch.randn(2, 6, 3, 5, 3))
