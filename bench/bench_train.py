"""Benchmark: what the Avalanche-based :class:`~medattn.continual.template.SegmentationStrategy` costs over a plain
PyTorch training loop doing the same work.

    .venv/bin/python bench/bench_train.py            # sized for about 2 minutes on 2 idle cores
    .venv/bin/python bench/bench_train.py --quick    # smaller patches, fewer rounds

Both contenders train the same network object with the same optimiser object (``medattn adapt``'s: fused AdamW,
:func:`~medattn.train.optim.make_optimizer`) on the same mini-batches
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

Goal (issue 7): avalanche / plain <= 1.05. Then :func:`phase_breakdown` splits each loop's time into the steps
themselves and what lies between them (where the Avalanche loop's extra time goes).

**The training step itself** (issue 16): ``medattn train``'s step on ``ag_unet_fullres`` (widths 16-128, two
deep-supervision outputs, batch 2, patch 40x56x40 as the hippocampus plan gives, float32, AdamW, the same loss and
clipping) with medattn's group/instance-norm backward and gated skip addition (:mod:`medattn.models.norm`), its
trilinear upsampling by 2 (:mod:`medattn.models.resample`) and the fused AdamW of
:func:`medattn.train.optim.make_optimizer` against the same step with PyTorch's ``native_group_norm_backward``,
in-place ``addcmul_``, ``F.interpolate`` and AdamW's default per-tensor loop, the step as it was before.
Identical copies train on identical batches; the per-step losses of the two are compared (equal numerics within
float32 rounding), then the two alternate, a few steps each per round, and the ratio before / after is taken per
round. Goal: >= 1.5. The in-process comparisons run after :func:`medattn.runtime.retain_freed_memory` (as ``medattn
train`` and ``adapt`` run), so they compare code; :func:`step_as_run` then compares the step as it was (old code,
glibc's default allocator) with the step as ``medattn train`` runs it now, in fresh processes (CPU only). Where the
CPU computes bfloat16 natively (``avx512_bf16`` or ``amx_bf16``), bf16 autocast of
the new step is timed too (a ratio against float32, no goal: measured, never assumed).
"""

from __future__ import annotations

import copy
import math
import os
import sys
import time
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


TARGET_STEP_SPEEDUP = 1.5
#: Per mode, the training-step comparison: patch, batch, widths, steps per timed call, rounds, steps compared.
STEP_SETTINGS: dict[str, dict[str, Any]] = {
    "full": {"patch": (40, 56, 40), "batch": 2, "channels": (16, 32, 64, 128), "steps": 3, "rounds": 7, "check": 8},
    "quick": {"patch": (40, 56, 40), "batch": 2, "channels": (16, 32, 64, 128), "steps": 2, "rounds": 3, "check": 4},
    "smoke": {"patch": (16, 16, 16), "batch": 2, "channels": (4, 8, 16), "steps": 1, "rounds": 1, "check": 2},
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
    model: nn.Module,
    opt: torch.optim.Optimizer,
    items: list[dict[str, Any]],
    cfg: dict[str, Any],
    device: Any,
    stamps: dict[str, list[float]] | None = None,
) -> Callable[[], list[float]]:
    """One epoch of the plain loop as a zero-argument call returning the per-step losses; with ``stamps``, each
    step's start and end clock are appended to its ``"start"`` and ``"end"`` lists."""
    import time

    from torch.utils.data import DataLoader

    from medattn.continual.collate import SampleGroup, collate_segmentation
    from medattn.train.losses import DeepSupervisionLoss

    loss_fn = DeepSupervisionLoss()
    loader = DataLoader(SampleGroup(items), batch_size=cfg["batch"], shuffle=False, collate_fn=collate_segmentation)

    def epoch() -> list[float]:
        model.train()
        losses = []
        for batch in loader:
            if stamps is not None:
                stamps["start"].append(time.perf_counter())
            x, y = batch[0].to(device), batch[1].to(device)
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
            opt.step()
            losses.append(loss.detach())
            if stamps is not None:
                stamps["end"].append(time.perf_counter())
        return [float(v) for v in losses]

    return epoch


