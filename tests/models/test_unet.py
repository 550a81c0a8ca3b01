"""AttentionGatedUNet: shapes for odd and anisotropic sizes, gradients, attention maps, deep supervision, honoured
arguments (pinned parameter counts computed by formula), determinism and the save / rebuild round trip."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
import torch

from medattn.models.config import UNetConfig
from medattn.models.padding import padded_size
from medattn.models.registry import build_from_config, model_from_checkpoint
from medattn.models.unet import AttentionGatedUNet

SMALL: dict[str, Any] = {"channels": (4, 8, 16), "out_channels": 3}


def net(**overrides: Any) -> AttentionGatedUNet:
    torch.manual_seed(0)
    return AttentionGatedUNet(**{**SMALL, **overrides})


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def expected_params(cfg: UNetConfig) -> int:
    """Parameter count written out from the architecture description (no attention blocks)."""
    vol = math.prod
    norm = 2  # affine scale and shift per channel, for instance, group and batch norm alike

    def block(cin: int, cout: int, n: int, k: tuple[int, int, int], stride: tuple[int, int, int]) -> int:
        total = 0
        for i in range(n):
            total += (cin if i == 0 else cout) * cout * vol(k) + norm * cout
        if cfg.residual and (cin != cout or stride != (1, 1, 1)):
            total += cin * cout + norm * cout
        return total

    c, total = cfg.channels, 0
    for i, w in enumerate(c):
        total += block(
            cfg.in_channels if i == 0 else c[i - 1], w, cfg.encoder_convs[i], cfg.kernel_sizes[i], cfg.strides[i]
        )
    dec_width = c[-1]
    widths = {}
    for i in reversed(range(len(c) - 1)):
        s = cfg.strides[i + 1]
        total += dec_width * c[i] * (vol(s) if cfg.upsample == "transposed" else 1)
        if cfg.gates:
            inter = max(1, c[i] // cfg.gate_reduction)
            total += c[i] * inter * vol(s) + (dec_width * inter + inter) + (inter + 1)
        fused = c[i] * (2 if cfg.fusion == "concat" else 1)
        if cfg.decoder_convs[i]:
            total += block(fused, c[i], cfg.decoder_convs[i], cfg.kernel_sizes[i], (1, 1, 1))
            dec_width = c[i]
        else:
            dec_width = fused
        widths[i] = dec_width
    total += (dec_width * vol(cfg.strides[0]) + 1) * cfg.out_channels
    total += sum((widths[i] + 1) * cfg.out_channels for i in range(1, cfg.deep_supervision + 1))
    return total


# ---- shapes ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "size"),
    [
        ({}, (13, 17, 9)),
        ({}, (1, 1, 1)),
        ({"strides": ((1, 1, 1), (1, 2, 2), (2, 2, 2)), "kernel_sizes": ((1, 3, 3), (1, 3, 3), 3)}, (5, 22, 19)),
        ({"strides": ((2, 2, 2), 2, (1, 2, 2))}, (11, 12, 7)),
        ({"fusion": "concat", "decoder_convs": (0, 0), "upsample": "transposed"}, (7, 9, 10)),
    ],
)
def test_output_shape_for_odd_and_anisotropic_sizes(overrides: dict, size: tuple[int, int, int]) -> None:
    model = net(**overrides).eval()
    x = torch.randn(2, 1, *size)
    y = model(x)
    assert y.shape == (2, 3, *size) and y.dtype == torch.float32 and y.is_contiguous()
    y.sum()  # a real tensor, not a view into padding


def test_multiple_and_unpadded_inputs() -> None:
    model = net(strides=((1, 1, 1), (1, 2, 2), 2), pad_input=False)
    assert model.required_multiple == (2, 4, 4)
    assert model(torch.randn(1, 1, 4, 8, 12)).shape == (1, 3, 4, 8, 12)
    with pytest.raises(ValueError, match=r"not a multiple of \(2, 4, 4\)"):
        model(torch.randn(1, 1, 4, 8, 10))


def test_a_single_voxel_bottleneck_is_padded_away() -> None:
    # 4^3 is a multiple of 4 but would leave one voxel per channel at the bottleneck, where normalisation is
    # undefined: the network pads one axis further (or, with pad_input=False, says which size it needs)
    assert padded_size((4, 4, 4), (4, 4, 4)) == (4, 4, 8)
    assert padded_size((1, 5, 2), (4, 4, 4)) == (4, 8, 4)
    assert net().eval()(torch.randn(1, 1, 4, 4, 4)).shape == (1, 3, 4, 4, 4)
    with pytest.raises(ValueError, match=r"smallest size it accepts is \(4, 4, 8\)"):
        net(pad_input=False)(torch.randn(1, 1, 4, 4, 4))


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (torch.randn(1, 8, 8, 8), "5D tensor"),
        (torch.randn(1, 2, 8, 8, 8), "expected 1 input channel"),
        (torch.zeros(1, 1, 8, 8, 8, dtype=torch.int64), "floating-point"),
        (torch.zeros(1, 1, 0, 8, 8), "empty"),
    ],
)
def test_bad_inputs_fail_up_front(x: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        net()(x)


# ---- gradients, attention maps, deep supervision -----------------------------------------------------------------


def test_gradients_reach_every_parameter() -> None:
    model = net(
        encoder_attention=("scse", "cbam", "mhsa"),
        decoder_attention=("wsa", "scse"),
        attention_heads=2,
        attention_window=2,
        residual=True,
        deep_supervision=1,
        dropout=0.1,
        norm="group",
        norm_groups=2,
    ).train()
    outputs = model(torch.randn(2, 1, 9, 8, 7))
    sum(o.square().mean() for o in outputs).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == []


def test_attention_maps_are_probabilities_on_the_input_grid() -> None:
    model = net(channels=(4, 8, 16, 32), strides=((1, 1, 1), (1, 2, 2), 2, 2)).eval()
    x = torch.randn(2, 1, 10, 13, 11)
    with torch.no_grad():
        logits, maps = model(x, return_attention=True)
    assert logits.shape == (2, 3, 10, 13, 11)
    assert len(maps) == 3
    for m in maps:
        assert m.shape == (2, 1, 10, 13, 11)
        assert float(m.min()) >= 0 and float(m.max()) <= 1
    assert not torch.allclose(maps[0], maps[0].mean())  # a map, not a constant
    _, none = net(gates=False).eval()(x[..., :8, :8, :8], return_attention=True)
    assert none == []


def test_deep_supervision_outputs_have_the_stage_scales() -> None:
    model = net(channels=(4, 8, 16, 32), strides=((1, 1, 1), (1, 2, 2), 2, 2), deep_supervision=2).train()
    x = torch.randn(1, 1, 9, 13, 16)
    outputs = model(x)
    assert model.output_scales == [(1, 1, 1), (1, 2, 2), (2, 4, 4)]
    assert [tuple(o.shape) for o in outputs] == [(1, 3, 9, 13, 16), (1, 3, 9, 7, 8), (1, 3, 5, 4, 4)]
    outputs, maps = model(x, return_attention=True)
    assert isinstance(outputs, list) and len(maps) == 3
    assert model.eval()(x).shape == (1, 3, 9, 13, 16)  # eval: the full-resolution logits only
    strided = net(deep_supervision=1).train()  # the default strided stem: stage 1 is 4x coarser than the input
    assert strided.output_scales == [(1, 1, 1), (4, 4, 4)]
    assert [tuple(o.shape) for o in strided(torch.randn(1, 1, 9, 13, 16))] == [(1, 3, 9, 13, 16), (1, 3, 3, 4, 4)]


# ---- every argument is honoured ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"in_channels": 2, "out_channels": 5},
        {"channels": (3, 6, 12, 24)},
        {"strides": ((1, 1, 1), (1, 2, 2), 2)},
        {"strides": ((2, 2, 2), 2, 2)},
        {"kernel_sizes": ((1, 3, 3), 3, 5)},
        {"encoder_convs": (2, 1, 3)},
        {"decoder_convs": (1, 2)},
        {"fusion": "concat"},
        {"fusion": "concat", "decoder_convs": (0, 0)},
        {"upsample": "transposed"},
        {"residual": True, "encoder_convs": (2, 2, 2), "decoder_convs": (1, 1)},
        {"gates": False},
        {"gate_reduction": 4},
        {"deep_supervision": 1},
        {"norm": "batch"},
    ],
)
def test_parameter_count_matches_the_formula(overrides: dict) -> None:
    model = net(**overrides)
    assert n_params(model) == expected_params(model.cfg)


def test_pinned_parameter_count_of_the_small_default() -> None:
    # strides (2, 2, 1), two convs per encoder stage, one per decoder stage, concatenation, trilinear upsampling
    # (1x1x1 conv), instance norm: stage 0 (1->4: 108 + 8, 4->4: 432 + 8), stage 1 (4->8: 864 + 16, 8->8: 1728 +
    # 16), stage 2 (8->16: 3456 + 32, 16->16: 6912 + 32), decoder 1 at the bottleneck's grid (up 16->8: 128; gate
    # 32 + 68 + 5; conv 16->8: 3456 + 16), decoder 0 (up 8->4: 32; gate 64 + 18 + 3; conv 8->4: 864 + 8),
    # transposed head 2x2x2 4->3 with bias (99)
    assert n_params(net()) == 18405


# Arguments that change the parameter count (base value -> other value).
PARAM_CHANGES: dict[str, Any] = {
    "in_channels": 2,
    "out_channels": 2,
    "channels": (4, 8, 32),
    "strides": ((1, 1, 1), (1, 2, 2), 2),
    "kernel_sizes": ((3, 3, 3), (1, 3, 3), 3),
    "encoder_convs": (1, 2, 3),
    "decoder_convs": (2, 1),
    "fusion": "add",
    "upsample": "transposed",
    "residual": True,
    "gates": False,
    "gate_reduction": 4,
    "encoder_attention": ("none", "scse", "none"),
    "decoder_attention": ("none", "cbam"),
    "attention_reduction": 4,
    "mlp_ratio": 4,
    "pos_encoding": "none",
    "deep_supervision": 1,
}
# Arguments that keep the parameters but change the outputs (same seed, same weights).
OUTPUT_CHANGES: dict[str, Any] = {
    "norm": "batch",
    "norm_groups": 2,
    "act": "gelu",
    "attention_heads": 4,
    "attention_window": 2,
    "dropout": 0.5,
}
# Base for the checks: attention on, so that the attention options have something to act on.
HONOUR_BASE: dict[str, Any] = {
    "encoder_attention": ("none", "cbam", "mhsa"),
    "decoder_attention": ("wsa", "scse"),
    "attention_heads": 2,
    "attention_window": 3,
    "norm": "group",
    "norm_groups": 4,
}


def test_every_config_field_is_covered_by_an_honour_check() -> None:
    fields = {f.name for f in dataclasses.fields(UNetConfig)}
    covered = set(PARAM_CHANGES) | set(OUTPUT_CHANGES) | {"pad_input", "channels_last"}
    assert fields == covered


@pytest.mark.parametrize(("field", "value"), PARAM_CHANGES.items())
def test_argument_changes_the_parameter_count(field: str, value: Any) -> None:
    base = net(**HONOUR_BASE)
    other = net(**{**HONOUR_BASE, field: value})
    assert n_params(other) != n_params(base), field


@pytest.mark.parametrize(("field", "value"), OUTPUT_CHANGES.items())
def test_argument_changes_the_output(field: str, value: Any) -> None:
    base, other = net(**HONOUR_BASE), net(**{**HONOUR_BASE, field: value})
    assert n_params(other) == n_params(base)
    other.load_state_dict(base.state_dict(), strict=field != "norm")  # batch norm adds running statistics
    x = torch.randn(2, 1, 12, 12, 12)
    train = field == "dropout"  # dropout acts in training mode only
    base.train(train)
    other.train(train)
    torch.manual_seed(1)
    a = base(x)
    torch.manual_seed(1)
    b = other(x)
    assert not torch.allclose(a, b, atol=1e-5), field


def test_memory_format_is_a_pure_speed_knob() -> None:
    a, b = net(**HONOUR_BASE, channels_last=True).eval(), net(**HONOUR_BASE, channels_last=False).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 1, 9, 10, 11)
    torch.testing.assert_close(a(x), b(x), rtol=1e-4, atol=1e-4)


# ---- determinism and the checkpoint round trip -------------------------------------------------------------------


def test_eval_mode_is_deterministic() -> None:
    model = net(**HONOUR_BASE, dropout=0.3).eval()
    x = torch.randn(2, 1, 11, 12, 10)
    torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)


def test_model_saved_and_rebuilt_from_its_config_gives_identical_outputs(tmp_path) -> None:
    model = net(**HONOUR_BASE, deep_supervision=1, strides=((1, 1, 1), (1, 2, 2), 2), pos_encoding="sincos").eval()
    path = tmp_path / "model.pt"
    torch.save({"config": model.config, "state_dict": model.state_dict()}, path)
    doc = torch.load(path, weights_only=True)
    rebuilt = model_from_checkpoint(doc).eval()
    assert rebuilt.config == model.config
    x = torch.randn(1, 1, 7, 9, 10)
    torch.testing.assert_close(rebuilt(x), model(x), rtol=0, atol=0)
    fresh = build_from_config(doc["config"])
    assert n_params(fresh) == n_params(model)


def test_logits_are_contiguous_and_their_gradient_reaches_the_head_channels_last() -> None:
    """The loss reads contiguous logits; the head convolution's backward gets its gradient in the network's
    channels-last layout (oneDNN's backward would otherwise convert its input first), with the same values."""
    from medattn.models import build_model
    from medattn.models.conv import contiguous_output

    cl = torch.channels_last_3d
    x = torch.randn(2, 3, 4, 5, 6).contiguous(memory_format=cl).requires_grad_(True)
    y = contiguous_output(x)
    assert y.is_contiguous() and torch.equal(y, x)
    g = torch.randn(y.shape)
    y.backward(g)
    assert x.grad is not None and x.grad.is_contiguous(memory_format=cl) and torch.equal(x.grad, g)
    with torch.no_grad():
        assert contiguous_output(x).grad_fn is None

    torch.manual_seed(0)
    net = build_model("ag_unet_fullres", 1, 3, channels=(8, 16, 32), deep_supervision=1).train()
    seen: list[bool] = []
    net.head.register_full_backward_hook(lambda m, gi, go: seen.append(go[0].is_contiguous(memory_format=cl)))
    outs = net(torch.randn(2, 1, 16, 16, 16))
    assert all(o.is_contiguous() for o in outs)
    sum(o.square().mean() for o in outs).backward()
    assert seen == [True]
