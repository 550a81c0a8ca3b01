"""Benchmark: what the Avalanche-based :class:`~medattn.continual.template.SegmentationStrategy` costs over a plain
PyTorch training loop doing the same work.

    .venv/bin/python bench/bench_train.py            # sized for about 2 minutes on 2 idle cores
    .venv/bin/python bench/bench_train.py --quick    # smaller patches, fewer rounds

Both contenders train the same network object with the same optimiser object (AdamW) on the same mini-batches
(identical tensors, in the same order: a fixed set of random patches, not shuffled), with the same loss
(:class:`~medattn.train.losses.DeepSupervisionLoss`), the same gradient clipping (norm 12, the strategy's default)
and float32 throughout (also on a GPU, where the strategy would otherwise autocast):

* ``avalanche``: ``strategy.train(experience, eval_streams=[], shuffle=False)`` on a one-experience stream built as
  :func:`medattn.continual.scenario.domain_scenario` builds them (an ``AvalancheDataset`` of
  :class:`~medattn.continual.collate.SampleGroup` items with task labels, so Avalanche's task-balanced loader),
  with the default evaluator (training loss and epoch Dice); each call is one epoch, so it also pays the
  per-experience set-up (data loader, model and optimiser checks, plugin callbacks) once;
* ``plain``: ``for batch in DataLoader(SampleGroup(items), collate_fn=collate_segmentation)``: ``zero_grad``,
  forward, loss, backward, ``clip_grad_norm_``, ``step``.

The network is the ``ag_unet`` preset (widths 16-256) with two deep-supervision outputs (``min(2, stages - 2)``, as
``medattn train`` and ``medattn adapt`` set it). Before timing, both contenders train identical copies
for one epoch and the results are compared (final weights and per-step losses), which checks that the two loops
do the same computation. Then the contenders alternate, one epoch each per round; the ratio avalanche / plain
seconds is taken per round, on the wall clock and on this process's CPU time.

Goal (issue 7): avalanche / plain <= 1.05.
"""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (
    Stats,
    common_parser,
    finish,
    format_table,
    headline,
    paired_ratio,
    start,
    synchronizer,
    time_interleaved_clocks,
)

TARGET_OVERHEAD = 1.05
CLASSES = ("background", "a", "b")
GRAD_CLIP = 12.0

#: Per mode: patch edge, mini-batches per epoch, volumes per mini-batch, rounds, widths.
SETTINGS: dict[str, dict[str, Any]] = {
    "full": {"patch": 64, "batches": 6, "batch": 2, "rounds": 7, "channels": (16, 32, 64, 128, 256)},
    "quick": {"patch": 48, "batches": 4, "batch": 2, "rounds": 3, "channels": (16, 32, 64, 128, 256)},
    "smoke": {"patch": 16, "batches": 2, "batch": 2, "rounds": 1, "channels": (4, 8, 16)},
}


