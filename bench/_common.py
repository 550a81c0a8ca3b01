"""Shared helpers for the benchmarks in ``bench/``: interleaved timing, machine description, JSON and tables.

Timing rules every benchmark follows: contenders are timed in the same process and interleaved (one call of each
per round, in an order that rotates every round) so that a slow spell of the machine hits all of them alike;
each result reports the median, the fastest run and the spread (interquartile range); a ratio between two
contenders is computed per round and its median reported, which cancels drifts that span a round.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


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


def time_interleaved(
    contenders: Mapping[str, Callable[[], Any]],
    rounds: int = 7,
    warmup: int = 1,
    sync: Callable[[], None] | None = None,
    clock: str = "wall",
) -> tuple[dict[str, Stats], dict[str, list[float]]]:
    """Time each zero-argument callable ``rounds`` times, interleaved, after ``warmup`` untimed rounds.

    Returns the :class:`Stats` per contender and the raw per-round seconds (for paired ratios).
    """
    if clock not in CLOCKS:
        raise ValueError(f"clock: {clock!r} is not one of {sorted(CLOCKS)}")
    now = CLOCKS[clock]
    names = list(contenders)
    raw: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            start = now()
            contenders[name]()
            if sync is not None:
                sync()
            elapsed = now() - start
            if r >= warmup:
                raw[name].append(elapsed)
    return {n: Stats.of(raw[n]) for n in names}, raw


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


def environment() -> dict[str, Any]:
    """Machine, load and library versions, for the JSON of every benchmark."""
    import torch

    env: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "onednn": bool(torch.backends.mkldnn.is_available()),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "git_commit": git_commit(),
    }
    try:
        import monai

        env["monai"] = monai.__version__
    except ImportError:
        env["monai"] = None
    return env


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, tuples and paths to plain JSON types (recursively)."""
    if hasattr(obj, "__dataclass_fields__"):
        return to_jsonable(asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: str | Path, doc: Any) -> Path:
    """Write ``doc`` as indented JSON atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(to_jsonable(doc), indent=2) + "\n")
    os.replace(tmp, path)
    return path


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table with a rule under the header; cells are ``str()``-ed and left-aligned."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
