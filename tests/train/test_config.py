"""The run config, its command-line options and YAML pipelines, and the precision choice."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from medattn.cli import _apply_config, build_parser
from medattn.commands.train import train_config
from medattn.errors import ConfigError
from medattn.train import precision as prec
from medattn.train.config import TrainConfig
from medattn.train.optim import make_optimizer, make_poly_schedule, poly_lr

REPO = Path(__file__).resolve().parents[2]


def parse(argv: list[str]) -> TrainConfig:
    parser = build_parser()
    args = parser.parse_args(argv)
    _apply_config(parser, argv, args)
    return train_config(args)


def test_config_resolves_defaults_and_round_trips(tmp_path: Path) -> None:
    cfg = TrainConfig(widths="8,16,32", patch_size=[24, 32, 24], optimizer="sgd", fold=1, augment="none")
    assert cfg.widths == (8, 16, 32) and cfg.patch_size == (24, 32, 24)
    assert cfg.lr == 1e-2 and cfg.weight_decay == 3e-5  # SGD defaults, written into the config
    assert cfg.fold == "1"
    assert cfg.augment["flip_prob"] == 0.0 and "rotate_deg" in cfg.augment
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert TrainConfig.load(cfg.save(tmp_path / "config.json")) == cfg
    assert TrainConfig().lr == 1e-3


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"optimizer": "adam"}, "optimizer"),
        ({"epochs": 0}, "epochs"),
        ({"lr": 0.0}, "lr"),
        ({"fold": "7"}, "fold"),
        ({"widths": "8"}, "widths"),
        ({"patch_size": "24,32"}, "patch_size"),
        ({"batch_size": 3, "samples_per_volume": 2}, "multiple"),
        ({"augment": {"flip_probability": 0.5}}, "augmentation"),
        ({"val_overlap": 1.0}, "val_overlap"),
    ],
)
def test_invalid_options_name_the_option(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**kwargs)
    with pytest.raises(ConfigError, match="unknown training option"):
        TrainConfig.from_dict({"learning_rate": 0.1})


def test_command_line_and_yaml_fill_the_config(tmp_path: Path) -> None:
    yaml_file = tmp_path / "t.yaml"
    yaml_file.write_text("lr: 0.005\nwidths: [8, 16, 32]\nval_every: 3\nmodel_options: {norm: group}\nepochs: 9\n")
    cfg = parse(
        ["train", "DATA", "--out", "RUN", "--config", str(yaml_file), "--epochs", "4", "--patch-size", "16,16,16"]
    )
    assert (cfg.lr, cfg.widths, cfg.val_every, cfg.epochs) == (0.005, (8, 16, 32), 3, 4)  # the flag wins
    assert cfg.model_options == {"norm": "group"} and cfg.patch_size == (16, 16, 16)
    assert cfg.seed == 0 and cfg.workers == 0 and cfg.model == "ag_unet"


@pytest.mark.parametrize("name", ["train.yaml", "hippocampus.yaml"])
def test_shipped_pipelines_are_valid_train_options(name: str) -> None:
    cfg = parse(["train", "DATA", "--out", "RUN", "--config", str(REPO / "pipelines" / name)])
    assert cfg.epochs >= 1
    if name == "hippocampus.yaml":
        assert cfg.precision == "auto" and cfg.fold is not None


def test_poly_schedule_follows_the_closed_form() -> None:
    opt = make_optimizer(torch.nn.Linear(2, 2), "sgd", lr=0.01, weight_decay=0.0, momentum=0.99)
    assert opt.param_groups[0]["nesterov"] is True
    sched = make_poly_schedule(opt, epochs=5, power=0.9)
    seen = []
    for _ in range(5):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([poly_lr(0.01, e, 5) for e in range(5)])
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_precision_never_autocasts_on_a_cpu_without_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prec, "cpu_has_native_bf16", lambda: False)
    assert prec.resolve_precision("auto", "cpu").dtype is None
    with pytest.raises(ConfigError, match="native"):
        prec.resolve_precision("bf16", "cpu")
    with pytest.raises(ConfigError, match="CUDA"):
        prec.resolve_precision("fp16", "cpu")
    monkeypatch.setattr(prec, "cpu_has_native_bf16", lambda: True)
    assert prec.resolve_precision("auto", "cpu").dtype is None  # still off by default
    assert prec.resolve_precision("bf16", "cpu").dtype == torch.bfloat16


def test_precision_on_cuda_prefers_bf16_then_fp16_with_scaling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert prec.resolve_precision("auto", "cuda").dtype == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    p = prec.resolve_precision("auto", "cuda")
    assert p.dtype == torch.float16 and p.scale_grads
    with pytest.raises(ConfigError):
        prec.resolve_precision("bf16", "cuda")


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_fused_optimiser_takes_the_same_steps_as_pytorchs_reference_loop(name: str) -> None:
    """``make_optimizer`` uses PyTorch's fused kernel on the CPU (a third of the per-tensor loop's time); ten steps
    of it on a small network end at the weights of the per-tensor loop (``foreach=False``) within float32
    rounding, and its state dict resumes in the reference optimiser."""
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3), torch.nn.GroupNorm(2, 4), torch.nn.Conv3d(4, 2, 1))
    b = copy.deepcopy(a)
    fused = make_optimizer(a, name, lr=0.01, weight_decay=0.01, momentum=0.9)
    assert fused.param_groups[0]["fused"] is True
    cls = torch.optim.AdamW if name == "adamw" else torch.optim.SGD
    extra = {} if name == "adamw" else {"momentum": 0.9, "nesterov": True}
    ref = cls(b.parameters(), lr=0.01, weight_decay=0.01, foreach=False, **extra)
    x = torch.randn(2, 1, 6, 6, 6)
    for _ in range(10):
        for net, opt in ((a, fused), (b, ref)):
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)
    ref.load_state_dict(fused.state_dict())
    assert len(ref.state) == len(fused.state)
