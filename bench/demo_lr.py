"""The demo's adaptation learning rate, chosen on the phantoms' validation cases (docs/results.md, "The demo").

    .venv/bin/python bench/demo_lr.py run --out runs/demo_lr      # 3 demos, then 9 adapt runs (see below)
    .venv/bin/python bench/demo_lr.py report --out runs/demo_lr   # the Markdown table and the choice

For each seed (0, 1, 2) ``medattn demo --seed S`` runs once with its defaults, which gives the model trained on
scanner A and the phantoms. Then ``medattn adapt`` adapts that model through A, B, C and D exactly as the demo
does (the demo's own ``runs/adapt/config.json``: epochs, patches, replay's memory, augmentation) with replay and
joint training, at each learning rate of :data:`RATES`, with ``--eval-split val``: every Dice is measured on each
scanner's 6 validation phantoms, so the 10 test phantoms the demo reports choose nothing. The chosen rate is the
one with the best mean over the seeds of replay's final average Dice (the method the demo shows; joint training
is its reference row, not the target). One thread per run, as the demo; each run is skipped when its folder
already holds a finished run. About 33 minutes of CPU in all on the 2-core AMD EPYC (2026-12-07): each demo about 4
minutes, each adapt run about 2.3 (``/usr/bin/time``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SEEDS = (0, 1, 2)
RATES = (0.01, 0.005, 0.003)
#: The adaptation settings taken over from the demo's own adapt run.
KEEP = (
    "epochs",
    "batch_size",
    "samples_per_volume",
    "optimizer",
    "weight_decay",
    "poly_power",
    "grad_clip",
    "overlap",
    "window_batch",
    "augment",
    "cache",
    "test_fraction",
    "methods",
)


def _run(cmd: list[str]) -> None:
    print("$", shlex.join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def run(out: Path) -> None:
    medattn = str(ROOT / ".venv/bin/medattn")
    for seed in SEEDS:
        demo = out / f"seed{seed}"
        if not (demo / "summary.json").is_file():
            _run([medattn, "demo", "--out", str(demo), "--seed", str(seed), "--quiet"])
        cfg = json.loads((demo / "runs" / "adapt" / "config.json").read_text())
        for lr in RATES:
            run_dir = out / f"val_lr{lr:g}_s{seed}"
            if (run_dir / "comparison.json").is_file():
                continue
            options = {k: cfg[k] for k in KEEP} | {"strategies": "replay,joint", "eval_split": "val", "lr": lr}
            config = out / f"adapt_lr{lr:g}_s{seed}.yaml"
            config.write_text(yaml.safe_dump(options))
            model, data = demo / "runs" / "train" / "model_last.pt", demo / "data" / "manifest.json"
            cmd = [medattn, "adapt", str(model), str(data), "--config", str(config), "--seed", str(seed)]
            _run([*cmd, "--out", str(run_dir), "--quiet"])


def report(out: Path) -> str:
    lines = [
        "| adapt_lr | seed | replay, final average (val) | joint (val) | replay - joint | replay BWT (val) |",
        "|---|---|---|---|---|---|",
    ]
    means: dict[float, float] = {}
    for lr in RATES:
        got: list[dict[str, Any]] = []
        for seed in SEEDS:
            path = out / f"val_lr{lr:g}_s{seed}" / "comparison.json"
            if not path.is_file():
                continue
            rows = {r["method"]: r for r in json.loads(path.read_text())}
            got.append(rows)
            rep, joint = rows["replay"], rows["joint"]
            lines.append(
                f"| {lr:g} | {seed} | {rep['average_dice']:.4f} | {joint['average_dice']:.4f} "
                f"| {rep['average_dice'] - joint['average_dice']:+.4f} | {rep['bwt']:+.4f} |"
            )
        if len(got) == len(SEEDS):
            rep_mean = sum(r["replay"]["average_dice"] for r in got) / len(got)
            joint_mean = sum(r["joint"]["average_dice"] for r in got) / len(got)
            bwt_mean = sum(r["replay"]["bwt"] for r in got) / len(got)
            means[lr] = rep_mean
            lines.append(
                f"| {lr:g} | **mean** | {rep_mean:.4f} | {joint_mean:.4f} | {rep_mean - joint_mean:+.4f} "
                f"| {bwt_mean:+.4f} |"
            )
    if means:
        best = max(means, key=lambda v: means[v])
        lines += ["", f"chosen: adapt_lr {best:g} (replay's best mean final average Dice on the val phantoms)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=("run", "report"))
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "demo_lr")
    args = p.parse_args(argv)
    if args.what == "run":
        args.out.mkdir(parents=True, exist_ok=True)
        run(args.out)
    print(report(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
