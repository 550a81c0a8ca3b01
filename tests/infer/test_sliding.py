"""Sliding-window inference: same labels, probabilities and blended outputs as MONAI, less memory, mirroring TTA,
clear errors."""

from __future__ import annotations

import itertools

import pytest
import torch
from monai.inferers import sliding_window_inference
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from medattn.infer.sliding import SlidingWindowPredictor, sliding_window_predict
from medattn.infer.stitch import argmax_classes, stitch_memory_bytes
from medattn.infer.windows import choose_slab_axis, mirror_combinations
from medattn.models import build_model


def _net(out_channels: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("ag_unet", 1, out_channels, channels=(4, 8, 16)).eval()


def _monai(x: torch.Tensor, net: nn.Module, window, overlap=0.5, blend="gaussian") -> torch.Tensor:
    with torch.inference_mode():
        return sliding_window_inference(x[None], window, 2, net, overlap=overlap, mode=blend)[0]


@pytest.mark.parametrize(
    ("size", "window", "slab_axis"),
    [
        ((30, 26, 21), (16, 16, 16), None),  # several rows on every axis
        ((30, 26, 21), (16, 16, 16), 2),  # slabs along another axis
        ((21, 12, 33), (16, 16, 8), 1),  # the image is smaller than the window on axis 1: padded windows
        ((16, 12, 14), (16, 16, 16), None),  # a single padded window
    ],
)
def test_labels_and_probabilities_equal_monai(size, window, slab_axis) -> None:
    """An independent check: MONAI's sliding_window_inference (same network, window, overlap, Gaussian blending)."""
    net = _net()
    x = torch.randn(1, *size)
    ref = _monai(x, net, window)
    labels = sliding_window_predict(x, net, window, overlap=0.5, window_batch=3, slab_axis=slab_axis)
    full = sliding_window_predict(x, net, window, overlap=0.5, slab_axis=slab_axis, return_probabilities=True)
    assert labels.labels.dtype == torch.uint8 and labels.labels.shape == size
    assert labels.probabilities is None
    torch.testing.assert_close(labels.labels.long(), ref.argmax(0))
    torch.testing.assert_close(full.probabilities, torch.softmax(ref, 0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(full.labels, labels.labels)
    assert len(torch.unique(labels.labels)) >= 2  # the comparison exercised more than one class


def test_constant_blend_and_other_overlap_equal_monai() -> None:
    net = _net(seed=1)
    x = torch.randn(1, 30, 27, 22)
    ref = _monai(x, net, (16, 16, 16), overlap=0.25, blend="constant")
    out = sliding_window_predict(x, net, (16, 16, 16), overlap=0.25, blend="constant", return_probabilities=True)
    torch.testing.assert_close(out.probabilities, torch.softmax(ref, 0), atol=1e-5, rtol=1e-5)


class _LargestAllocation(TorchDispatchMode):
    """Records the largest tensor any aten op returns (bytes) while active."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t._base is None:  # a view allocates nothing
                self.largest = max(self.largest, t.numel() * t.element_size())
        return out


def test_labels_only_path_never_allocates_a_full_volume_float_buffer() -> None:
    torch.manual_seed(0)
    net = nn.Conv3d(1, 4, 3, padding=1).eval()  # few aten ops per window: the dispatch hook stays cheap
    size = (96, 24, 24)
    x = torch.randn(1, *size)
    voxels = x[0].numel()
    with _LargestAllocation() as probs_mode:
        full = sliding_window_predict(x, net, (16, 16, 16), return_probabilities=True)
    with _LargestAllocation() as labels_mode:
        labels = sliding_window_predict(x, net, (16, 16, 16))
    assert torch.equal(full.labels, labels.labels)
    assert probs_mode.largest >= 4 * voxels * 4  # the full probability volume: the counter sees it
    assert labels_mode.largest < voxels * 4  # nothing as large as even one float32 channel of the volume
    # The largest is the slab ring, one window deep along the longest axis: 16 of 96 planes x 4 classes x 4 bytes.
    ring = 4 * (voxels // 96 * 16) * 4
    assert labels_mode.largest <= ring
    assert stitch_memory_bytes(size, (16, 16, 16), 4) == voxels + ring


class _LogitsAndMaps(nn.Module):
    """Three class logits followed by every attention gate's map (two, in [0, 1]): more channels than classes."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.net = _net(seed=seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits, maps = self.net(x, return_attention=True)
        return torch.cat([logits, *maps], dim=1)


@pytest.mark.parametrize(
    ("size", "window", "overlap", "sigma", "slab_axis"),
    [
        ((30, 26, 21), (16, 16, 16), 0.5, 0.125, None),  # several rows on every axis
        ((30, 26, 21), (16, 16, 16), 0.25, 0.25, 2),  # another overlap, sigma and slab axis
        ((21, 12, 33), (16, 16, 8), 0.5, 0.125, 1),  # the image is smaller than the window on axis 1: padded windows
        ((16, 12, 14), (16, 16, 16), 0.5, 0.125, None),  # a single padded window
    ],
)
def test_blended_outputs_equal_monai(size, window, overlap, sigma, slab_axis) -> None:
    """Every output channel, extra ones included, blended as MONAI's sliding_window_inference blends them."""
    net = _LogitsAndMaps().eval()
    x = torch.randn(1, *size)
    with torch.inference_mode():
        ref = sliding_window_inference(x[None], window, 2, net, overlap=overlap, mode="gaussian", sigma_scale=sigma)[0]
    assert ref.shape == (5, *size)
    assert float(ref[3:].max() - ref[3:].min()) > 1e-2  # the attention channels vary: the comparison means something
    kwargs = {"overlap": overlap, "sigma_scale": sigma, "slab_axis": slab_axis, "num_classes": 3}
    out = sliding_window_predict(
        x, net, window, window_batch=3, return_blended=True, return_probabilities=True, **kwargs
    )
    assert out.blended is not None and out.blended.dtype == torch.float32
    torch.testing.assert_close(out.blended, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.labels.long(), ref[:3].argmax(0))  # labels: the first num_classes channels
    torch.testing.assert_close(out.probabilities, torch.softmax(ref[:3], 0), atol=1e-5, rtol=1e-5)
    assert len(torch.unique(out.labels)) >= 2
    plain = sliding_window_predict(x, net, window, **kwargs)  # labels only: the extra channels are dropped
    assert plain.blended is None and plain.probabilities is None
    torch.testing.assert_close(plain.labels, out.labels)
    every = sliding_window_predict(x, net, window, overlap=overlap, sigma_scale=sigma, return_blended=True)
    torch.testing.assert_close(every.labels.long(), ref.argmax(0))  # no num_classes: the arg-max of all channels
    assert int(every.labels.max()) >= 3  # ... which differs here: num_classes was honoured above


def test_blended_buffer_is_allocated_on_request_only() -> None:
    torch.manual_seed(0)
    net = nn.Conv3d(1, 6, 3, padding=1).eval()  # four classes, then two more channels
    size = (96, 24, 24)
    x = torch.randn(1, *size)
    voxels = x[0].numel()
    slab = voxels // 96 * 16  # the slab ring: 16 of 96 planes
    with _LargestAllocation() as blended_mode:
        full = sliding_window_predict(x, net, (16, 16, 16), num_classes=4, return_blended=True)
    with _LargestAllocation() as labels_mode:
        labels = sliding_window_predict(x, net, (16, 16, 16), num_classes=4)
    assert full.blended is not None and tuple(full.blended.shape) == (6, *size)
    assert torch.equal(full.labels, labels.labels)
    assert blended_mode.largest == 6 * voxels * 4  # the blended volume, every channel, float32
    assert labels_mode.largest <= 4 * slab * 4  # a four-class ring: the two extra channels were never stitched
    blended_bytes = stitch_memory_bytes(size, (16, 16, 16), 4, return_blended=True, output_channels=6)
    assert blended_bytes == voxels + 6 * slab * 4 + slab * 4 + 6 * voxels * 4  # labels, rings, blended volume
    assert stitch_memory_bytes(size, (16, 16, 16), 4, output_channels=6) == voxels + 4 * slab * 4


class _Asymmetric(nn.Module):
    """A network that is not flip-equivariant: a random 3x3x3 convolution plus a position-dependent ramp."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv3d(1, 3, 3, padding=1)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        ramp = torch.linspace(0, 1, x.shape[2])[None, None, :, None, None]
        return self.conv(x) + ramp * torch.tensor([0.0, 1.0, -1.0])[None, :, None, None, None]


def test_mirroring_averages_the_flipped_predictions() -> None:
    net = _Asymmetric().eval()
    x = torch.randn(1, 12, 10, 8)
    window = (12, 10, 8)  # one window: the blended logits are that window's logits
    flips = [()] + [c for r in (1, 2, 3) for c in itertools.combinations((0, 1, 2), r)]
    with torch.no_grad():
        expected = torch.stack(
            [torch.flip(net(torch.flip(x[None], [a + 2 for a in f])), [a + 2 for a in f]) for f in flips]
        ).mean(0)[0]
    net.calls = 0
    tta = sliding_window_predict(x, net, window, mirror_axes=(0, 1, 2), return_probabilities=True)
    assert net.calls == 8
    plain = sliding_window_predict(x, net, window, return_probabilities=True)
    torch.testing.assert_close(tta.probabilities, torch.softmax(expected, 0), atol=1e-5, rtol=1e-5)
    assert (tta.probabilities - plain.probabilities).abs().max() > 1e-2  # mirroring changed the answer
    assert mirror_combinations((2, 0)) == [(0,), (2,), (0, 2)]

    # Several windows: the same as MONAI blending a predictor that averages the flips itself.
    def averaged(batch: torch.Tensor) -> torch.Tensor:
        return torch.stack(
            [torch.flip(net(torch.flip(batch, [a + 2 for a in f])), [a + 2 for a in f]) for f in flips]
        ).mean(0)

    big = torch.randn(1, 20, 17, 15)
    with torch.no_grad():
        ref = sliding_window_inference(big[None], (8, 8, 8), 2, averaged, overlap=0.5, mode="gaussian")[0]
    out = sliding_window_predict(big, net, (8, 8, 8), mirror_axes=(0, 1, 2), window_batch=2, return_probabilities=True)
    torch.testing.assert_close(out.probabilities, torch.softmax(ref, 0), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("classes", [1, 2, 3, 5])
def test_argmax_classes_matches_torch_argmax_including_ties(classes: int) -> None:
    scores = torch.randn(classes, 7, 6, 4)
    if classes > 1:
        scores[1, 2:4] = scores[0, 2:4]  # ties between the first two classes: class 0
    if classes > 3:
        scores[3, :2] = scores[1, :2]  # ties between classes 1 and 3 where 1 might win
    scores[:, 0, 0, 0] = 0.5  # all tied: class 0
    for out in (torch.full((7, 6, 4), 9, dtype=torch.uint8), torch.full((2, 7, 6, 4), 9, dtype=torch.int32)[1]):
        argmax_classes(scores, out)  # whatever out held before is overwritten
        torch.testing.assert_close(out.long(), scores.argmax(0))
    logits = torch.randn(2, classes, 5, 4, 3)  # a batch's logits, class axis second: the training Dice's view
    out = torch.empty(2, 5, 4, 3, dtype=torch.uint8)
    argmax_classes(logits.transpose(0, 1), out)
    torch.testing.assert_close(out.long(), logits.argmax(1))


def test_predictor_caches_the_importance_map_and_stitches_on_cpu() -> None:
    net = _net()
    predictor = SlidingWindowPredictor(net, (16, 16, 16), overlap=0.5, window_batch=2)
    first = predictor.importance_map()
    x = torch.randn(1, 20, 18, 17)
    result = predictor(x)
    assert predictor.importance_map() is first
    assert result.stitch_device == torch.device("cpu")
    assert predictor.resolve_stitch_device((512, 512, 300)) == torch.device("cpu")
    torch.testing.assert_close(result.labels.long(), _monai(x, net, (16, 16, 16)).argmax(0))
    assert choose_slab_axis((512, 512, 300), (128, 128, 128)) in (0, 1)
    assert choose_slab_axis((40, 300, 40), (32, 32, 32)) == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"overlap": 1.0}, "overlap"),
        ({"window_batch": 0}, "window_batch"),
        ({"mirror_axes": (3,)}, "mirror_axes"),
        ({"blend": "cosine"}, "blend"),
    ],
)
def test_bad_options_name_the_option(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        sliding_window_predict(torch.randn(1, 8, 8, 8), _net(), (8, 8, 8), **kwargs)


def test_bad_window_image_and_network_output_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="window"):
        sliding_window_predict(torch.randn(1, 8, 8, 8), _net(), (8, 8))
    with pytest.raises(ValueError, match=r"\(C, X, Y, Z\)"):
        sliding_window_predict(torch.randn(8, 8, 8), _net(), (8, 8, 8))
    with pytest.raises(ValueError, match="network: expected logits"):
        sliding_window_predict(torch.randn(1, 8, 8, 8), lambda x: x[:, :, :4], (8, 8, 8))
    with pytest.raises(ValueError, match="num_classes"):
        sliding_window_predict(torch.randn(1, 8, 8, 8), _net(), (8, 8, 8), num_classes=1)
    with pytest.raises(ValueError, match=r"K>=4"):  # more classes asked for than the network returns channels
        sliding_window_predict(torch.randn(1, 8, 8, 8), _net(), (8, 8, 8), num_classes=4, return_blended=True)
