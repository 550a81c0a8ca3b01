"""Benchmark: sliding-window inference with medattn's default model and inferer against MONAI's ``AttentionUnet``
and ``UNet`` under MONAI's ``sliding_window_inference``, with the Dice each pair reaches after the same training.

    .venv/bin/python bench/bench_inference.py            # sized for about 3 minutes on 2 idle cores
    .venv/bin/python bench/bench_inference.py --quick    # smaller volume, fewer rounds and steps

1. **Throughput** (input voxels per second) on one volume: a centred crop of a real BraTS FLAIR scan
   (``../shared/data``, z-scored; random noise of the same size when the data are absent), with the same window,
   overlap (0.5), Gaussian blending and window batch for every contender, labels as output (arg-max), float32,
   eval mode, inference mode. The contenders:

   * ``medattn``: the ``ag_unet`` preset as it comes (widths 16-256, strided stem, attention gates) through
     :class:`~medattn.infer.sliding.SlidingWindowPredictor` (``.labels``);
   * ``monai_attention_unet``: ``monai.networks.nets.AttentionUnet`` (the same widths, strides 2) through
     ``sliding_window_inference(..., mode="gaussian").argmax(1)``;
   * ``monai_unet``: ``monai.networks.nets.UNet`` as MONAI's 3D tutorials build it (the same widths and strides,
     ``num_res_units=2``, batch norm) through the same.

   Interleaved rounds in one process (bench._common); per round the ratio baseline seconds / ours (> 1: ours is
   faster) on the wall clock and on this process's CPU time. Achieved GFLOP/s is the network's forward FLOPs per
   window (``torch.utils.flop_counter``, as ``medattn models`` counts them) times the number of windows, over the
   median wall time, set against the best GFLOP/s of plain ``Conv3d`` layers timed in the same run (the
   convolution throughput this machine reaches with these kernels and threads).
2. **Dice at equal training time**: ``medattn`` and ``monai_attention_unet`` (the same two networks, fresh weights)
   are trained on identical batches (random patches of MSD Task04 hippocampus cases, z-scored; the phantom of
   :mod:`medattn.data.phantom` when the data are absent) with the same loss (Dice + CE), optimiser (AdamW) and
   learning rate, then segment held-out volumes whole with their own inferer (the patch as window). First both
   take the same number of steps (interleaved, each step timed) and are scored: Dice at **equal steps**. Then
   ``medattn`` goes on for as many further steps (fresh patches) as its measured step-time ratio says fit in the
   time MONAI's network took for its steps, and is scored again: Dice at **equal training time**, which is what a
   user with a time budget gets. Reported: mean foreground Dice of each and the per-case difference with its 95%
   interval, at both points. The goal counts Dice as "equal or better" at equal training time unless ours is
   significantly worse (the interval's upper end below 0); the equal-steps figures stay in the note and the JSON.
   Few steps on a CPU give a far-from-converged Dice: it says which network a time budget favours, not where
   either ends (the accuracy table of docs/results.md trains to 3000 steps).

Goal (issue 7): ``monai_attention_unet`` seconds / ``medattn`` seconds >= 3, at equal or better Dice. ``--device
cuda`` runs everything on the GPU.
"""

from __future__ import annotations

import functools
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (
    SHARED_DATA,
    Headline,
    Stats,
    brats_flair_scans,
    common_parser,
    finish,
    format_stats,
    format_table,
    headline,
    paired_ratio,
    start,
    synchronizer,
    time_interleaved_clocks,
)

TARGET_SPEEDUP = 3.0
CLASSES = 3
CHANNELS = (16, 32, 64, 128, 256)

#: Per mode: throughput volume (X, Y, Z), window edge, rounds; training steps, (train, test) cases, and whether the
#: Dice comparison may use the real hippocampus cases (the smoke run trains on small phantoms).
SETTINGS: dict[str, dict[str, Any]] = {
    "full": {"volume": (128, 128, 64), "window": 64, "rounds": 5, "steps": 60, "cases": (24, 12), "real": True},
    "quick": {"volume": (96, 96, 64), "window": 64, "rounds": 3, "steps": 10, "cases": (8, 4), "real": True},
    "smoke": {"volume": (24, 24, 24), "window": 16, "rounds": 1, "steps": 2, "cases": (2, 2), "real": False},
}


