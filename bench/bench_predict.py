"""Benchmark: ``medattn predict``'s sliding-window inferer against MONAI's ``sliding_window_inference``.

    .venv/bin/python bench/bench_predict.py                  # throughput + memory up to 512x512x300 (a few minutes)
    .venv/bin/python bench/bench_predict.py --quick          # fewer rounds, one process per memory point
    .venv/bin/python bench/bench_predict.py --only memory    # the memory sweep alone (what bench/run_all.py runs)

Both contenders produce a label volume from the same network, volume, window, overlap (0.5), Gaussian blending
and window batch: ours is ``SlidingWindowPredictor(...)(image).labels`` (slab stitching, labels only); MONAI's is
``sliding_window_inference(...).argmax(1)``, its default way to get labels. Float32, eval mode, inference mode, the
process's default threads.

1. **Throughput** (input voxels per second), interleaved rounds in one process, median and interquartile spread,
   ratio per round (MONAI time / ours, > 1: ours is faster) of the wall clock and of the process's CPU time (less
   disturbed by other processes on a shared machine; the target must hold on both): on a small ``ag_unet``
   (network-bound) and on a per-voxel linear classifier (:class:`Pointwise`, stitching-bound: any overhead of ours
   shows).
2. **Peak memory against volume size**, a fresh process per (contender, size, repeat) so peaks do not mix
   (forked from a server with torch and MONAI already imported; the contenders alternate, ``--repeats`` times
   each): the growth of the resident set's high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs``)
   over the resident set before the call, after the input is allocated and the network warmed up (Linux only).
   Bytes per voxel exclude the float32 input (4 B/voxel, the same for both). The network is :class:`Pointwise`,
   so the number is the stitching's own cost; a real network adds its per-window activations, the same for both
   contenders. With ``--device cuda`` the volume, the network and (where it fits) the stitching live on the GPU
   and the peak is CUDA's allocated-memory high-water mark instead.

Targets (issue 4): throughput ratio >= 1.0; peak bytes per voxel of ours <= 0.5 x MONAI's (at the largest volume of
the sweep; the ratio of each repeat pair is summarised by its median and quartiles).
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (
    Headline,
    Stats,
    common_parser,
    finish,
    format_stats,
    format_table,
    headline,
    paired_ratio,
    run_fresh,
    start,
    synchronizer,
    time_interleaved_clocks,
)

TARGET_THROUGHPUT = 1.0
TARGET_MEMORY = 0.5
CLASSES = 3
OVERLAP = 0.5
SIZES = {
    "full": [(64, 64, 64), (128, 128, 128), (256, 256, 160), (512, 512, 300)],
    "quick": [(128, 128, 128), (256, 256, 160), (512, 512, 300)],  # one process each: peaks repeat exactly
    "smoke": [(96, 96, 64)],
}
MEMORY_WINDOW = {"full": 128, "quick": 128, "smoke": 32}


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


def ours(net: nn.Module, window: tuple[int, ...], batch: int, device: torch.device) -> Callable[[torch.Tensor], Any]:
    """medattn's labels-only prediction: ``SlidingWindowPredictor(...)(x).labels`` (stitching device: auto)."""
    from medattn.infer.sliding import SlidingWindowPredictor

    predictor = SlidingWindowPredictor(net, window, overlap=OVERLAP, window_batch=batch, sw_device=device)
    return lambda x: predictor(x).labels


def monai(
    net: nn.Module, window: tuple[int, ...], batch: int, device: torch.device
) -> Callable[[torch.Tensor], torch.Tensor]:
    """MONAI's default way to labels: ``sliding_window_inference(...).argmax(1)`` (Gaussian blending)."""
    from monai.inferers import sliding_window_inference

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out = sliding_window_inference(
                x[None], window, batch, net, overlap=OVERLAP, mode="gaussian", sw_device=device, device=device
            )
            return cast(torch.Tensor, out).argmax(1)[0]

    return run


CONTENDERS = {"medattn": ours, "monai": monai}


# ---- throughput ------------------------------------------------------------------------------------------------


def throughput(
    name: str,
    net: nn.Module,
    size: tuple[int, ...],
    window: tuple[int, ...],
    batch: int,
    rounds: int,
    device: torch.device,
) -> dict[str, Any]:
    """Interleaved timing on the wall clock and on this process's CPU time (all its threads), which other
    processes on a shared machine disturb far less than the wall clock."""
    x = torch.randn(1, *size, device=device)
    fns = {k: make(net, window, batch, device) for k, make in CONTENDERS.items()}
    a, b = fns["medattn"](x), fns["monai"](x)
    agree = float((a.long() == b.long()).float().mean())
    calls: dict[str, Callable[[], Any]] = {k: functools.partial(f, x) for k, f in fns.items()}
    raw = time_interleaved_clocks(calls, rounds=rounds, sync=synchronizer(device))
    voxels = math.prod(size)
    wall = paired_ratio(raw["wall"], "monai", "medattn")  # MONAI seconds / ours, per round: > 1, ours is faster
    cpu = paired_ratio(raw["cpu"], "monai", "medattn")
    seconds = {k: Stats.of(v) for k, v in raw["wall"].items()}
    return {
        "scenario": name,
        "size": size,
        "window": window,
        "window_batch": batch,
        "label_agreement": agree,
        "seconds": seconds,
        "cpu_seconds": {k: Stats.of(v) for k, v in raw["cpu"].items()},
        "voxels_per_s": {k: voxels / v.median for k, v in seconds.items()},
        "speedup": wall,
        "cpu_speedup": cpu,
    }