def same_computation(cfg: dict[str, Any], items: list[dict[str, Any]], device: Any) -> dict[str, Any]:
    """Train identical copies for one epoch with each loop; compare the losses and the final weights."""
    from avalanche.core import SupervisedPlugin

    from medattn.train.optim import make_optimizer

    class Losses(SupervisedPlugin):
        def __init__(self) -> None:
            super().__init__()
            self.values: list[float] = []

        def after_training_iteration(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
            self.values.append(float(strategy.loss.detach()))

    base = make_model(cfg["channels"]).to(device)
    models = {k: copy.deepcopy(base) for k in ("avalanche", "plain")}
    opts = {k: make_optimizer(m, "adamw", 1e-3, 1e-2) for k, m in models.items()}
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


def phase_breakdown(
    model: nn.Module, opt: torch.optim.Optimizer, items: list[dict[str, Any]], cfg: dict[str, Any], device: Any
) -> dict[str, dict[str, float]]:
    """Where the Avalanche loop's extra time per step goes: per loop, the median milliseconds inside a step
    (``zero_grad`` to ``optimizer.step``; for Avalanche ``before_training_iteration`` to the first plugin's
    ``after_training_iteration``) and between steps (the rest: the evaluator's loss and training-Dice updates, the
    next mini-batch), over ``cfg["rounds"]`` interleaved epochs after one warm-up epoch each; and the median time
    of the training Dice's update (:class:`~medattn.continual.plugin_metrics.EpochDice`) on one step's output.
    Meaningful on the CPU, where every call returns when its work is done (on a GPU the stamps do not wait for
    queued kernels)."""
    import statistics
    import time

    from avalanche.core import SupervisedPlugin

    from medattn.continual.plugin_metrics import EpochDice

    marks: dict[str, list[float]] = {"start": [], "end": []}

    class Stamps(SupervisedPlugin):
        def before_training_iteration(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
            marks["start"].append(time.perf_counter())

        def after_training_iteration(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
            marks["end"].append(time.perf_counter())

    run_a, strategy = avalanche_epoch(model, opt, items, cfg, device)
    strategy.plugins.insert(0, Stamps())  # first: the evaluator's after_training_iteration comes after its stamp
    run_p = plain_epoch(model, opt, items, cfg, device, stamps=marks)
    # the training Dice's update, timed where the evaluator calls it after every step
    dice = next(m for m in strategy.evaluator.metrics if isinstance(m, EpochDice))
    update, dice_times = dice.after_training_iteration, []

    def timed_update(strategy_: Any) -> None:
        begin = time.perf_counter()
        update(strategy_)
        dice_times.append(time.perf_counter() - begin)

    dice.after_training_iteration = timed_update  # type: ignore[method-assign]

    sync = synchronizer(device) or (lambda: None)
    found: dict[str, dict[str, list[float]]] = {
        "avalanche": {"in": [], "between": []},
        "plain": {"in": [], "between": []},
    }
    for r in range(cfg["rounds"] + 1):
        for name, run in (("avalanche", run_a), ("plain", run_p)):
            marks["start"].clear()
            marks["end"].clear()
            if sync is not None:
                sync()
            begin = time.perf_counter()
            run()
            if sync is not None:
                sync()
            finish_ = time.perf_counter()
            if r == 0:
                continue  # warm-up
            starts, ends = marks["start"], marks["end"]
            found[name]["in"] += [e - s for s, e in zip(starts, ends)]
            # between steps: the epoch's time outside its steps, per step (set-up and data included)
            found[name]["between"].append((finish_ - begin - sum(e - s for s, e in zip(starts, ends))) / len(ends))
    result = {
        name: {k: round(statistics.median(v) * 1e3, 2) for k, v in parts.items()} for name, parts in found.items()
    }
    result["avalanche"]["training_dice"] = round(statistics.median(dice_times) * 1e3, 2)
    return result


def step_runner(cfg: dict[str, Any], device: Any, *, now: bool, bf16: bool = False) -> Callable[[], list[float]]:
    """``cfg["steps"]`` training steps of ``ag_unet_fullres`` per call (fixed batches; the model and optimiser
    persist between calls), as medattn's step is now (``now``: its norm backward, gated addition, upsampling and
    fused AdamW) or as it was (PyTorch's norm backward, ``addcmul_``, ``F.interpolate``, AdamW's per-tensor loop);
    returns the losses."""
    import medattn.models.norm as norm
    from medattn.models import build_model
    from medattn.train.losses import DeepSupervisionLoss
    from medattn.train.optim import make_optimizer

    torch.manual_seed(0)
    depth = min(2, len(cfg["channels"]) - 2)  # two extra outputs, as medattn train sets them (fewer on tiny nets)
    model = build_model("ag_unet_fullres", 1, len(CLASSES), channels=cfg["channels"], deep_supervision=depth)
    model = model.to(device)
    # now: medattn's optimiser (PyTorch's fused AdamW); before: AdamW's default per-tensor loop on the CPU
    opt = make_optimizer(model, "adamw", 1e-3, 1e-2) if now else torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = DeepSupervisionLoss()
    g = torch.Generator().manual_seed(1)
    shape = (cfg["batch"], 1, *cfg["patch"])
    batches = [
        (
            torch.randn(shape, generator=g).to(device),
            torch.randint(0, len(CLASSES), shape, generator=g).float().to(device),
        )
        for _ in range(cfg["steps"])
    ]
    import medattn.models.resample as resample
    import medattn.models.unet as unet

    own, own_add, own_up = norm.use_fast_backward, unet.gated_add, resample.use_fast_upsample
    own_out = unet.contiguous_output

    def run() -> list[float]:
        if not now:  # PyTorch's norm backward, in-place addcmul_, upsampling and .contiguous(): the step as it was
            norm.use_fast_backward = lambda x: False
            unet.gated_add = lambda up, skip, alpha: up.addcmul_(skip, alpha)
            resample.use_fast_upsample = lambda x: False
            unet.contiguous_output = lambda x: x.contiguous()
        model.train()
        losses = []
        try:
            for x, y in batches:
                opt.zero_grad()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    loss = loss_fn(model(x), y)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
                opt.step()
                losses.append(loss.detach())
        finally:
            norm.use_fast_backward, unet.gated_add, resample.use_fast_upsample = own, own_add, own_up
            unet.contiguous_output = own_out
        return [float(v) for v in losses]

    return run


def step_child(cfg: dict[str, Any], now: bool, threads: int, calls: int) -> dict[str, list[float]]:
    """In a fresh process (:func:`bench._common.run_fresh`): the step as it was (``now`` False: the old step with
    glibc's default allocator) or as ``medattn train`` runs it now (the new step after
    :func:`medattn.runtime.retain_freed_memory`, which the command calls first). One untimed call, then ``calls``
    timed ones: wall and CPU seconds and minor page faults per call."""
    import resource
    import time

    from medattn.runtime import retain_freed_memory

    torch.set_num_threads(threads)
    retained = retain_freed_memory() if now else 0
    run = step_runner(cfg, torch.device("cpu"), now=now)
    run()
    out: dict[str, list[float]] = {"wall": [], "cpu": [], "page_faults": [], "retained": [float(retained)]}
    for _ in range(calls):
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        out["wall"].append(time.perf_counter() - wall)
        out["cpu"].append(time.process_time() - cpu)
        out["page_faults"].append(float(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults))
    return out


def step_as_run(mode: str, rounds: int | None, dev_name: str) -> tuple[dict[str, Any], Any]:
    """The step as it was against the step as ``medattn train`` runs it now, each in fresh processes (the allocator
    setting is process-wide, so the two cannot share one): per round one process of each, in alternating order,
    each timing ``calls`` calls of ``cfg["steps"]`` steps after a warm-up call; the ratio before / now of their
    median call times is taken per round. CPU only (the allocator is the host's)."""
    import statistics

    from bench._common import run_fresh

    cfg = STEP_SETTINGS[mode]
    rounds = rounds or cfg["rounds"]
    calls = 1 if mode == "smoke" else 3
    threads = torch.get_num_threads()
    runs: dict[str, list[dict[str, list[float]]]] = {"before": [], "now": []}
    print(f"the step as run: {rounds} rounds of one fresh process each, {calls} x {cfg['steps']} steps ...", flush=True)
    for r in range(rounds):
        for name in ("before", "now") if r % 2 == 0 else ("now", "before"):
            runs[name].append(run_fresh(step_child, cfg, name == "now", threads, calls))

    def per_round(name: str, key: str) -> list[float]:
        return [statistics.median(run[key]) for run in runs[name]]

    wall = Stats.of([b / n for b, n in zip(per_round("before", "wall"), per_round("now", "wall"))])
    cpu = Stats.of([b / n for b, n in zip(per_round("before", "cpu"), per_round("now", "cpu"))])
    steps = cfg["steps"]
    ms = {k: statistics.median(per_round(k, "wall")) / steps * 1e3 for k in runs}
    faults = {k: statistics.median(per_round(k, "page_faults")) / steps for k in runs}
    retained = int(min(run["retained"][0] for run in runs["now"]))  # the mmap threshold set, bytes (0: none)
    kept = f"freed memory retained (blocks below {retained // 1024**2} MiB)" if retained else "glibc's defaults too"
    print(
        format_table(
            ["step", "median ms", "page faults per step"],
            [[k, f"{ms[k]:.0f}", f"{faults[k]:.0f}"] for k in runs],
        )
    )
    print(
        f"before / now, as run: wall {wall.median:.3f} [{wall.q1:.3f}, {wall.q3:.3f}], CPU time {cpu.median:.3f} "
        f"(goal >= {TARGET_STEP_SPEEDUP}); now: {kept}"
    )
    head = headline(
        "training step as run",
        f"medattn train's step (norm backward, gated add, upsampling, fused AdamW; {kept})",
        "the step before, glibc's default allocator",
        "speed-up x (before s / now s)",
        wall,
        f">= {TARGET_STEP_SPEEDUP}",
        f"fresh process per contender and round; CPU-time {cpu.median:.3f}; page faults per step "
        f"{faults['before']:.0f} before, {faults['now']:.0f} now",
        dev_name,
    )
    doc = {
        "rounds": rounds,
        "calls": calls,
        "runs": runs,
        "speedup_wall": wall,
        "speedup_cpu": cpu,
        "ms_per_step": ms,
        "page_faults_per_step": faults,
        "retained": retained,
    }
    return doc, head


def step_speed(mode: str, rounds: int | None, device: Any, dev_name: str) -> tuple[dict[str, Any], Any]:
    """The training-step comparison of the module docstring: (its document, its headline)."""
    from medattn.train.precision import cpu_has_native_bf16

    cfg = STEP_SETTINGS[mode]
    rounds = rounds or cfg["rounds"]
    check_cfg = {**cfg, "steps": cfg["check"]}
    before = step_runner(check_cfg, device, now=False)()
    after = step_runner(check_cfg, device, now=True)()
    loss_diff = max(abs(a - b) for a, b in zip(before, after))
    print(
        f"training step: {cfg['check']} steps from one seed, largest loss difference {loss_diff:.1e} "
        f"(losses {after[0]:.4f} .. {after[-1]:.4f})",
        flush=True,
    )
    contenders = {
        "before (PyTorch norm backward, per-tensor AdamW)": step_runner(cfg, device, now=False),
        "now (medattn norm backward, upsampling, fused AdamW)": step_runner(cfg, device, now=True),
    }
    bf16 = device.type == "cpu" and cpu_has_native_bf16()
    if bf16:
        contenders["now, bf16 autocast"] = step_runner(cfg, device, now=True, bf16=True)
    print(f"timing: {cfg['steps']} steps per call, {rounds} interleaved rounds ...", flush=True)
    raw = time_interleaved_clocks(contenders, rounds=rounds, sync=synchronizer(device))
    names = list(contenders)
    speedup = paired_ratio(raw["wall"], names[0], names[1])
    cpu = paired_ratio(raw["cpu"], names[0], names[1])
    per_step = {k: Stats.of([t / cfg["steps"] for t in v]) for k, v in raw["wall"].items()}
    print(
        format_table(
            ["step", "median ms", "best ms"],
            [[k, f"{v.median * 1e3:.0f}", f"{v.best * 1e3:.0f}"] for k, v in per_step.items()],
        )
    )
    bf16_ratio = paired_ratio(raw["wall"], names[2], names[1]) if bf16 else None
    print(
        f"before / now: wall {speedup.median:.3f} [{speedup.q1:.3f}, {speedup.q3:.3f}], CPU time {cpu.median:.3f} "
        f"(goal >= {TARGET_STEP_SPEEDUP})"
        + (f"; bf16 / fp32 time {bf16_ratio.median:.3f}" if bf16_ratio else "; no native bf16 on this CPU")
    )
    head = headline(
        "training step",
        "medattn norm backward, upsampling + fused AdamW",
        "PyTorch native_group_norm_backward + per-tensor AdamW (the step before)",
        "speed-up x (before s / now s)",
        speedup,
        f">= {TARGET_STEP_SPEEDUP}",
        f"ag_unet_fullres, batch {cfg['batch']}, patch {cfg['patch']}, fp32; losses equal within {loss_diff:.1e}"
        + (f"; bf16 autocast {bf16_ratio.median:.2f}x the fp32 time" if bf16_ratio else ""),
        dev_name,
    )
    doc = {
        "settings": cfg,
        "rounds": rounds,
        "losses_before": before,
        "losses_now": after,
        "max_loss_difference": loss_diff,
        "seconds": raw,
        "speedup_wall": speedup,
        "speedup_cpu": cpu,
        "bf16_over_fp32_wall": bf16_ratio,
    }
    return doc, head


def layer_costs(mode: str, device: Any, repeats: int = 9) -> dict[str, Any]:
    """What each convolution of the training step's network costs against this CPU's own convolution throughput.

    One training forward pass of ``ag_unet_fullres`` (the step's network and batch) records every convolution's
    input: shape, memory format and whether it needs a gradient. Each convolution is then timed alone on a random
    input of that shape and format, forward and backward (each timed alone, the backward from an untimed forward
    pass just before it; median of ``repeats``), and its rate is its FLOPs over its time:
    ``2 * out voxels * C_in * C_out * prod(kernel)`` forward, twice that backward where the input needs a gradient
    (data and weight gradients), once where only the weights do (the stem). The fastest layer's rate is the CPU's
    own convolution throughput on these shapes; a layer well below it is slow for its shape, not for its size. The
    step itself is timed in the same run (the sum of the layers is its convolution
    share)."""
    from medattn.models import build_model

    cfg = STEP_SETTINGS[mode]
    torch.manual_seed(0)
    depth = min(2, len(cfg["channels"]) - 2)
    model = build_model("ag_unet_fullres", 1, len(CLASSES), channels=cfg["channels"], deep_supervision=depth)
    model = model.to(device).train()
    seen: list[tuple[str, nn.Module, torch.Tensor]] = []

    def hook(name: str) -> Callable[..., None]:
        def record(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            seen.append((name, module, inputs[0].detach()))

        return record

    convs = (nn.Conv3d, nn.ConvTranspose3d)
    handles = [m.register_forward_pre_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, convs)]
    x = torch.randn(cfg["batch"], 1, *cfg["patch"], device=device)
    model(x)
    for h in handles:
        h.remove()
    sync = synchronizer(device)

    def median_ms(fn: Callable[[Any], Any], setup: Callable[[], Any] = lambda: None) -> float:
        """Median ms of ``fn(setup())`` over ``repeats`` calls; ``setup`` (untimed) runs before each."""
        fn(setup())
        times = []
        for _ in range(repeats):
            arg = setup()
            if sync is not None:
                sync()
            t0 = time.perf_counter()
            fn(arg)
            if sync is not None:
                sync()
            times.append(time.perf_counter() - t0)
        return sorted(times)[repeats // 2] * 1e3

    rows = []
    for name, module, inp in seen:
        fmt = torch.channels_last_3d if inp.is_contiguous(memory_format=torch.channels_last_3d) else None
        needs_grad = name != "encoder.0.convs.0.0"  # the stem's input is the image: no gradient
        xin = torch.randn(inp.shape, device=device)
        xin = (xin.contiguous(memory_format=fmt) if fmt else xin).requires_grad_(needs_grad)
        layer = copy.deepcopy(module)
        out = layer(xin)
        grad = torch.randn_like(out)
        per = math.prod(int(k) for k in layer.kernel_size) * layer.in_channels * layer.out_channels // layer.groups
        voxels = (inp if isinstance(layer, nn.ConvTranspose3d) else out).shape[0] * math.prod(
            (inp if isinstance(layer, nn.ConvTranspose3d) else out).shape[2:]
        )
        flops = 2.0 * voxels * per
        fwd = median_ms(lambda _, layer=layer, xin=xin: layer(xin))
        # the backward alone, timed from a forward pass made (untimed) just before it
        bwd = median_ms(lambda out, grad=grad: out.backward(grad), lambda layer=layer, xin=xin: layer(xin))
        rows.append(
            {
                "layer": name,
                "in_out": f"{layer.in_channels}->{layer.out_channels}",
                "grid": list(inp.shape[2:]),
                "kernel": list(layer.kernel_size),
                "stride": list(layer.stride),
                "gflop_forward": flops / 1e9,
                "forward_ms": fwd,
                "backward_ms": bwd,
                "forward_gflops": flops / fwd / 1e6,
                "backward_gflops": flops * (2 if needs_grad else 1) / bwd / 1e6,
            }
        )
    step = step_runner({**cfg, "steps": 1}, device, now=True)
    step_ms = median_ms(lambda _: step())
    total = sum(r["forward_ms"] + r["backward_ms"] for r in rows)
    best = max(max(r["forward_gflops"], r["backward_gflops"]) for r in rows)
    print(
        format_table(
            ["layer", "channels", "input grid", "kernel/stride", "fwd ms", "bwd ms", "fwd GFLOP/s", "bwd GFLOP/s"],
            [
                [
                    r["layer"],
                    r["in_out"],
                    "x".join(map(str, r["grid"])),
                    f"{r['kernel'][0]}/{r['stride'][0]}",
                    f"{r['forward_ms']:.2f}",
                    f"{r['backward_ms']:.2f}",
                    f"{r['forward_gflops']:.0f}",
                    f"{r['backward_gflops']:.0f}",
                ]
                for r in rows
            ],
        )
    )
    print(
        f"convolutions alone: {total:.1f} ms of a {step_ms:.1f} ms step ({total / step_ms:.0%}); the fastest layer "
        f"runs at {best:.0f} GFLOP/s"
    )
    return {"layers": rows, "convolutions_ms": total, "step_ms": step_ms, "best_gflops": best}


def main(argv: list[str] | None = None) -> int:
    p = common_parser(__doc__, "runs/bench/bench_train.json")
    p.add_argument("--layers", action="store_true", help="only the per-convolution costs (layer_costs)")
    args = p.parse_args(argv)

    setup = start(args)
    device, mode, dev_name, env = setup.device, setup.mode, setup.device_name, setup.env
    from medattn.runtime import retain_freed_memory

    # as medattn adapt and train run: the in-process comparisons below all share this allocator setting, so they
    # compare code; step_as_run compares the step as run, allocator included, in fresh processes
    print(f"freed memory retained in this process, blocks below (bytes): {retain_freed_memory()}")
    if args.layers:  # its own file: the full run's results stay
        out = args.out if args.out != p.get_default("out") else str(Path(args.out).with_name("bench_train_layers.json"))
        finish(out, {"environment": env, "mode": mode, "device": dev_name, "layers": layer_costs(mode, device)})
        return 0
    cfg = SETTINGS[mode]
    rounds = args.rounds or cfg["rounds"]
    items = make_items(cfg["batches"] * cfg["batch"], cfg["patch"])
    print(f"same computation: one epoch of {cfg['batches']} steps with each loop on identical copies ...", flush=True)
    check = same_computation(cfg, items, device)
    print(
        f"  steps equal: {check['steps_equal']}; largest loss difference {check['max_loss_difference']:.2e}, "
        f"weight difference {check['max_weight_difference']:.2e}"
    )

    from medattn.train.optim import make_optimizer

    model = make_model(cfg["channels"]).to(device)
    opt = make_optimizer(model, "adamw", 1e-3, 1e-2)
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
    phases = phase_breakdown(model, opt, items, {**cfg, "rounds": rounds}, device)
    print(
        format_table(
            ["loop", "inside a step, median ms", "outside the steps, ms per step"],
            [[k, f"{v['in']:.1f}", f"{v['between']:.1f}"] for k, v in phases.items()],
        )
    )
    print(f"of which the training Dice's update: {phases['avalanche']['training_dice']:.1f} ms per step")
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
    print()
    step_doc, step_head = step_speed(mode, args.rounds, torch.device(device), dev_name)
    print()
    step_doc["layers"] = layer_costs(mode, torch.device(device))
    heads = [head, step_head]
    if torch.device(device).type == "cpu":
        print()
        as_run, as_run_head = step_as_run(mode, args.rounds, dev_name)
        step_doc["as_run"] = as_run
        heads.append(as_run_head)
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
        "phases_ms": phases,
        "training_step": step_doc,
        "headlines": heads,
    }
    finish(args.out, doc)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
