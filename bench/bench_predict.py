"""Benchmark: ``medattn predict``'s sliding-window inferer against MONAI's ``sliding_window_inference``.

    .venv/bin/python bench/bench_predict.py            # throughput + memory up to 512x512x300 (a few minutes)
    .venv/bin/python bench/bench_predict.py --quick    # smaller volumes, fewer rounds (about a minute)

Both contenders produce a label volume from the same network, volume, window, overlap (0.5), Gaussian blending
and window batch: ours is ``SlidingWindowPredictor(...)(image).labels`` (slab stitching, labels only); MONAI's is
``sliding_window_inference(...).argmax(1)``, its default way to get labels. Float32, eval mode, inference mode, the
process's default threads.

1. **Throughput** (input voxels per second), interleaved rounds in one process, median and interquartile spread,
   ratio per round (MONAI time / ours, > 1: ours is faster) of the wall clock and of the process's CPU time (less
   disturbed by other processes on a shared machine; the target must hold on both): on a small ``ag_unet``
   (network-bound) and on a per-voxel linear classifier (:class:`Pointwise`, stitching-bound: any overhead of ours
   shows).
2. **Peak memory against volume size**, fresh subprocesses per (contender, size) so peaks do not mix (median of
   three below 20 Mvoxel, one above): the growth of the resident set's high-water mark (``VmHWM``, reset through
   ``/proc/self/clear_refs``) over the resident set before the call, after the input is allocated and the
   network warmed up (Linux only). Bytes per voxel exclude
   the float32 input (4 B/voxel, the same for both). The network is :class:`Pointwise`, so the number is the
   stitching's own cost; a real network adds its per-window activations, the same for both contenders.

Targets (issue 4): throughput ratio >= 1.0; peak bytes per voxel of ours <= 0.5 x MONAI's.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import Stats, environment, format_table, paired_ratio, time_interleaved, write_json

TARGET_THROUGHPUT = 1.0
TARGET_MEMORY = 0.5
CLASSES = 3
OVERLAP = 0.5
FULL_SIZES = [(64, 64, 64), (128, 128, 128), (256, 256, 160), (512, 512, 300)]
QUICK_SIZES = [(64, 64, 64), (128, 128, 128), (256, 256, 128)]


class Pointwise(nn.Module):
    """A per-voxel linear classifier, ``logits[k] = w[k] * x + b[k]``, written as broadcasting arithmetic.

    A 1x1x1 ``Conv3d`` would do the same sums, but on the CPU oneDNN pads its 1 input and 3 output channels to
    blocks of 16, so its per-window workspace would dominate the memory measurement; this allocates only the
    logits, so the time and memory left are the stitching's.
    """

    def __init__(self, classes: int = CLASSES) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.weight = nn.Parameter(torch.randn(classes, generator=g))
        self.bias = nn.Parameter(torch.randn(classes, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return torch.addcmul(self.bias.view(shape), x, self.weight.view(shape))  # one output allocation


def pointwise_network(classes: int = CLASSES) -> nn.Module:
    """See :class:`Pointwise`."""
    return Pointwise(classes).eval()


def unet_network(channels: tuple[int, ...], classes: int = CLASSES) -> nn.Module:
    from medattn.models import build_model

    torch.manual_seed(0)
    return build_model("ag_unet", 1, classes, channels=channels).eval()


def ours(net: nn.Module, window: tuple[int, ...], batch: int) -> Any:
    from medattn.infer.sliding import SlidingWindowPredictor

    predictor = SlidingWindowPredictor(net, window, overlap=OVERLAP, window_batch=batch, sw_device="cpu")
    return lambda x: predictor(x).labels


def monai(net: nn.Module, window: tuple[int, ...], batch: int) -> Any:
    from monai.inferers import sliding_window_inference

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out = sliding_window_inference(x[None], window, batch, net, overlap=OVERLAP, mode="gaussian")
            return out.argmax(1)[0]

    return run


CONTENDERS = {"medattn": ours, "monai": monai}


# ---- throughput ------------------------------------------------------------------------------------------------


def throughput(
    name: str, net: nn.Module, size: tuple[int, ...], window: tuple[int, ...], batch: int, rounds: int
) -> dict[str, Any]:
    """Interleaved wall-clock timing (bench._common) plus each call's CPU time (all threads of this process),
    which other processes on a shared machine disturb far less than the wall clock."""
    x = torch.randn(1, *size)
    fns = {k: make(net, window, batch) for k, make in CONTENDERS.items()}
    a, b = fns["medattn"](x), fns["monai"](x)
    agree = float((a.long() == b.long()).float().mean())
    cpu: dict[str, list[float]] = {k: [] for k in fns}

    def timed(key: str) -> Any:
        def call() -> None:
            t = time.process_time()
            fns[key](x)
            cpu[key].append(time.process_time() - t)

        return call

    warmup = 1
    stats, raw = time_interleaved({k: timed(k) for k in fns}, rounds=rounds, warmup=warmup)
    cpu_raw = {k: v[warmup:] for k, v in cpu.items()}
    voxels = math.prod(size)
    wall = paired_ratio(raw, "medattn", "monai")  # ours / MONAI seconds, per round
    cpu_ratio = paired_ratio(cpu_raw, "medattn", "monai")
    return {
        "scenario": name,
        "size": size,
        "window": window,
        "window_batch": batch,
        "label_agreement": agree,
        "seconds": dict(stats.items()),
        "cpu_seconds": {k: Stats.of(v) for k, v in cpu_raw.items()},
        "voxels_per_s": {k: voxels / v.median for k, v in stats.items()},
        "speedup_median": 1.0 / wall.median,
        "speedup_q1_q3": (1.0 / wall.q3, 1.0 / wall.q1),
        "cpu_speedup_median": 1.0 / cpu_ratio.median,
        "cpu_speedup_q1_q3": (1.0 / cpu_ratio.q3, 1.0 / cpu_ratio.q1),
    }


# ---- peak memory (child process) -------------------------------------------------------------------------------


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def child(contender: str, size: tuple[int, ...], window: tuple[int, ...], batch: int) -> dict[str, Any]:
    """Run one contender once on one volume and report the growth of the resident set's peak."""
    net = pointwise_network()
    fn = CONTENDERS[contender](net, window, batch)
    fn(torch.randn(1, *(w + 3 for w in window)))  # warm up: allocator, kernels, imports
    x = torch.randn(1, *size)
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident set
    base = _status_kb("VmRSS")
    start = time.perf_counter()
    labels = fn(x)
    seconds = time.perf_counter() - start
    peak = _status_kb("VmHWM")
    del labels
    return {"peak_kib": peak - base, "seconds": seconds}