# ---- peak memory (fresh process) -------------------------------------------------------------------------------


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def child(contender: str, size: tuple[int, ...], window: tuple[int, ...], batch: int, device: str) -> dict[str, Any]:
    """Run one contender once on one volume (in a fresh process) and report the growth of the memory peak: the
    resident set's on the CPU, CUDA's allocated bytes on a GPU."""
    dev = torch.device(device)
    net = pointwise_network().to(dev)
    fn = CONTENDERS[contender](net, window, batch, dev)
    fn(torch.randn(1, *(w + 3 for w in window), device=dev))  # warm up: allocator, kernels, imports
    x = torch.randn(1, *size, device=dev)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident set
        base = _status_kb("VmRSS") * 1024
    start = time.perf_counter()
    labels = fn(x)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        peak = torch.cuda.max_memory_allocated(dev)
    else:
        peak = _status_kb("VmHWM") * 1024
    seconds = time.perf_counter() - start
    del labels
    return {"peak_bytes": peak - base, "seconds": seconds}


def memory(
    size: tuple[int, ...], window: tuple[int, ...], batch: int, repeats: int, device: torch.device
) -> dict[str, Any]:
    """Per contender, ``repeats`` fresh processes (contenders alternating): the median peak growth, bytes per voxel
    and seconds, and the per-repeat ratio ours / MONAI of the peaks."""
    voxels = math.prod(size)
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in CONTENDERS}
    for r in range(repeats):
        order = list(CONTENDERS) if r % 2 == 0 else list(reversed(CONTENDERS))
        for contender in order:
            runs[contender].append(run_fresh(child, contender, size, window, batch, str(device)))
    out: dict[str, Any] = {"size": size, "voxels": voxels, "window": window, "repeats": repeats}
    for contender, rs in runs.items():
        peaks = [r["peak_bytes"] for r in rs]
        out[contender] = {
            "peak_bytes": statistics.median(peaks),
            "peak_bytes_runs": peaks,
            "bytes_per_voxel": statistics.median(peaks) / voxels,
            "seconds": statistics.median(r["seconds"] for r in rs),
        }
    pairs = [
        a / b if b > 0 else math.inf for a, b in zip(out["medattn"]["peak_bytes_runs"], out["monai"]["peak_bytes_runs"])
    ]
    out["ratio"] = Stats.of(pairs)
    return out


# ---- main ------------------------------------------------------------------------------------------------------


def _triple(text: str) -> tuple[int, int, int]:
    v = [int(s) for s in text.split(",")]
    if len(v) not in (1, 3):
        raise argparse.ArgumentTypeError(f"expected one or three integers, got {text!r}")
    return (v[0], v[0], v[0]) if len(v) == 1 else (v[0], v[1], v[2])


def _sizes(text: str) -> list[tuple[int, int, int]]:
    return [_triple(s) for s in text.split(";")]


def run_throughput(args: argparse.Namespace, mode: str, device: torch.device, dev_name: str) -> tuple[Any, Any]:
    rounds = args.rounds or {"full": 7, "quick": 3, "smoke": 1}[mode]
    channels = tuple(int(c) for c in args.channels.split(","))
    tiny = mode == "smoke"
    scenarios = [
        (
            f"ag_unet {channels}",
            unet_network(channels).to(device),
            (40, 40, 32) if tiny else (96, 96, 64),
            32 if tiny else 64,
        ),
        (
            "pointwise (stitching-bound)",
            pointwise_network().to(device),
            {"full": (256, 256, 160), "quick": (128, 128, 96), "smoke": (48, 48, 40)}[mode],
            32 if tiny else 64,
        ),
    ]
    tput = []
    for name, net, size, w in scenarios:
        print(f"throughput: {name}, volume {size}, window {w}^3 ...", flush=True)
        tput.append(throughput(name, net, size, (w, w, w), args.batch, rounds, device))
    rows = [
        [
            t["scenario"],
            "x".join(map(str, t["size"])),
            f"{t['voxels_per_s']['medattn'] / 1e6:.2f}",
            f"{t['voxels_per_s']['monai'] / 1e6:.2f}",
            format_stats(t["speedup"]),
            format_stats(t["cpu_speedup"]),
            f"{t['label_agreement']:.6f}",
        ]
        for t in tput
    ]
    print()
    header = ["network", "volume", "ours Mvox/s", "MONAI Mvox/s", "wall ratio [IQR]", "CPU-time ratio [IQR]"]
    print(format_table([*header, "labels equal"], rows))
    print("(ratios are MONAI's time over ours per round, > 1: ours is faster; Mvox/s: input voxels per wall second)")
    met = all(min(t["speedup"].median, t["cpu_speedup"].median) >= TARGET_THROUGHPUT for t in tput)
    heads = [
        headline(
            "inference",
            f"medattn inferer, {t['scenario']}",
            "MONAI SWI, same network",
            "throughput x",
            t["speedup"],
            f">= {TARGET_THROUGHPUT}",
            f"CPU-time ratio {t['cpu_speedup'].median:.2f}; labels equal on {t['label_agreement']:.4%} of voxels",
            dev_name,
        )
        for t in tput
    ]
    return {"rounds": rounds, "results": tput, "met": met}, heads


