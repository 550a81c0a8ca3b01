"""The deep-supervision Dice + CE loss against an independent computation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medattn.train.losses import DeepSupervisionLoss, deep_supervision_weights, downsample_label


def reference_dice_ce(logits: torch.Tensor, target: torch.Tensor, batch: bool, smooth: float = 1e-5) -> torch.Tensor:
    """Soft Dice over foreground classes (background excluded) + cross-entropy, written out by hand."""
    k = logits.shape[1]
    prob = torch.softmax(logits.double(), 1)
    onehot = F.one_hot(target[:, 0].long(), k).permute(0, 4, 1, 2, 3).double()
    p, t = prob[:, 1:], onehot[:, 1:]
    dims = (0, 2, 3, 4) if batch else (2, 3, 4)
    inter = (p * t).sum(dims)
    denom = p.sum(dims) + t.sum(dims)
    dice = 1.0 - (2.0 * inter + smooth) / (denom + smooth)
    ce = F.cross_entropy(logits.double(), target[:, 0].long())
    return dice.mean() + ce


def test_weights_halve_per_scale_and_sum_to_one() -> None:
    assert deep_supervision_weights(1) == [1.0]
    assert deep_supervision_weights(3) == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    with pytest.raises(ValueError):
        deep_supervision_weights(0)


def test_label_downsampling_matches_nearest_interpolation_on_divisible_sizes() -> None:
    label = torch.randint(0, 3, (2, 1, 16, 12, 8)).float()
    for size in ((8, 6, 4), (4, 3, 2)):
        expected = F.interpolate(label, size=size, mode="nearest")
        assert torch.equal(downsample_label(label, size), expected)


def test_label_downsampling_on_odd_sizes_takes_the_receptive_field_centre() -> None:
    # Voxel values encode their own index along each axis, so the chosen source voxel is visible.
    x = torch.arange(15).view(15, 1, 1) * 10000 + torch.arange(9).view(1, 9, 1) * 100 + torch.arange(5).view(1, 1, 5)
    label = x[None, None].float()
    out = downsample_label(label, (4, 3, 2))  # ceil(15/4), ceil(9/4), ceil(5/4): scale 4 on every axis
    assert out.shape == (1, 1, 4, 3, 2)
    assert out[0, 0, 3, 2, 1].item() == 12 * 10000 + 8 * 100 + 4  # coarse voxel i sees fine voxel 4 * i
    # ceil(5/3) == ceil(5/4) == 2: the power of two is chosen unless the scale is given.
    assert downsample_label(label, (8, 5, 2), scale=(2, 2, 3))[0, 0, 0, 0, 1].item() == 3
    assert downsample_label(label, (8, 5, 2))[0, 0, 0, 0, 1].item() == 4
    with pytest.raises(ValueError, match="integer factors"):
        downsample_label(label, (8, 5, 2), scale=(2, 2, 2))


@pytest.mark.parametrize("batch_dice", [True, False])
def test_deep_supervision_loss_equals_independent_computation(batch_dice: bool) -> None:
    torch.manual_seed(0)
    target = torch.randint(0, 3, (2, 1, 16, 16, 8)).float()
    outs = [torch.randn(2, 3, 16, 16, 8), torch.randn(2, 3, 8, 8, 4), torch.randn(2, 3, 4, 4, 2)]
    weights = [4 / 7, 2 / 7, 1 / 7]
    expected = sum(
        w * reference_dice_ce(o, F.interpolate(target, size=o.shape[2:], mode="nearest"), batch_dice)
        for w, o in zip(weights, outs)
    )
    got = DeepSupervisionLoss(batch_dice=batch_dice)(outs, target)
    assert got.item() == pytest.approx(float(expected), rel=1e-5)
    # A single tensor is the finest output alone.
    single = DeepSupervisionLoss(batch_dice=batch_dice)(outs[0], target)
    assert single.item() == pytest.approx(float(reference_dice_ce(outs[0], target, batch_dice)), rel=1e-5)


def test_loss_trains_a_deep_supervised_unet_on_an_odd_sized_patch() -> None:
    from medattn.models.from_plan import output_scales
    from medattn.models.registry import build_model

    torch.manual_seed(0)
    strides = ((1, 1, 1), (2, 2, 2), (2, 2, 2))  # the plan's topology: a full-resolution stem, then halving
    net = build_model("ag_unet", 1, 3, channels=(4, 8, 16), strides=strides, deep_supervision=1).train()
    x = torch.randn(1, 1, 15, 17, 13)
    target = torch.randint(0, 3, (1, 1, 15, 17, 13)).float()
    outs = net(x)
    assert [tuple(o.shape[2:]) for o in outs] == [(15, 17, 13), (8, 9, 7)]
    assert output_scales(net) == [(1, 1, 1), (2, 2, 2)]
    loss = DeepSupervisionLoss(scales=output_scales(net))(outs, target)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_loss_rejects_mismatched_weights_and_targets() -> None:
    outs = [torch.randn(1, 3, 8, 8, 8), torch.randn(1, 3, 4, 4, 4)]
    with pytest.raises(ValueError, match="weights"):
        DeepSupervisionLoss(weights=[1.0])(outs, torch.zeros(1, 1, 8, 8, 8))
    with pytest.raises(ValueError, match="class indices"):
        DeepSupervisionLoss()(outs, torch.zeros(1, 3, 8, 8, 8))


def test_ignored_voxels_take_no_part_in_either_term() -> None:
    """A pseudo-label's unconfident voxels (IGNORE): the loss equals the plain loss over the kept voxels alone, no
    gradient reaches the ignored ones, and a patch with nothing kept contributes 0."""
    import torch

    from medattn.train.losses import IGNORE, DeepSupervisionLoss

    torch.manual_seed(0)
    loss = DeepSupervisionLoss()
    logits = torch.randn(2, 3, 8, 8, 8, requires_grad=True)
    target = torch.randint(0, 3, (2, 1, 8, 8, 8)).float()
    masked = target.clone()
    masked[:, :, :4] = IGNORE
    value = loss(logits, masked)
    value.backward()
    kept = loss.dice_ce(logits[:, :, 4:].detach().float(), target[:, :, 4:])  # MONAI's DiceCELoss on the kept half
    assert torch.allclose(value, kept, atol=1e-6)
    assert float(logits.grad[:, :, :4].abs().max()) == 0.0 and float(logits.grad[:, :, 4:].abs().max()) > 0
    nothing = loss(logits, torch.full_like(target, IGNORE))
    assert float(nothing.detach()) == 0.0 and nothing.requires_grad
