"""UNetConfig: derived per-stage defaults, validation messages, and the JSON round trip a checkpoint relies on."""

from __future__ import annotations

import json

import pytest

from medattn.errors import ConfigError
from medattn.models.config import ModelConfigError, UNetConfig


def test_per_stage_defaults_follow_the_number_of_stages() -> None:
    cfg = UNetConfig(channels=(4, 8, 16))
    assert cfg.strides == ((2, 2, 2), (2, 2, 2), (1, 1, 1))  # strided stem; the bottleneck keeps the grid
    assert cfg.kernel_sizes == ((3, 3, 3),) * 3
    assert cfg.encoder_convs == (2, 2, 2)
    assert cfg.decoder_convs == (1, 1)
    assert cfg.encoder_attention == ("none",) * 3
    assert cfg.decoder_attention == ("none",) * 2
    assert cfg.required_multiple == (4, 4, 4)


def test_scalar_and_anisotropic_values_are_normalised() -> None:
    cfg = UNetConfig(channels=(4, 8, 16, 32), strides=((1, 1, 1), (1, 2, 2), 2, (2, 1, 2)), kernel_sizes=3)
    assert cfg.strides == ((1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 1, 2))
    assert cfg.required_multiple == (4, 4, 8)
    assert cfg.stage_scale(2) == (2, 4, 4)
    assert UNetConfig(channels=(4, 8, 16), strides=3).strides == ((3, 3, 3),) * 3
    assert UNetConfig(channels=(4, 8, 16), strides=(1, 2, 2)).strides == ((1, 1, 1), (2, 2, 2), (2, 2, 2))


def test_json_round_trip_is_exact() -> None:
    cfg = UNetConfig(
        in_channels=2,
        out_channels=4,
        channels=(4, 8, 16),
        strides=((1, 1, 1), (1, 2, 2), 2),
        kernel_sizes=((1, 3, 3), 3, 3),
        encoder_attention=("none", "scse", "mhsa"),
        attention_heads=2,
        deep_supervision=1,
        dropout=0.1,
    )
    doc = json.loads(json.dumps(cfg.to_dict()))
    assert doc["arch"] == "attention_gated_unet"
    assert UNetConfig.from_dict(doc) == cfg
    assert UNetConfig.from_dict(doc).to_dict() == doc


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"channels": (4,)}, "at least two"),
        ({"kernel_sizes": 4}, "odd"),
        ({"strides": ((1, 1, 1), (0, 2, 2), 2)}, ">= 1"),
        ({"strides": ((1, 1, 1), 2)}, "expected 3 values"),
        ({"norm": "layer"}, "norm: 'layer' is not one of"),
        ({"act": "tanh"}, "act: 'tanh'"),
        ({"encoder_attention": ("none", "none", "transformer")}, "encoder_attention[2]"),
        ({"encoder_attention": ("none", "none", "mhsa"), "attention_heads": 3}, "must divide the stage width 16"),
        ({"deep_supervision": 2}, "at most 1"),
        ({"decoder_convs": (0, -1)}, "decoder_convs[1]"),
        ({"dropout": 1.0}, "dropout"),
        ({"gates": "yes"}, "gates: expected true or false"),
        ({"fusion": "sum"}, "fusion"),
    ],
)
def test_invalid_values_fail_with_the_field_named(overrides: dict, message: str) -> None:
    with pytest.raises(ModelConfigError) as err:
        UNetConfig(**{"channels": (4, 8, 16), **overrides})
    assert message in str(err.value)


def test_unknown_keys_and_foreign_arch_are_rejected() -> None:
    doc = UNetConfig(channels=(4, 8)).to_dict()
    with pytest.raises(ModelConfigError, match="unknown model options \\['widths'\\]"):
        UNetConfig.from_dict({**doc, "widths": [1, 2]})
    with pytest.raises(ModelConfigError, match="arch"):
        UNetConfig.from_dict({**doc, "arch": "swin_unetr"})
    # usable both as the CLI's ConfigError and as a ValueError
    assert issubclass(ModelConfigError, ConfigError) and issubclass(ModelConfigError, ValueError)


def test_replace_validates_like_a_new_config() -> None:
    cfg = UNetConfig(channels=(4, 8, 16))
    assert cfg.replace(norm="batch").norm == "batch"
    with pytest.raises(ModelConfigError):
        cfg.replace(deep_supervision=5)