def make_items(n: int, patch: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` training samples as MONAI pipelines yield them: ``image`` (1, P, P, P) float32 and ``label``
    (1, P, P, P) float32 class indices, plus ``case_id``."""
    g = torch.Generator().manual_seed(seed)
    shape = (1, patch, patch, patch)
    return [
        {
            "image": torch.randn(shape, generator=g),
            "label": torch.randint(0, len(CLASSES), shape, generator=g).float(),
            "case_id": f"case{i}",
        }
        for i in range(n)
    ]


def experience(items: list[dict[str, Any]], patch: int) -> Any:
    """A one-experience Avalanche train stream over ``items``, built the way ``domain_scenario`` builds one."""
    from avalanche.benchmarks import CLScenario
    from avalanche.benchmarks.scenarios.generic_scenario import EagerCLStream
    from avalanche.benchmarks.scenarios.task_aware import with_task_labels

    from medattn.continual.scenario import DomainExperience, avalanche_dataset

    exp = DomainExperience(
        dataset=avalanche_dataset(items),  # type: ignore[arg-type]  # a list is a map-style dataset
        domain="bench",
        split="train",
        case_ids=[str(it["case_id"]) for it in items],
        patch_size=(patch, patch, patch),
    )
    return with_task_labels(CLScenario([EagerCLStream("train", [exp])])).train_stream[0]


def make_model(channels: tuple[int, ...]) -> nn.Module:
    from medattn.models import build_model

    torch.manual_seed(0)
    return build_model("ag_unet", 1, len(CLASSES), channels=channels, deep_supervision=min(2, len(channels) - 2))


def avalanche_epoch(
    model: nn.Module, opt: torch.optim.Optimizer, items: list[dict[str, Any]], cfg: dict[str, Any], device: Any
) -> tuple[Callable[[], None], Any]:
    """One epoch of the strategy as a zero-argument call, and the strategy."""
    from medattn.continual.template import SegmentationStrategy
    from medattn.train.losses import DeepSupervisionLoss

    strategy = SegmentationStrategy(
        model=model,
        optimizer=opt,
        criterion=DeepSupervisionLoss(),
        window=(cfg["patch"],) * 3,
        class_names=CLASSES,
        grad_clip=GRAD_CLIP,
        precision="fp32",  # the plain loop's; "auto" would autocast on a GPU
        train_mb_size=cfg["batch"],
        train_epochs=1,
        device=device,
    )
    exp = experience(items, cfg["patch"])
    return (lambda: strategy.train(exp, eval_streams=[], shuffle=False)), strategy


def plain_epoch(
    model: nn.Module, opt: torch.optim.Optimizer, items: list[dict[str, Any]], cfg: dict[str, Any], device: Any
) -> Callable[[], list[float]]:
    """One epoch of the plain loop as a zero-argument call returning the per-step losses."""
    from torch.utils.data import DataLoader

    from medattn.continual.collate import SampleGroup, collate_segmentation
    from medattn.train.losses import DeepSupervisionLoss

    loss_fn = DeepSupervisionLoss()
    loader = DataLoader(SampleGroup(items), batch_size=cfg["batch"], shuffle=False, collate_fn=collate_segmentation)

    def epoch() -> list[float]:
        model.train()
        losses = []
        for batch in loader:
            x, y = batch[0].to(device), batch[1].to(device)
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
            opt.step()
            losses.append(loss.detach())
        return [float(v) for v in losses]

    return epoch


def same_computation(cfg: dict[str, Any], items: list[dict[str, Any]], device: Any) -> dict[str, Any]:
    """Train identical copies for one epoch with each loop; compare the losses and the final weights."""
    from avalanche.core import SupervisedPlugin

    class Losses(SupervisedPlugin):
        def __init__(self) -> None:
            super().__init__()
            self.values: list[float] = []

        def after_training_iteration(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
            self.values.append(float(strategy.loss.detach()))

    base = make_model(cfg["channels"]).to(device)
    models = {k: copy.deepcopy(base) for k in ("avalanche", "plain")}
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-3) for k, m in models.items()}
    run_a, strategy = avalanche_epoch(models["avalanche"], opts["avalanche"], items, cfg, device)
    recorder = Losses()
    strategy.plugins.append(recorder)
    run_a()
    run_p = plain_epoch(models["plain"], opts["plain"], items, cfg, device)
    plain_losses = run_p()
    diff = max(
        float((a - b).abs().max())
        for a, b in zip(models["avalanche"].state_dict().values(), models["plain"].state_dict().values())
        if a.is_floating_point()
    )
    loss_diff = max(abs(a - b) for a, b in zip(recorder.values, plain_losses))
    return {
        "losses_avalanche": recorder.values,
        "losses_plain": plain_losses,
        "max_loss_difference": loss_diff,
        "max_weight_difference": diff,
        "steps_equal": len(recorder.values) == len(plain_losses),
    }


def main(argv: list[str] | None = None) -> int:
    p = common_parser(__doc__, "runs/bench/bench_train.json")
    args = p.parse_args(argv)

    setup = start(args)
    device, mode, dev_name, env = setup.device, setup.mode, setup.device_name, setup.env
    cfg = SETTINGS[mode]
    rounds = args.rounds or cfg["rounds"]
    items = make_items(cfg["batches"] * cfg["batch"], cfg["patch"])
    print(f"same computation: one epoch of {cfg['batches']} steps with each loop on identical copies ...", flush=True)
    check = same_computation(cfg, items, device)
    print(
        f"  steps equal: {check['steps_equal']}; largest loss difference {check['max_loss_difference']:.2e}, "
        f"weight difference {check['max_weight_difference']:.2e}"
    )

    model = make_model(cfg["channels"]).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    run_a, _ = avalanche_epoch(model, opt, items, cfg, device)
    run_p = plain_epoch(model, opt, items, cfg, device)
    print(
        f"timing: patch {cfg['patch']}^3, batch {cfg['batch']}, {cfg['batches']} steps per epoch, {rounds} "
        "interleaved rounds ...",
        flush=True,
    )
    raw = time_interleaved_clocks({"avalanche": run_a, "plain": run_p}, rounds=rounds, sync=synchronizer(device))
    wall = paired_ratio(raw["wall"], "avalanche", "plain")
    cpu = paired_ratio(raw["cpu"], "avalanche", "plain")
    step = {k: Stats.of([t / cfg["batches"] for t in v]) for k, v in raw["wall"].items()}
    rows = [[k, f"{s.median * 1e3:.0f}", f"{s.best * 1e3:.0f}"] for k, s in step.items()]
    print()
    print(format_table(["loop", "median ms/step", "best ms/step"], rows))
    per_step_ms = step["avalanche"].median - step["plain"].median
    print(
        f"avalanche / plain: wall {wall.median:.3f} [{wall.q1:.3f}, {wall.q3:.3f}], CPU time {cpu.median:.3f} "
        f"[{cpu.q1:.3f}, {cpu.q3:.3f}] (goal <= {TARGET_OVERHEAD}); difference of medians {per_step_ms * 1e3:+.1f} "
        "ms per step"
    )
    head = headline(
        "training",
        "Avalanche SegmentationStrategy",
        "plain PyTorch loop",
        "time ratio",
        wall,
        f"<= {TARGET_OVERHEAD}",
        f"CPU-time {cpu.median:.3f}; patch {cfg['patch']}^3 x{cfg['batch']}, {cfg['batches']} steps/epoch; "
        f"same losses within {check['max_loss_difference']:.1e}",
        dev_name,
    )
    doc = {
        "environment": env,
        "mode": mode,
        "device": dev_name,
        "settings": cfg,
        "rounds": rounds,
        "same_computation": check,
        "seconds": raw,
        "ratio_wall": wall,
        "ratio_cpu": cpu,
        "headlines": [head],
    }
    finish(args.out, doc)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