def run_memory(args: argparse.Namespace, mode: str, device: torch.device, dev_name: str) -> tuple[Any, Headline]:
    w = args.window or MEMORY_WINDOW[mode]
    window = (w, w, w)
    sizes = args.sizes or SIZES[mode]
    repeats = args.repeats or {"full": 3, "quick": 1, "smoke": 1}[mode]
    mem = []
    for size in sizes:
        print(f"peak memory: volume {size}, window {window}, {repeats} fresh process(es) each ...", flush=True)
        mem.append(memory(size, window, args.batch, repeats, device))
    rows = [
        [
            "x".join(map(str, m["size"])),
            f"{m['voxels'] / 1e6:.1f}",
            f"{m['medattn']['peak_bytes'] / 2**20:.0f}",
            f"{m['monai']['peak_bytes'] / 2**20:.0f}",
            f"{m['medattn']['bytes_per_voxel']:.2f}",
            f"{m['monai']['bytes_per_voxel']:.2f}",
            format_stats(m["ratio"]),
            f"{m['medattn']['seconds']:.1f}/{m['monai']['seconds']:.1f}",
        ]
        for m in mem
    ]
    print()
    header = ["volume", "Mvoxel", "ours MiB", "MONAI MiB", "ours B/vox", "MONAI B/vox", "ratio [IQR]", "s ours/MONAI"]
    print(format_table(header, rows))
    print("(peak growth over the input; add 4 B/voxel for the float32 input itself)")
    largest = mem[-1]
    head = headline(
        "memory",
        "medattn predict",
        "MONAI SWI + argmax",
        f"B/voxel ratio, {'x'.join(map(str, largest['size']))}",
        largest["ratio"],
        f"<= {TARGET_MEMORY}",
        f"{largest['medattn']['bytes_per_voxel']:.2f} vs {largest['monai']['bytes_per_voxel']:.2f} B/voxel, "
        f"window {w}^3, {repeats} fresh process(es) each; peak growth over the input, labels only",
        dev_name,
    )
    return {"window": window, "repeats": repeats, "results": mem, "met": head.met}, head


def main(argv: list[str] | None = None) -> int:
    p = common_parser(__doc__, "runs/bench/bench_predict.json")
    p.add_argument("--only", choices=["throughput", "memory"], default=None, help="run one of the two parts")
    p.add_argument("--batch", type=int, default=2, help="window batch of both contenders (default 2)")
    p.add_argument("--channels", default="8,16,32,64", help="ag_unet stage widths for the throughput run")
    p.add_argument("--window", type=int, default=None, help="cubic window edge of the memory sweep (default 128)")
    p.add_argument("--sizes", type=_sizes, default=None, help="memory sweep volumes, e.g. '64;128,128,96'")
    p.add_argument(
        "--repeats", type=int, default=None, help="fresh processes per contender and size (default 3, quick 1)"
    )
    args = p.parse_args(argv)

    setup = start(args)
    device, mode, dev_name, env = setup.device, setup.mode, setup.device_name, setup.env
    doc: dict[str, Any] = {"environment": env, "mode": mode, "device": dev_name}
    heads: list[Headline] = []
    if args.only in (None, "throughput"):
        doc["throughput"], tput_heads = run_throughput(args, mode, device, dev_name)
        heads += tput_heads
    if args.only in (None, "memory"):
        doc["memory"], mem_head = run_memory(args, mode, device, dev_name)
        heads.append(mem_head)
    print()
    for h in heads:
        verdict = "met" if h.met else "NOT met"
        print(f"target {h.quantity} {h.goal}: {verdict} ({h.median:.2f}) - {h.contender}")
    doc["headlines"] = heads
    finish(args.out, doc)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