def memory(size: tuple[int, ...], window: tuple[int, ...], batch: int, repeats: int) -> dict[str, Any]:
    """Median over ``repeats`` fresh processes per contender (interleaved) of the peak growth and the time."""
    out: dict[str, Any] = {"size": size, "voxels": math.prod(size)}
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in CONTENDERS}
    for _ in range(repeats):
        for contender in CONTENDERS:
            cmd = [
                sys.executable,
                __file__,
                "--child",
                contender,
                "--size",
                ",".join(map(str, size)),
                "--window",
                ",".join(map(str, window)),
                "--batch",
                str(batch),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise RuntimeError(f"{contender} at {size} failed:\n{proc.stderr[-2000:]}")
            runs[contender].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    for contender, rs in runs.items():
        peaks = [r["peak_kib"] for r in rs]
        res = {
            "peak_kib": statistics.median(peaks),
            "peak_kib_runs": peaks,
            "seconds": statistics.median(r["seconds"] for r in rs),
        }
        res["bytes_per_voxel"] = res["peak_kib"] * 1024 / out["voxels"]
        out[contender] = res
    out["ratio"] = out["medattn"]["bytes_per_voxel"] / out["monai"]["bytes_per_voxel"]
    return out


# ---- main ------------------------------------------------------------------------------------------------------


def _triple(text: str) -> tuple[int, int, int]:
    v = [int(s) for s in text.split(",")]
    return (v[0],) * 3 if len(v) == 1 else (v[0], v[1], v[2])  # type: ignore[return-value]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller volumes and fewer rounds")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds per contender (default 7, quick 3)")
    p.add_argument("--batch", type=int, default=2, help="window batch of both contenders (default 2)")
    p.add_argument("--channels", default="8,16,32,64", help="ag_unet stage widths for the throughput run")
    p.add_argument("--out", default="runs/bench/bench_predict.json", help="JSON results")
    p.add_argument("--child", choices=list(CONTENDERS), help=argparse.SUPPRESS)
    p.add_argument("--size", help=argparse.SUPPRESS)
    p.add_argument("--window", default=None, help="window for the memory sweep (default 128)")
    args = p.parse_args()

    if args.child:
        print(json.dumps(child(args.child, _triple(args.size), _triple(args.window), args.batch)))
        return 0

    rounds = args.rounds or (3 if args.quick else 7)
    channels = tuple(int(c) for c in args.channels.split(","))
    env = environment()
    print(
        f"cpu: {env['cpu']} ({env['cpu_count']} cores, {env['torch_threads']} torch threads), "
        f"load {env['load_average']}, torch {env['torch']}, monai {env['monai']}"
    )

    scenarios = [
        (f"ag_unet {channels}", unet_network(channels), (96, 96, 64), (64,) * 3),
        (
            "pointwise (stitching-bound)",
            pointwise_network(),
            (128, 128, 96) if args.quick else (256, 256, 160),
            (64,) * 3,
        ),
    ]
    tput = []
    for name, net, size, window in scenarios:
        print(f"throughput: {name}, volume {size}, window {window} ...", flush=True)
        tput.append(throughput(name, net, size, window, args.batch, rounds))
    rows = []
    for t in tput:
        rows.append(
            [
                t["scenario"],
                "x".join(map(str, t["size"])),
                f"{t['voxels_per_s']['medattn'] / 1e6:.2f}",
                f"{t['voxels_per_s']['monai'] / 1e6:.2f}",
                f"{t['speedup_median']:.2f} [{t['speedup_q1_q3'][0]:.2f}, {t['speedup_q1_q3'][1]:.2f}]",
                f"{t['cpu_speedup_median']:.2f} [{t['cpu_speedup_q1_q3'][0]:.2f}, {t['cpu_speedup_q1_q3'][1]:.2f}]",
                f"{t['label_agreement']:.6f}",
            ]
        )
    print()
    header = ["network", "volume", "ours Mvox/s", "MONAI Mvox/s", "wall ratio [IQR]", "CPU-time ratio [IQR]"]
    print(format_table([*header, "labels equal"], rows))
    print("(ratios are MONAI's time over ours per round, > 1: ours is faster; Mvox/s: input voxels per wall second)")

    window = _triple(args.window) if args.window else (128, 128, 128)
    sizes = QUICK_SIZES if args.quick else FULL_SIZES
    mem = []
    for size in sizes:
        print(f"peak memory: volume {size}, window {window} ...", flush=True)
        repeats = 1 if math.prod(size) > 20e6 else 3  # small volumes are cheap and noisier
        mem.append(memory(size, window, args.batch, repeats))
    mrows = []
    for m in mem:
        mrows.append(
            [
                "x".join(map(str, m["size"])),
                f"{m['voxels'] / 1e6:.1f}",
                f"{m['medattn']['peak_kib'] / 1024:.0f}",
                f"{m['monai']['peak_kib'] / 1024:.0f}",
                f"{m['medattn']['bytes_per_voxel']:.2f}",
                f"{m['monai']['bytes_per_voxel']:.2f}",
                f"{m['ratio']:.2f}",
                f"{m['medattn']['seconds']:.1f}/{m['monai']['seconds']:.1f}",
            ]
        )
    print()
    print(
        format_table(
            ["volume", "Mvoxel", "ours MiB", "MONAI MiB", "ours B/vox", "MONAI B/vox", "ratio", "s ours/MONAI"], mrows
        )
    )
    print("(peak growth over the input; add 4 B/voxel for the float32 input itself)")

    speed_ok = all(min(t["speedup_median"], t["cpu_speedup_median"]) >= TARGET_THROUGHPUT for t in tput)
    largest = mem[-1]
    mem_ok = largest["ratio"] <= TARGET_MEMORY
    print()
    print(
        f"target throughput ratio >= {TARGET_THROUGHPUT}: {'met' if speed_ok else 'NOT met'} "
        "(" + ", ".join(f"wall {t['speedup_median']:.2f}, CPU {t['cpu_speedup_median']:.2f}" for t in tput) + ")"
    )
    print(
        f"target memory ratio <= {TARGET_MEMORY} at {'x'.join(map(str, largest['size']))}: "
        f"{'met' if mem_ok else 'NOT met'} ({largest['ratio']:.2f})"
    )
    doc = {
        "environment": env,
        "quick": args.quick,
        "rounds": rounds,
        "throughput": tput,
        "memory": mem,
        "targets": {
            "throughput": TARGET_THROUGHPUT,
            "memory": TARGET_MEMORY,
            "throughput_met": speed_ok,
            "memory_met": mem_ok,
        },
    }
    print(f"results written to {write_json(args.out, doc)}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
