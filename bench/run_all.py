"""Run every benchmark of ``bench/``, print one table of their headline ratios and write one JSON.

    .venv/bin/python bench/run_all.py                  # sized for about 10 minutes on 2 idle cores
    .venv/bin/python bench/run_all.py --quick          # sized for about 2-3 minutes: smaller sizes, fewer rounds
    .venv/bin/python bench/run_all.py --device cuda    # the same scripts on a GPU

On a machine other jobs load, every script takes longer in proportion (the ratios hold better than the times:
they are paired per round); the JSON keeps the load average at the start and the end.

The questions (issue 7), one script each, run one after the other, each in its own process (``--in-process``
imports them instead, which saves the start-up of each but shares one process's heap and threads):

==========  ===========================  =========================================================================
question    script                       headline ratio (goal)
==========  ===========================  =========================================================================
inference   bench_inference.py           medattn ag_unet + inferer vs MONAI AttentionUnet + sliding_window_inference:
                                         throughput (>= 3, at equal or better Dice after the same training); vs
                                         MONAI UNet; achieved GFLOP/s against plain Conv3d on this machine
training    bench_train.py               Avalanche SegmentationStrategy vs a plain PyTorch loop (<= 1.05); the
                                         training step now vs before medattn's norm backward (>= 1.5)
memory      bench_predict.py --only      peak bytes/voxel of ``predict`` vs MONAI's stitching, largest volume of a
            memory                       sweep (<= 0.5)
loading     bench_loading.py             NIfTI to tensor: medattn's loader vs MONAI LoadImage (and the raw floor)
==========  ===========================  =========================================================================

Every ratio comes from contenders interleaved in the same run and repeated: the table shows the median of the
per-round ratios and, in brackets, their interquartile range. The JSON (default ``runs/bench/run_all.json``) holds
the machine, the library versions, the git commit, the date, the load average before and after, each script's
command, duration and full results, and the headlines. The exit status is 0 when every script ran (goals met or
not), 1 when one failed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (
    REPO,
    format_ratio,
    format_table,
    git_commit,
    machine,
    mode_of,
    versions,
    write_json,
)

FORMAT = "medattn-bench-suite"
VERSION = 1


@dataclass(frozen=True)
class Script:
    """One benchmark: its question, its module in ``bench/`` and the arguments it gets in every mode."""

    question: str
    module: str
    args: tuple[str, ...] = ()


SCRIPTS = (
    Script("inference", "bench_inference"),
    Script("training", "bench_train"),
    Script("memory", "bench_predict", ("--only", "memory")),
    Script("loading", "bench_loading"),
)


def script_argv(script: Script, mode: str, device: str, threads: int | None, out: Path) -> list[str]:
    argv = [*script.args, "--device", device, "--out", str(out)]
    if mode != "full":
        argv.append(f"--{mode}")
    if threads is not None:
        argv += ["--threads", str(threads)]
    return argv


def run_script(script: Script, argv: list[str], in_process: bool) -> tuple[int, str]:
    """Run one benchmark; returns (exit status, error text or "")."""
    if in_process:
        module = importlib.import_module(f"bench.{script.module}")
        try:
            return int(module.main(argv) or 0), ""
        except Exception as e:  # a failing benchmark must not stop the others
            return 1, f"{type(e).__name__}: {e}"
    cmd = [sys.executable, str(REPO / "bench" / f"{script.module}.py"), *argv]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, check=False, stderr=subprocess.PIPE, text=True)
    sys.stderr.write(proc.stderr)
    return proc.returncode, proc.stderr[-2000:] if proc.returncode else ""


def summary_table(headlines: list[dict[str, Any]]) -> str:
    """The headlines as one table (numbered), then their notes by number."""
    rows, notes = [], []
    for i, h in enumerate(headlines, 1):
        met = "-" if h["met"] is None else "pass" if h["met"] else "FAIL"
        ratio = format_ratio(h["median"], h["q1"], h["q3"])
        rows.append([i, h["question"], h["contender"], h["baseline"], h["quantity"], ratio, h["goal"] or "-", met])
        if h["note"]:
            notes.append(f"{i:>2}. {h['note']} ({h['device']})")
    header = ["#", "question", "contender", "baseline", "ratio", "median [IQR]", "goal", "result"]
    return format_table(header, rows) + "\n\n" + "\n".join(notes)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="the ~2-3 minute version")
    mode.add_argument("--smoke", action="store_true", help="tiny sizes, one round: checks the suite runs (tests)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N, passed to every script")
    p.add_argument("--threads", type=int, default=None, help="torch threads of every script (default: torch's)")
    p.add_argument("--only", nargs="+", choices=[s.question for s in SCRIPTS], help="run these questions only")
    p.add_argument("--in-process", action="store_true", help="import the scripts instead of starting each")
    p.add_argument("--out", default="runs/bench/run_all.json", help="JSON results (default runs/bench/run_all.json)")
    args = p.parse_args(argv)

    run_mode = mode_of(args)
    out = Path(args.out)
    parts = out.parent / f"{out.stem}_parts"
    started = time.perf_counter()
    doc: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "mode": run_mode,
        "device": args.device,
        "threads": args.threads,
        "machine": machine(),
        "versions": versions(),
        "git_commit": git_commit(),
        "scripts": {},
        "headlines": [],
    }
    for script in SCRIPTS:
        if args.only and script.question not in args.only:
            continue
        part = parts / f"{script.module}.json"
        argv_s = script_argv(script, run_mode, args.device, args.threads, part)
        print(f"\n=== {script.question}: bench/{script.module}.py {' '.join(argv_s)}", flush=True)
        t0 = time.perf_counter()
        part.unlink(missing_ok=True)
        status, error = run_script(script, argv_s, args.in_process)
        entry: dict[str, Any] = {
            "command": ["bench/" + script.module + ".py", *argv_s],
            "seconds": time.perf_counter() - t0,
            "exit_status": status,
        }
        if part.exists():
            result = json.loads(part.read_text())
            entry["results"] = result
            doc["headlines"] += result.get("headlines", [])
        else:
            entry["error"] = error or "the script wrote no results"
        doc["scripts"][script.question] = entry
    doc["seconds"] = time.perf_counter() - started
    doc["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None

    minutes = doc["seconds"] / 60
    print(f"\n=== medattn benchmarks ({run_mode}, {args.device}), {minutes:.1f} min, commit {doc['git_commit']}")
    m = doc["machine"]
    print(
        f"{m['cpu']}, {m['cpu_count']} CPUs, {m['ram_gib']} GiB; load {m['load_average']} at the start, "
        f"{doc['load_average_end']} at the end; torch {doc['versions']['torch']}, monai {doc['versions']['monai']}, "
        f"avalanche {doc['versions']['avalanche']}\n"
    )
    print(summary_table(doc["headlines"]))
    failed = [q for q, e in doc["scripts"].items() if "error" in e or e["exit_status"] != 0]
    for q in failed:
        print(f"\n{q}: FAILED (exit {doc['scripts'][q]['exit_status']}): {doc['scripts'][q].get('error', '')}")
    print(f"\nresults written to {write_json(out, doc)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
