"""Presets by name, rebuilding from a config, the ``medattn models`` table and the cost helpers behind it."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from medattn.cli import main
from medattn.models import PRESETS, build_from_config, build_model, list_models, model_from_checkpoint, models_table
from medattn.models.config import ModelConfigError
from medattn.models.flops import count_flops, count_parameters, flops_per_voxel, time_forward
from medattn.models.registry import expand_stages

REQUIRED = {"unet", "ag_unet", "ag_unet_scse", "ag_unet_mhsa", "monai_attention_unet"}
SMALL = {"channels": (4, 8, 16, 32)}


def test_required_presets_exist() -> None:
    assert set(list_models()) >= REQUIRED


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_builds_runs_and_rebuilds_from_json(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, 2, 3, **SMALL).eval()
    x = torch.randn(1, 2, 9, 10, 11)
    y = model(x)
    assert y.shape == (1, 3, 9, 10, 11)
    doc = json.loads(json.dumps(model.config))
    assert doc["in_channels"] == 2 and doc["out_channels"] == 3
    rebuilt = model_from_checkpoint({"config": doc, "state_dict": model.state_dict()}).eval()
    torch.testing.assert_close(rebuilt(x), y, rtol=0, atol=0)


def test_presets_differ_in_what_they_say() -> None:
    cfg = {n: build_model(n, 1, 2, **SMALL).config for n in ("unet", "ag_unet", "ag_unet_scse", "ag_unet_mhsa")}
    assert cfg["unet"]["gates"] is False and cfg["ag_unet"]["gates"] is True
    assert {k: v for k, v in cfg["unet"].items() if k != "gates"} == {
        k: v for k, v in cfg["ag_unet"].items() if k != "gates"
    }  # the baseline is the same network without gates
    assert cfg["ag_unet_mhsa"]["encoder_attention"] == ["none", "none", "none", "mhsa"]  # follows the depth
    assert cfg["ag_unet_scse"]["encoder_attention"] == ["none", "scse", "scse", "scse"]
    assert cfg["ag_unet_scse"]["decoder_attention"] == ["none", "scse", "scse"]
    assert build_model("ag_unet", 1, 2).config["norm"] == "instance"
    full = {n: build_model(n, 1, 2, **SMALL).config for n in ("unet_fullres", "ag_unet_fullres")}
    assert full["unet_fullres"]["gates"] is False
    assert {k: v for k, v in full["unet_fullres"].items() if k != "gates"} == {
        k: v for k, v in full["ag_unet_fullres"].items() if k != "gates"
    }  # and the full-resolution stem's baseline likewise


def test_stage_selectors_follow_the_depth_and_report_misuse() -> None:
    assert expand_stages({"first": 1, "last": 3, "rest": 2}, 4, "x") == (1, 2, 2, 3)
    assert expand_stages({"1": "wsa", "-1": "mhsa", "rest": "none"}, 3, "x") == ("none", "wsa", "mhsa")
    assert expand_stages((1, 2), 2, "x") == (1, 2)  # explicit values pass through
    full = build_model("ag_unet_fullres", 1, 2, channels=(4, 8, 16)).config
    assert full["strides"] == [[1, 1, 1], [2, 2, 2], [2, 2, 2]] and full["decoder_convs"] == [0, 1]
    with pytest.raises(ModelConfigError, match="'rest'"):
        expand_stages({"last": "mhsa"}, 3, "encoder_attention")
    with pytest.raises(ModelConfigError, match="stage numbers"):
        expand_stages({"deep": "wsa", "rest": "none"}, 3, "encoder_attention")
    with pytest.raises(ModelConfigError, match="stage 2 does not exist in a network with 2"):
        build_model("ag_unet_wsa", 1, 2, channels=(4, 8))


def test_unknown_names_and_options_are_reported() -> None:
    with pytest.raises(ModelConfigError, match="unknown model 'vnet'; available: unet, ag_unet"):
        build_model("vnet", 1, 2)
    with pytest.raises(ModelConfigError, match="unknown model options \\['width'\\]"):
        build_model("ag_unet", 1, 2, width=8)
    with pytest.raises(ModelConfigError, match="unknown options"):
        build_model("monai_attention_unet", 1, 2, gates=True)
    with pytest.raises(ModelConfigError, match="strides must be a list of integers"):
        build_model("monai_attention_unet", 1, 2, strides=2)
    with pytest.raises(ModelConfigError, match="unknown arch"):
        build_from_config({"arch": "swin_unetr"})
    with pytest.raises(ModelConfigError, match="'config' and 'state_dict'"):
        model_from_checkpoint({"state_dict": {}})


def test_monai_wrapper_pads_and_refuses_attention_read_out() -> None:
    model = build_model("monai_attention_unet", 1, 2, channels=(4, 8, 16)).eval()
    assert model.required_multiple == (4, 4, 4)
    assert model(torch.randn(1, 1, 5, 6, 7)).shape == (1, 2, 5, 6, 7)
    with pytest.raises(ValueError, match="does not expose"):
        model(torch.randn(1, 1, 4, 4, 4), return_attention=True)


def test_flop_count_matches_the_convolution_formula() -> None:
    conv = torch.nn.Conv3d(2, 5, (1, 3, 3), padding=(0, 1, 1))
    assert count_flops(conv, (1, 2, 4, 6, 8)) == 2 * 2 * 5 * 9 * 4 * 6 * 8
    model = build_model(
        "unet",
        1,
        2,
        channels=(4, 8),
        strides=(1, 2),
        encoder_convs=(1, 1),
        decoder_convs=(0,),
        fusion="add",
        upsample="transposed",
    )
    # stem 1->4 (k3) at 8^3, 4->8 (k3, stride 2) at 4^3, transposed 8->4 (k2) at 8^3, head 4->2 at 8^3
    expected = 2 * (27 * 4 * 512 + 27 * 4 * 8 * 64 + 8 * 4 * 512 + 4 * 2 * 512)
    assert count_flops(model, (1, 1, 8, 8, 8)) == expected
    assert flops_per_voxel(model, 1, 8) == expected / 512
    assert next(model.parameters()).device.type == "cpu"  # counting happened on a copy


def test_gates_add_little_flops_at_the_default_widths() -> None:
    ag, plain = build_model("ag_unet", 1, 3), build_model("unet", 1, 3)
    assert flops_per_voxel(ag, 1, 32) / flops_per_voxel(plain, 1, 32) < 1.15


def test_time_forward_restores_the_mode_and_reports_runs() -> None:
    model = build_model("unet", 1, 2, channels=(4, 8)).train()
    t = time_forward(model, (1, 1, 8, 8, 8), repeats=2, warmup=0)
    assert t.runs == 2 and 0 < t.low <= t.median <= t.high
    assert model.training
    assert count_parameters(model) == count_parameters(model, trainable_only=True) > 0


def test_models_command_lists_every_preset_with_its_cost(capsys) -> None:
    assert main(["models", "--window", "16", "--out-channels", "3", "--quiet"]) == 0
    table = capsys.readouterr().out
    for name in PRESETS:
        assert name in table
    row = next(line for line in table.splitlines() if line.startswith("ag_unet "))
    model = build_model("ag_unet", 1, 3)
    assert f"{count_parameters(model) / 1e6:.2f}M" in row
    assert f"{flops_per_voxel(model, 1, 16) / 1e3:.1f}" in row.split()
    assert "ms/window" not in table and "window 16^3" in table
    with pytest.raises(ModelConfigError, match="window"):
        models_table(measure=False, in_channels=1, out_channels=3, window=0)


def test_checkpoint_round_trip_keeps_weights_exactly() -> None:
    model = build_model("ag_unet_mhsa", 1, 2, **SMALL)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    rebuilt = model_from_checkpoint({"config": model.config, "state_dict": model.state_dict()})
    for (name, a), (_, b) in zip(model.state_dict().items(), rebuilt.state_dict().items()):
        assert torch.equal(a, b), name
    assert F.mse_loss(rebuilt.eval()(torch.ones(1, 1, 8, 8, 8)), model.eval()(torch.ones(1, 1, 8, 8, 8))) == 0
