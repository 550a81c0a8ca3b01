"""Shared helpers for the benchmarks in ``bench/``: interleaved timing, machine description, JSON and tables.

JSON and tables come from the package (:func:`medattn.jsonio.write_json`, :func:`medattn.text.format_table`).

Timing rules every benchmark follows: contenders are timed in the same process and interleaved (one call of each
per round, in an order that rotates every round) so that a slow spell of the machine hits all of them alike;
each result reports the median, the fastest run and the spread (interquartile range); a ratio between two
contenders is computed per round and its median reported, which cancels drifts that span a round.

Every benchmark also writes, in its JSON, ``headlines``: one :class:`Headline` per question it answers (a ratio
against the baseline of the same run, its spread and the goal), which ``bench/run_all.py`` gathers into one table.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medattn.jsonio import write_json as write_json  # re-exported: every benchmark writes its JSON with it
from medattn.text import format_table as format_table  # re-exported: every benchmark prints its tables with it

REPO = Path(__file__).resolve().parents[1]
#: The real datasets beside the checkout (read-only; never copied into the project).
SHARED_DATA = REPO.parent / "shared" / "data"


def brats_flair_scans() -> list[Path]:
    """The BraTS FLAIR volumes under :data:`SHARED_DATA`, sorted (empty without the shared data)."""
    return sorted(SHARED_DATA.glob("BraTS2018_sites/*/*/FLAIR.nii.gz"))


@dataclass(frozen=True)
class Stats:
    """Seconds per call over the timed rounds."""

    median: float
    best: float
    q1: float
    q3: float
    runs: int

    @classmethod
    def of(cls, times: Sequence[float]) -> Stats:
        q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
        return cls(statistics.median(times), min(times), q[0], q[2], len(times))

    @property
    def spread(self) -> float:
        """Interquartile range relative to the median (0.05 = +-2.5 %)."""
        return (self.q3 - self.q1) / self.median if self.median > 0 else 0.0


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
"""``wall``: elapsed time; ``cpu``: CPU time of this process (all its threads), which leaves out the time other
processes hold the cores: the steadier measure on a shared machine, exact with one thread (``--threads 1``)."""


def time_interleaved_clocks(
    contenders: Mapping[str, Callable[[], Any]],
    rounds: int = 7,
    warmup: int = 1,
    sync: Callable[[], None] | None = None,
    clocks: Sequence[str] = ("wall", "cpu"),
) -> dict[str, dict[str, list[float]]]:
    """Time each zero-argument callable ``rounds`` times, interleaved (the order rotates every round), after
    ``warmup`` untimed rounds, on every clock of ``clocks`` at once (see :data:`CLOCKS`).

    Returns the raw per-round seconds: ``{clock: {contender: [seconds, ...]}}`` (for paired ratios).
    """
    unknown = [c for c in clocks if c not in CLOCKS]
    if unknown:
        raise ValueError(f"clocks: {unknown} not among {sorted(CLOCKS)}")
    names = list(contenders)
    raw: dict[str, dict[str, list[float]]] = {c: {n: [] for n in names} for c in clocks}
    for r in range(warmup + rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            start = {c: CLOCKS[c]() for c in clocks}
            contenders[name]()
            if sync is not None:
                sync()
            if r >= warmup:
                for c in clocks:
                    raw[c][name].append(CLOCKS[c]() - start[c])
    return raw


def time_interleaved(
    contenders: Mapping[str, Callable[[], Any]],
    rounds: int = 7,
    warmup: int = 1,
    sync: Callable[[], None] | None = None,
    clock: str = "wall",
) -> tuple[dict[str, Stats], dict[str, list[float]]]:
    """:func:`time_interleaved_clocks` on one clock: the :class:`Stats` per contender and the raw per-round
    seconds (for paired ratios)."""
    if clock not in CLOCKS:
        raise ValueError(f"clock: {clock!r} is not one of {sorted(CLOCKS)}")
    raw = time_interleaved_clocks(contenders, rounds, warmup, sync, (clock,))[clock]
    return {n: Stats.of(v) for n, v in raw.items()}, raw


def paired_ratio(raw: Mapping[str, Sequence[float]], numerator: str, denominator: str) -> Stats:
    """Per-round ``numerator / denominator`` time ratios, summarised (median, best = lowest, quartiles)."""
    ratios = [a / b for a, b in zip(raw[numerator], raw[denominator])]
    return Stats.of(ratios)


def git_commit() -> str:
    """The checkout's commit, with ``+dirty`` when tracked files differ from it; ``unknown`` outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def machine() -> dict[str, Any]:
    """The machine: host, platform, CPU model, logical cores, RAM (GiB), load average and the GPU if any."""
    import torch

    return {
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "ram_gib": _ram_gib(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def versions() -> dict[str, str | None]:
    """Versions of Python and of the libraries the benchmarks measure (None where one is not installed)."""
    from importlib import metadata

    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name, dist in (
        ("torch", "torch"),
        ("monai", "monai"),
        ("avalanche", "avalanche-lib"),
        ("numpy", "numpy"),
        ("nibabel", "nibabel"),
    ):
        try:
            out[name] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def environment() -> dict[str, Any]:
    """Machine, load, library versions, thread settings and commit, for the JSON of every benchmark."""
    import torch

    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **machine(),
        **versions(),
        "torch_threads": torch.get_num_threads(),
        "onednn": bool(torch.backends.mkldnn.is_available()),
        "git_commit": git_commit(),
    }


def describe(env: Mapping[str, Any]) -> str:
    """One line naming the machine, its load and the versions, for the top of a benchmark's output."""
    return (
        f"# {env['cpu']}, {env['cpu_count']} CPUs, {env['ram_gib']} GiB, load {env['load_average']}, "
        f"torch {env['torch']} ({env['torch_threads']} threads), monai {env['monai']}, commit {env['git_commit']}"
        + (f", GPU {env['cuda']}" if env.get("cuda") else "")
    )


# ---- the options every new benchmark shares --------------------------------------------------------------------


def common_parser(doc: str, out: str) -> argparse.ArgumentParser:
    """A parser described by the script's docstring ``doc`` with the options every new benchmark shares:
    ``--quick``, ``--smoke``, ``--rounds``, ``--device``, ``--threads`` and ``--out`` (default ``out``)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller sizes and fewer rounds (part of run_all --quick)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, one round: checks the script runs, not timings")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds per contender (default: by mode)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's default, one per core)"
    )
    p.add_argument("--out", default=out, help=f"JSON results (default {out})")
    return p


def mode_of(args: argparse.Namespace) -> str:
    """``smoke``, ``quick`` or ``full`` from the common flags."""
    return "smoke" if args.smoke else "quick" if args.quick else "full"


def prepare(args: argparse.Namespace) -> Any:
    """Apply ``--threads`` (a benchmark script may; the library never does), seed torch and check ``--device``;
    returns the ``torch.device``."""
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available on this machine")
    return device


def synchronizer(device: Any) -> Callable[[], None] | None:
    """A callable that waits for ``device``'s queued work (CUDA), or None where calls are synchronous."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return lambda: torch.cuda.synchronize(dev)
    return None


@dataclass(frozen=True)
class Setup:
    """What :func:`start` settled: the device (and its name for headlines), the mode and the environment."""

    device: Any
    device_name: str
    mode: str
    env: dict[str, Any]


def start(args: argparse.Namespace) -> Setup:
    """The start of every benchmark that uses :func:`common_parser`: :func:`prepare`, describe the
    environment and print it."""
    device = prepare(args)
    setup = Setup(device, device_name(device), mode_of(args), environment())
    print(describe(setup.env), flush=True)
    return setup


def finish(out: str | Path, doc: Any) -> None:
    """Write the results (:func:`write_json`) and say where."""
    print(f"results written to {write_json(out, doc)}")


# ---- headlines: what run_all gathers ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Headline:
    """One answer of a benchmark: ``contender`` against ``baseline`` as a ratio, summarised over paired repeats.

    Attributes:
        question: the issue's question (``"inference"``, ``"training"``, ``"memory"``, ``"loading"``).
        contender, baseline: what was compared, in words.
        quantity: what the ratio is, e.g. ``"throughput x (baseline s / contender s)"``.
        median, q1, q3: the median and quartiles of the per-round (or per-repeat) ratios.
        goal: e.g. ``">= 3"``, or None where the issue sets none.
        met: whether the median meets the goal (None without one).
        note: anything needed to read the number (a second clock, the Dice that goes with it, ...).
        device: where it was measured (``cpu`` or the GPU's name).
    """

    question: str
    contender: str
    baseline: str
    quantity: str
    median: float
    q1: float
    q3: float
    goal: str | None = None
    met: bool | None = None
    note: str = ""
    device: str = "cpu"


def meets(value: float, goal: str | None) -> bool | None:
    """Whether ``value`` meets a goal written ``">= 3"`` or ``"<= 1.05"`` (None without a goal)."""
    if goal is None:
        return None
    op, target = goal.split()
    if op not in (">=", "<="):
        raise ValueError(f"goal: expected '>= x' or '<= x', got {goal!r}")
    return value >= float(target) if op == ">=" else value <= float(target)


def headline(
    question: str,
    contender: str,
    baseline: str,
    quantity: str,
    ratios: Stats,
    goal: str | None = None,
    note: str = "",
    device: str = "cpu",
    met: bool | None = None,
) -> Headline:
    """A :class:`Headline` from summarised ratios; ``met`` defaults to the median against ``goal``."""
    return Headline(
        question,
        contender,
        baseline,
        quantity,
        ratios.median,
        ratios.q1,
        ratios.q3,
        goal,
        meets(ratios.median, goal) if met is None else met,
        note,
        device,
    )


def device_name(device: Any) -> str:
    """``cpu``, or the GPU's name for a CUDA device (for :attr:`Headline.device`)."""
    import torch

    dev = torch.device(device)
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else dev.type


def format_ratio(median: float, q1: float, q3: float) -> str:
    """``2.31 [2.10, 2.52]``: the median and, in brackets, the interquartile range."""
    return f"{median:.2f} [{q1:.2f}, {q3:.2f}]"


def format_stats(s: Stats) -> str:
    """:func:`format_ratio` of a :class:`Stats`."""
    return format_ratio(s.median, s.q1, s.q3)


# ---- fresh processes for memory peaks --------------------------------------------------------------------------

_FORKSERVER_PRELOAD = ["torch", "monai.inferers", "medattn.infer.sliding"]


def run_fresh(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a new process forked from a clean server that has torch and MONAI imported, so each call
    starts with an empty heap without paying the imports again; returns its (picklable) result.

    ``fn`` must be importable by name (a module-level function). The server starts on first use (Linux, macOS).
    """
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(_FORKSERVER_PRELOAD)
    with ctx.Pool(1) as pool:
        return pool.apply(fn, args)
