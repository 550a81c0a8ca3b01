"""A preset is one entry of data: every built-in one builds as pinned, and a new one needs no code.

The pinned configs, parameter counts and output scales were recorded with the code before presets became
:class:`~medattn.models.registry.Preset` entries (commit ed4791c, per-preset dicts with ``arch`` and if-chains on
it), so they also pin that a model file written then rebuilds to the same network.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

from medattn.errors import ConfigError
from medattn.models import Preset, build_from_config, build_model, models_table, register_preset
from medattn.models.config import ModelConfigError
from medattn.models.flops import count_parameters
from medattn.models.from_plan import build_network, network_overrides
from medattn.models.model_file import load_model, save_model
from medattn.models.registry import BUILTIN_PRESETS, PRESETS, get_preset, list_models
from tests.models.test_from_plan import ANISO, ANISO_K, plan

WIDTHS = (4, 8, 16, 32)
PATCH = (1, 2, 32, 32, 16)  # the test plan's patch, batch 1, two channels

#: build_network("ag_unet", plan(), WIDTHS).config: the reference the other presets are written against.
AG_ISO: dict[str, Any] = {
    "arch": "attention_gated_unet",
    "format_version": 1,
    "in_channels": 2,
    "out_channels": 3,
    "channels": [4, 8, 16, 32],
    "strides": [[2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 1, 1]],
    "kernel_sizes": [[3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
    "encoder_convs": [2, 2, 2, 2],
    "decoder_convs": [1, 1, 1],
    "fusion": "concat",
    "upsample": "trilinear",
    "norm": "instance",
    "norm_groups": 8,
    "act": "leakyrelu",
    "residual": False,
    "gates": True,
    "gate_reduction": 2,
    "encoder_attention": ["none", "none", "none", "none"],
    "decoder_attention": ["none", "none", "none"],
    "attention_reduction": 2,
    "attention_heads": 4,
    "attention_window": [4, 4, 4],
    "mlp_ratio": 2,
    "pos_encoding": "conv",
    "deep_supervision": 2,
    "dropout": 0.0,
    "pad_input": True,
    "channels_last": True,
}
AG_ANISO = {**AG_ISO, "strides": [[2, 2, 1], [2, 2, 2], [2, 2, 2], [1, 1, 1]]}
FULL_ISO = {
    "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
    "encoder_convs": [1, 2, 2, 2],
    "decoder_convs": [0, 1, 1],
    "fusion": "add",
}
FULL_ANISO = {
    **FULL_ISO,
    "strides": [[1, 1, 1], [2, 2, 1], [2, 2, 2], [2, 2, 2]],
    "kernel_sizes": [[3, 3, 1], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
}
SCSE = {"encoder_attention": ["none", "scse", "scse", "scse"], "decoder_attention": ["none", "scse", "scse"]}
MONAI_ISO = {
    "arch": "monai_attention_unet",
    "format_version": 1,
    "in_channels": 2,
    "out_channels": 3,
    "channels": [4, 8, 16, 32],
    "strides": [2, 2, 2],
    "kernel_size": 3,
    "up_kernel_size": 3,
    "dropout": 0.0,
}
S_ISO = [(32, 32, 16), (8, 8, 4), (4, 4, 2)]  # strided stem: output scales 4x4x4 and 8x8x8
S_ANISO = [(32, 32, 16), (8, 8, 8), (4, 4, 4)]  # the third axis pooled from the second step on
F_ISO = [(32, 32, 16), (16, 16, 8), (8, 8, 4)]  # full-resolution stem: scales 2 and 4
F_ANISO = [(32, 32, 16), (16, 16, 16), (8, 8, 8)]

#: Per preset and plan: (config, or its difference from ag_unet's; parameters; training output sizes), widths
#: WIDTHS; then the parameters at the plan's default widths (16, 32, 64, 128) and of build_model(name, 1, 3).
PINNED: dict[str, dict[str, Any]] = {
    "unet": {
        "iso": ({"gates": False}, 74369, S_ISO),
        "aniso": ({"gates": False}, 74321, S_ANISO),
        "default_widths": 1181609,
        "build_model": 4753875,
    },
    "ag_unet": {
        "iso": ({}, 75184, S_ISO),
        "aniso": ({}, 75136, S_ANISO),
        "default_widths": 1194268,
        "build_model": 4805575,
    },
    "ag_unet_fullres": {
        "iso": (FULL_ISO, 66044, F_ISO),
        "aniso": (FULL_ANISO, 65868, F_ANISO),
        "default_widths": 1049228,
        "build_model": 4261175,
    },
    "unet_fullres": {
        "iso": ({**FULL_ISO, "gates": False}, 64333, F_ISO),
        "aniso": ({**FULL_ANISO, "gates": False}, 64189, F_ANISO),
        "default_widths": 1022233,
        "build_model": 4152131,
    },
    "ag_unet_scse": {
        "iso": (SCSE, 77053, S_ISO),
        "aniso": (SCSE, 77005, S_ANISO),
        "default_widths": 1221697,
        "build_model": 4915886,
    },
    "ag_unet_cbam": {
        "iso": ({"encoder_attention": ["none", "cbam", "cbam", "cbam"]}, 78670, S_ISO),
        "aniso": ({"encoder_attention": ["none", "cbam", "cbam", "cbam"]}, 78622, S_ANISO),
        "default_widths": 1218166,
        "build_model": 4896079,
    },
    "ag_unet_mhsa": {
        "iso": ({"encoder_attention": ["none", "none", "none", "mhsa"]}, 84624, S_ISO),
        "aniso": ({"encoder_attention": ["none", "none", "none", "mhsa"]}, 84576, S_ANISO),
        "default_widths": 1330332,
        "build_model": 5339847,
    },
    "ag_unet_wsa": {
        "iso": ({"encoder_attention": ["none", "wsa", "wsa", "none"]}, 78680, S_ISO),
        "aniso": ({"encoder_attention": ["none", "wsa", "wsa", "none"]}, 78632, S_ANISO),
        "default_widths": 1238972,
        "build_model": 4850279,
    },
    "monai_attention_unet": {
        "iso": (MONAI_ISO, 92301, [(32, 32, 16)]),  # no deep supervision
        "aniso": None,  # isotropic strides only (ConfigError)
        "default_widths": 1467015,
        "build_model": 5909147,
    },
}


def test_every_built_in_preset_is_pinned() -> None:
    assert list(PINNED) == [p.name for p in BUILTIN_PRESETS] == list_models()[: len(BUILTIN_PRESETS)]


@pytest.mark.parametrize("name", list(PINNED))
@pytest.mark.parametrize("which", ["iso", "aniso"])
def test_each_preset_builds_for_a_plan_as_before(name: str, which: str) -> None:
    p = plan() if which == "iso" else plan(ANISO, ANISO_K)
    pinned = PINNED[name][which]
    if pinned is None:
        with pytest.raises(ConfigError, match="isotropic strides only"):
            build_network(name, p, WIDTHS)
        return
    fields, params, sizes = pinned
    expected = fields if "arch" in fields else {**(AG_ISO if which == "iso" else AG_ANISO), **fields}
    net = build_network(name, p, WIDTHS)
    assert net.config == expected
    assert count_parameters(net) == params
    x = torch.randn(*PATCH)
    with torch.no_grad():
        out = net.train()(x)
        outs = out if isinstance(out, (list, tuple)) else [out]
        assert [tuple(o.shape) for o in outs] == [(1, 3, *s) for s in sizes]
        assert net.eval()(x).shape == (1, 3, 32, 32, 16)
    # a model file stores exactly this config: it rebuilds the same network without the preset
    rebuilt = build_from_config(expected)
    assert rebuilt.config == expected and count_parameters(rebuilt) == params


@pytest.mark.parametrize("name", list(PINNED))
def test_each_preset_keeps_its_default_sizes(name: str) -> None:
    with torch.device("meta"):
        from_plan = build_network(name, plan())
        default = build_model(name, 1, 3)
    assert from_plan.config["channels"] == [16, 32, 64, 128]  # base width 16 doubled per plan stage
    assert count_parameters(from_plan) == PINNED[name]["default_widths"]
    assert count_parameters(default) == PINNED[name]["build_model"]


@pytest.fixture
def register() -> Iterator[Callable[[Preset], Preset]]:
    """``register(preset)`` for one test: the preset is removed from the table afterwards."""
    added: list[str] = []

    def add(preset: Preset) -> Preset:
        register_preset(preset)
        added.append(preset.name)
        return preset

    yield add
    for name in added:
        PRESETS.pop(name, None)


def test_a_preset_added_as_data_builds_everywhere(register, tmp_path) -> None:
    register(
        Preset(
            "ag_unet_test_res",
            "attention_gated_unet",
            "test: residual blocks, narrow gates, scSE at the bottleneck",
            {
                "gates": True,
                "gate_reduction": 4,
                "residual": True,
                "channels": (8, 16, 32, 64, 128),
                "encoder_attention": {"last": "scse", "rest": "none"},
            },
        )
    )
    assert "ag_unet_test_res" in list_models()
    cfg = build_model("ag_unet_test_res", 1, 2).config
    assert cfg["channels"] == [8, 16, 32, 64, 128] and cfg["residual"] is True and cfg["gate_reduction"] == 4
    assert cfg["encoder_attention"] == ["none", "none", "none", "none", "scse"]

    p = plan(ANISO, ANISO_K)
    net = build_network("ag_unet_test_res", p)  # the family's plan rules, the preset's own base width
    expected = {
        **AG_ANISO,
        "channels": [8, 16, 32, 64],  # base 8 doubled over the plan's four stages
        "residual": True,
        "gate_reduction": 4,
        "encoder_attention": ["none", "none", "none", "scse"],  # the selector follows the plan's depth
    }
    assert net.config == expected
    ag = build_network("ag_unet", p, widths=(8, 16, 32, 64), options={"residual": True, "gate_reduction": 4})
    assert count_parameters(net) > count_parameters(ag)  # the bottleneck scSE is built, not ignored

    torch.manual_seed(0)
    with torch.no_grad():
        for param in net.parameters():
            param.add_(0.01 * torch.randn_like(param))
    path = save_model(tmp_path / "model.pt", net, p)
    x = torch.randn(1, 2, 19, 21, 11)
    with torch.no_grad():
        before = net.eval()(x)
    PRESETS.pop("ag_unet_test_res")  # a model file needs no preset: its config names the family and every field
    loaded = load_model(path)
    assert loaded.model.config == expected
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), before, rtol=0, atol=0)


def test_a_preset_of_the_monai_family_is_data_too(register) -> None:
    register(Preset("monai_test_narrow", "monai_attention_unet", "test: narrow MONAI", {"channels": (2, 4, 8)}))
    net = build_network("monai_test_narrow", plan())
    assert net.config == {**MONAI_ISO, "channels": [2, 4, 8, 16], "strides": [2, 2, 2]}
    assert count_parameters(build_model("monai_test_narrow", 1, 2)) < count_parameters(
        build_model("monai_attention_unet", 1, 2, channels=(4, 8, 16))
    )
    with pytest.raises(ConfigError, match="monai_test_narrow takes isotropic strides only"):
        network_overrides("monai_test_narrow", plan(ANISO, ANISO_K))
    table = models_table(measure=False, in_channels=1, out_channels=2, window=16)
    row = next(line for line in table.splitlines() if line.startswith("monai_test_narrow "))
    assert row.endswith("test: narrow MONAI")


def test_a_bad_preset_is_refused_when_registered(register) -> None:
    with pytest.raises(ModelConfigError, match="preset 'ag_unet' exists already"):
        register(Preset("ag_unet", "attention_gated_unet", "again"))
    with pytest.raises(ModelConfigError, match="unknown family 'vnet'; known: 'attention_gated_unet', 'monai"):
        register(Preset("vnet", "vnet", "not a family"))
    with pytest.raises(ModelConfigError, match="preset 'ag_unet_bad': unknown model options \\['width'\\]"):
        register(Preset("ag_unet_bad", "attention_gated_unet", "a typo", {"width": 8}))
    with pytest.raises(ModelConfigError, match="preset 'ag_unet_deep': encoder_attention: stage 7 does not exist"):
        register(
            Preset("ag_unet_deep", "attention_gated_unet", "", {"encoder_attention": {"7": "wsa", "rest": "none"}})
        )
    with pytest.raises(ModelConfigError, match="\\['in_channels'\\] cannot be preset"):
        Preset("ag_unet_rgb", "attention_gated_unet", "", {"in_channels": 3})
    with pytest.raises(ModelConfigError, match="without spaces"):
        Preset("ag unet", "attention_gated_unet", "")
    assert not {"ag_unet_bad", "ag_unet_deep", "vnet"} & set(PRESETS)  # nothing half-registered
    preset = get_preset("ag_unet")
    with pytest.raises(TypeError):
        preset.defaults["gates"] = False
    with pytest.raises(ModelConfigError, match="unknown model 'vnet'; available: unet, ag_unet"):
        get_preset("vnet")