# ---- contenders ------------------------------------------------------------------------------------------------


def networks(channels: tuple[int, ...] = CHANNELS, classes: int = CLASSES) -> dict[str, nn.Module]:
    """The three networks, fresh weights (seeded), train mode; see the module docstring."""
    from monai.networks.nets import AttentionUnet, UNet

    from medattn.models import build_model

    strides = (2,) * (len(channels) - 1)
    torch.manual_seed(0)
    return {
        "medattn": build_model("ag_unet", 1, classes, channels=channels),
        "monai_attention_unet": AttentionUnet(3, 1, classes, channels, strides),
        "monai_unet": UNet(3, 1, classes, channels, strides, num_res_units=2),
    }


def inferer(
    name: str, net: nn.Module, window: tuple[int, ...], batch: int, device: torch.device
) -> Callable[[torch.Tensor], Any]:
    """``image (C, X, Y, Z) -> labels (X, Y, Z)`` with the contender's own sliding-window inferer (the two of
    ``bench/bench_predict.py``, overlap 0.5, Gaussian blending)."""
    from bench.bench_predict import monai, ours

    return (ours if name == "medattn" else monai)(net, window, batch, device)


# ---- data ------------------------------------------------------------------------------------------------------


def zscore(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    return (x - x.mean()) / max(float(x.std()), 1e-8)


def centre_crop(x: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """The centred ``size`` block of ``x`` (X, Y, Z), zero-padded where ``x`` is smaller."""
    out = np.zeros(size, dtype=x.dtype)
    src, dst = [], []
    for n, s in zip(x.shape, size):
        a, b = max(0, (n - s) // 2), max(0, (s - n) // 2)
        m = min(n, s)
        src.append(slice(a, a + m))
        dst.append(slice(b, b + m))
    out[tuple(dst)] = x[tuple(src)]
    return out


def throughput_volume(size: tuple[int, ...]) -> tuple[torch.Tensor, str]:
    """(1, X, Y, Z) float32: a crop of the first BraTS FLAIR scan, or seeded noise without the shared data."""
    from medattn.data.io import read_volume

    flair = brats_flair_scans()
    if flair:
        arr, _ = read_volume(flair[0])
        return torch.from_numpy(centre_crop(zscore(arr), size))[None], f"{flair[0].parent.name} FLAIR, centre crop"
    print(f"# {SHARED_DATA} has no BraTS FLAIR scan: timing on random noise of the same size")
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, *size, generator=g), "random noise"


@dataclass
class Cases:
    """Train and test volumes: images (1, X, Y, Z) float32, labels (1, X, Y, Z) float32 class indices."""

    source: str
    patch: tuple[int, int, int]
    train: list[tuple[torch.Tensor, torch.Tensor]]
    test: list[tuple[torch.Tensor, torch.Tensor]]


def load_cases(n_train: int, n_test: int, real: bool = True) -> Cases:
    """Hippocampus cases (sorted ids: the first ``n_train`` train, the last ``n_test`` test), or (``real`` False or
    the data absent) phantoms of 24^3 voxels with a 16^3 patch."""
    from medattn.data.io import read_volume

    root = SHARED_DATA / "Task04_Hippocampus"
    images = sorted((root / "imagesTr").glob("*.nii.gz"))
    if real and len(images) >= n_train + n_test:
        pairs = []
        for path in images[:n_train] + images[-n_test:]:
            img, _ = read_volume(path)
            lab, _ = read_volume(root / "labelsTr" / path.name)
            pairs.append((torch.from_numpy(zscore(img))[None], torch.from_numpy(lab)[None]))
        return Cases("MSD Task04 hippocampus", (32, 48, 32), pairs[:n_train], pairs[n_train:])
    if real:
        print(f"# {root} not found: training on the medattn phantom instead")
    from medattn.data.phantom import MIN_SIZE, phantom_case

    pairs = []
    for i in range(n_train + n_test):
        img, lab, *_ = phantom_case(0, "bench", i, size=MIN_SIZE)
        pairs.append((torch.from_numpy(zscore(img))[None], torch.from_numpy(lab.astype(np.float32))[None]))
    return Cases("medattn phantom", (16, 16, 16), pairs[:n_train], pairs[n_train:])


def batches(cases: Cases, steps: int, batch: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``steps`` batches of random patches (zero-padded where a volume is smaller than the patch), drawn once so
    every network trains on identical tensors."""
    rng = np.random.default_rng(seed)
    padded = []  # each case padded to at least the patch once, not once per draw
    for img, lab in cases.train:
        size = tuple(max(s, p) for s, p in zip(img.shape[1:], cases.patch))
        padded.append(
            (torch.from_numpy(centre_crop(img[0].numpy(), size)), torch.from_numpy(centre_crop(lab[0].numpy(), size)))
        )
    out = []
    for _ in range(steps):
        xs, ys = [], []
        for _ in range(batch):
            img_p, lab_p = padded[int(rng.integers(len(padded)))]
            size = list(img_p.shape)
            lo = [int(rng.integers(s - p + 1)) for s, p in zip(size, cases.patch)]
            sl = tuple(slice(a, a + p) for a, p in zip(lo, cases.patch))
            xs.append(img_p[sl][None])
            ys.append(lab_p[sl][None])
        out.append((torch.stack(xs), torch.stack(ys)))
    return out


# ---- measurements ----------------------------------------------------------------------------------------------


def conv3d_peak(device: torch.device, rounds: int, small: bool) -> dict[str, Any]:
    """GFLOP/s of plain 3x3x3 ``Conv3d`` layers (widths and memory formats these networks use), timed
    interleaved; ``peak`` is the best median."""
    edge = 16 if small else 48
    configs = {
        f"32->32 @ {edge}^3 channels_last": (32, edge, torch.channels_last_3d),
        f"32->32 @ {edge}^3 contiguous": (32, edge, torch.contiguous_format),
        f"64->64 @ {edge * 2 // 3}^3 channels_last": (64, edge * 2 // 3, torch.channels_last_3d),
    }
    calls: dict[str, Callable[[], Any]] = {}
    flops: dict[str, int] = {}
    for name, (c, n, fmt) in configs.items():
        conv = nn.Conv3d(c, c, 3, padding=1).to(device).to(memory_format=fmt)
        x = torch.randn(1, c, n, n, n, device=device).to(memory_format=fmt)
        calls[name] = functools.partial(conv, x)
        flops[name] = 2 * c * c * 27 * n**3
    with torch.inference_mode():
        raw = time_interleaved_clocks(calls, rounds=rounds, sync=synchronizer(device), clocks=("wall",))["wall"]
    gflops = {k: flops[k] / Stats.of(v).median / 1e9 for k, v in raw.items()}
    return {"configs": gflops, "peak": max(gflops.values())}


def window_flops(net: nn.Module, window: tuple[int, ...]) -> int:
    from medattn.models.flops import count_flops

    return count_flops(net, (1, 1, *window))


def throughput(
    nets: dict[str, nn.Module],
    volume: torch.Tensor,
    window: tuple[int, ...],
    batch: int,
    rounds: int,
    device: torch.device,
) -> dict[str, Any]:
    """Interleaved timing of every contender on ``volume``; ratios are baseline / ``medattn`` per round."""
    from bench.bench_predict import OVERLAP
    from medattn.infer.windows import window_layout

    x = volume.to(device)
    calls = {k: inferer(k, n.eval(), window, batch, device) for k, n in nets.items()}
    timed: dict[str, Callable[[], Any]] = {k: functools.partial(f, x) for k, f in calls.items()}
    raw = time_interleaved_clocks(timed, rounds, sync=synchronizer(device))
    n_windows = len(window_layout(tuple(x.shape[1:]), window, (OVERLAP,) * 3)[0])  # the layout of both inferers
    voxels = math.prod(x.shape[1:])
    out: dict[str, Any] = {"windows": n_windows, "per_network": {}, "speedup": {}, "cpu_speedup": {}}
    for k, net in nets.items():
        wall = Stats.of(raw["wall"][k])
        total = window_flops(net, window) * n_windows
        out["per_network"][k] = {
            "seconds": wall,
            "cpu_seconds": Stats.of(raw["cpu"][k]),
            "voxels_per_s": voxels / wall.median,
            "gflop_per_volume": total / 1e9,
            "gflop_per_s": total / wall.median / 1e9,
            "gflop_per_s_rounds": [total / t / 1e9 for t in raw["wall"][k]],
        }
        if k != "medattn":
            out["speedup"][k] = paired_ratio(raw["wall"], k, "medattn")
            out["cpu_speedup"][k] = paired_ratio(raw["cpu"], k, "medattn")
    return out


def dice_of(pred: torch.Tensor, label: torch.Tensor) -> float:
    from medattn.dice import defined_mean, dice_per_class

    return defined_mean(dice_per_class(pred.cpu(), label.cpu(), range(1, CLASSES)))[0]


def _train_step(
    net: nn.Module,
    opt: torch.optim.Optimizer,
    loss_fn: Callable[..., torch.Tensor],
    xb: torch.Tensor,
    yb: torch.Tensor,
    sync: Callable[[], Any] | None,
) -> tuple[float, float]:
    """One optimiser step; (seconds, loss)."""
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(net(xb), yb)
    loss.backward()
    opt.step()
    if sync is not None:
        sync()
    return time.perf_counter() - t0, float(loss.detach())


def _difference(ours: list[float], theirs: list[float]) -> dict[str, Any]:
    """Mean per-case Dice difference (ours - theirs) with its normal 95% interval."""
    diff = np.asarray(ours) - np.asarray(theirs)
    ok = ~np.isnan(diff)
    mean = float(diff[ok].mean()) if ok.any() else math.nan
    half = 1.96 * float(diff[ok].std(ddof=1)) / math.sqrt(ok.sum()) if ok.sum() > 1 else math.inf
    return {"mean": mean, "ci95": (mean - half, mean + half)}


#: At most this many times the equal-steps count for medattn's equal-time phase (a bound on the run time).
MAX_TIME_STEPS_FACTOR = 12


def train_and_score(
    nets: dict[str, nn.Module], cases: Cases, steps: int, lr: float, device: torch.device
) -> dict[str, Any]:
    """Train each network on the same batches (steps interleaved) and score both (equal steps); then train
    ``medattn`` on for the steps that fit in MONAI's training time and score it again (equal time)."""
    from medattn.train.losses import DeepSupervisionLoss

    loss_fn = DeepSupervisionLoss()
    opts = {k: torch.optim.AdamW(n.parameters(), lr=lr) for k, n in nets.items()}
    step_s: dict[str, list[float]] = {k: [] for k in nets}
    losses: dict[str, list[float]] = {k: [] for k in nets}
    for n in nets.values():
        n.to(device).train()
    sync = synchronizer(device)
    for i, (xb, yb) in enumerate(batches(cases, steps, batch=2)):
        xb, yb = xb.to(device), yb.to(device)
        for k in nets if i % 2 == 0 else reversed(list(nets)):
            sec, loss = _train_step(nets[k], opts[k], loss_fn, xb, yb, sync)
            step_s[k].append(sec)
            losses[k].append(loss)

    def score(k: str) -> list[float]:
        infer = inferer(k, nets[k].eval(), cases.patch, 2, device)
        out = [dice_of(infer(img.to(device)), lab[0]) for img, lab in cases.test]
        nets[k].train()
        return out

    scores = {k: score(k) for k in nets}
    speedup = paired_ratio(step_s, "monai_attention_unet", "medattn")
    # Equal time: the median step-time ratio (robust to a stalled step) converts MONAI's steps into ours.
    # When ours is the slower one (ratio < 1) it gets no extra steps and the result is not an equal-time comparison:
    # ``equal_time["equal"]`` says so and the goal is judged failed rather than in our favour.
    time_steps = min(max(steps, round(steps * speedup.median)), MAX_TIME_STEPS_FACTOR * steps)
    extra_s: list[float] = []
    extra_losses: list[float] = []
    for xb, yb in batches(cases, time_steps - steps, batch=2, seed=1):
        sec, loss = _train_step(nets["medattn"], opts["medattn"], loss_fn, xb.to(device), yb.to(device), sync)
        extra_s.append(sec)
        extra_losses.append(loss)
    time_scores = {"medattn": score("medattn"), "monai_attention_unet": scores["monai_attention_unet"]}
    return {
        "source": cases.source,
        "patch": cases.patch,
        "steps": steps,
        "batch": 2,
        "lr": lr,
        "train_cases": len(cases.train),
        "test_cases": len(cases.test),
        "dice": {k: float(np.nanmean(v)) for k, v in scores.items()},
        "dice_per_case": scores,
        "dice_difference": _difference(scores["medattn"], scores["monai_attention_unet"]),
        "equal_time": {
            "equal": speedup.median >= 1.0,
            "steps": {"medattn": time_steps, "monai_attention_unet": steps},
            "train_seconds": {
                "medattn": float(sum(step_s["medattn"]) + sum(extra_s)),
                "monai_attention_unet": float(sum(step_s["monai_attention_unet"])),
            },
            "dice": {k: float(np.nanmean(v)) for k, v in time_scores.items()},
            "dice_per_case": time_scores,
            "dice_difference": _difference(time_scores["medattn"], time_scores["monai_attention_unet"]),
            "final_loss": float(np.mean(extra_losses[-max(1, steps // 5) :])) if extra_losses else None,
        },
        "final_loss": {k: float(np.mean(v[-max(1, steps // 5) :])) for k, v in losses.items()},
        "step_seconds": {k: Stats.of(v) for k, v in step_s.items()},
        "train_step_speedup": speedup,
    }


# ---- main ------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = common_parser(__doc__, "runs/bench/bench_inference.json")
    p.add_argument("--batch", type=int, default=2, help="windows per network call, every contender (default 2)")
    p.add_argument("--steps", type=int, default=None, help="training steps of the Dice comparison (default by mode)")
    p.add_argument("--lr", type=float, default=3e-3, help="AdamW learning rate of both networks (default 3e-3)")
    p.add_argument("--no-dice", action="store_true", help="skip the Dice comparison")
    args = p.parse_args(argv)

    setup = start(args)
    device, mode, dev_name, env = setup.device, setup.mode, setup.device_name, setup.env
    cfg = SETTINGS[mode]
    rounds = args.rounds or cfg["rounds"]
    small = mode == "smoke"
    channels = (4, 8, 16) if small else CHANNELS
    doc: dict[str, Any] = {"environment": env, "mode": mode, "device": dev_name, "channels": channels}

    nets = {k: n.to(device) for k, n in networks(channels).items()}
    volume, source = throughput_volume(cfg["volume"])
    window = (cfg["window"],) * 3
    print(f"throughput: {source} {tuple(volume.shape[1:])}, window {window}, {rounds} interleaved rounds ...")
    tput = throughput(nets, volume, window, args.batch, rounds, device)
    print("conv3d throughput of this machine ...", flush=True)
    peak = conv3d_peak(device, rounds, small)
    doc["throughput"] = {"volume": tuple(volume.shape[1:]), "source": source, "window": window, **tput}
    doc["conv3d"] = peak

    rows = []
    for k, r in tput["per_network"].items():
        speed = tput["speedup"].get(k)
        rows.append(
            [
                k,
                f"{r['seconds'].median:.2f}",
                f"{r['voxels_per_s'] / 1e6:.2f}",
                "1 (baseline of ratios)" if speed is None else format_stats(speed),
                "" if speed is None else f"{tput['cpu_speedup'][k].median:.2f}",
                f"{r['gflop_per_s']:.1f}",
                f"{r['gflop_per_s'] / peak['peak']:.0%}",
            ]
        )
    print()
    header = ["network + inferer", "median s", "Mvox/s", "its s / medattn s [IQR]", "CPU-time", "GFLOP/s", "of conv"]
    print(format_table(header, rows))
    print(f"({tput['windows']} windows; conv3d reaches {peak['peak']:.1f} GFLOP/s here: {peak['configs']})")

    dice: dict[str, Any] | None = None
    if not args.no_dice:
        steps = args.steps or cfg["steps"]
        n_train, n_test = cfg["cases"]
        cases = load_cases(n_train, n_test, real=cfg["real"])
        pair = {k: nets[k] for k in ("medattn", "monai_attention_unet")}
        print(f"\nDice: {steps} steps on {cases.source} (patch {cases.patch}), {len(cases.test)} test volumes ...")
        dice = train_and_score(pair, cases, steps, args.lr, device)
        d, t = dice["dice_difference"], dice["equal_time"]
        print(
            f"equal steps ({steps}): Dice medattn {dice['dice']['medattn']:.3f}, monai_attention_unet "
            f"{dice['dice']['monai_attention_unet']:.3f}; difference {d['mean']:+.3f} (95% interval "
            f"{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}); training step time ratio "
            f"{dice['train_step_speedup'].median:.2f}"
        )
        td = t["dice_difference"]
        print(
            f"equal time ({t['train_seconds']['medattn']:.0f} s vs {t['train_seconds']['monai_attention_unet']:.0f} s"
            f", {t['steps']['medattn']} vs {steps} steps): Dice medattn {t['dice']['medattn']:.3f}, "
            f"monai_attention_unet {t['dice']['monai_attention_unet']:.3f}; difference {td['mean']:+.3f} "
            f"(95% interval {td['ci95'][0]:+.3f}, {td['ci95'][1]:+.3f})"
        )
        doc["dice"] = dice

    heads = headlines(tput, peak, dice, dev_name)
    doc["headlines"] = heads
    for h in heads:
        print(f"{h.quantity}: {h.median:.2f} goal {h.goal}: {'met' if h.met else 'NOT met' if h.goal else '-'}")
    finish(args.out, doc)
    return 0


def headlines(tput: dict[str, Any], peak: dict[str, Any], dice: dict[str, Any] | None, dev_name: str) -> list[Headline]:
    speed = tput["speedup"]["monai_attention_unet"]
    if dice is None:
        dice_ok, dice_note = False, "Dice not measured (--no-dice)"
    else:
        t = dice["equal_time"]
        td = t["dice_difference"]
        dice_ok = bool(t["equal"]) and td["ci95"][1] >= 0
        dice_note = (
            f"equal training time: Dice {t['dice']['medattn']:.3f} vs {t['dice']['monai_attention_unet']:.3f} "
            f"({t['steps']['medattn']} vs {dice['steps']} steps; diff {td['mean']:+.3f}, 95% CI "
            f"{td['ci95'][0]:+.3f}..{td['ci95'][1]:+.3f}); equal steps: {dice['dice']['medattn']:.3f} vs "
            f"{dice['dice']['monai_attention_unet']:.3f}"
        )
    goal = f">= {TARGET_SPEEDUP}"
    cpu = tput["cpu_speedup"]
    ours_gf = tput["per_network"]["medattn"]["gflop_per_s"]
    fraction = Stats.of([g / peak["peak"] for g in tput["per_network"]["medattn"]["gflop_per_s_rounds"]])
    return [
        headline(
            "inference",
            "medattn ag_unet + inferer",
            "MONAI AttentionUnet + SWI",
            "throughput x, Dice >= at equal time",
            speed,
            goal,
            f"CPU-time {cpu['monai_attention_unet'].median:.2f}; {dice_note}",
            dev_name,
            met=speed.median >= TARGET_SPEEDUP and dice_ok,
        ),
        headline(
            "inference",
            "medattn ag_unet + inferer",
            "MONAI UNet + SWI",
            "throughput x",
            tput["speedup"]["monai_unet"],
            None,
            f"CPU-time {cpu['monai_unet'].median:.2f}; UNet with num_res_units=2, batch norm",
            dev_name,
        ),
        headline(
            "inference",
            "medattn ag_unet + inferer",
            "Conv3d on this machine",
            "GFLOP/s fraction",
            fraction,
            None,
            f"{ours_gf:.1f} of {peak['peak']:.1f} GFLOP/s; MONAI AttentionUnet "
            f"{tput['per_network']['monai_attention_unet']['gflop_per_s']:.1f}, UNet "
            f"{tput['per_network']['monai_unet']['gflop_per_s']:.1f}",
            dev_name,
        ),
    ]


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
