"""The adaptation studies of docs/results.md ("Few labels and none", "Measured defaults"): run them, then report.

    .venv/bin/python bench/adapt_studies.py run few --out runs/studies        # label budgets and the ranking
    .venv/bin/python bench/adapt_studies.py run labelfree --out runs/studies  # selftrain without labels
    .venv/bin/python bench/adapt_studies.py run styleval --out runs/studies   # selftrain's style_share (val)
    .venv/bin/python bench/adapt_studies.py run mirrorval --out runs/studies  # selftrain's mirror (val)
    .venv/bin/python bench/adapt_studies.py run memval --out runs/studies     # selftrain's mem_batch (val)
    .venv/bin/python bench/adapt_studies.py teacher --out runs/studies        # the teachers' Dice on val cases
    .venv/bin/python bench/adapt_studies.py run sweep --out runs/studies      # three values per main weight (val)
    .venv/bin/python bench/adapt_studies.py run table --out runs/studies      # every method at its default (test)
    .venv/bin/python bench/adapt_studies.py report --out runs/studies         # Markdown tables, docs/figures/*.png

Every study adapts ``runs/hippo/model.pt`` (``medattn train data_manifests/hippocampus.json --config
pipelines/hippocampus.yaml``) through the scanners that ``medattn synth runs/hippo_synth --from
data_manifests/hippocampus.json --scanners B,C,D`` simulates, with ``pipelines/adapt.yaml`` and a fixed number of
optimiser steps per domain (``--steps``), one thread per run. Each run is one ``medattn adapt`` command (printed
before it starts, and skipped when its folder already holds a finished run), so any row can be repeated alone.

* **few**: the stream original -> B (inverted contrast), ``--labelled N`` for N = 1, 3, 5, 10 and all, naive and
  replay, scored on the test splits; then N = 3 and 5 labelled by ``medattn drift``'s ranking of B's training
  images (``--label-order``) against N drawn at random with seeds 0, 1 and 2 (replay).
* **labelfree**: per scanner (B, C, D), original -> that scanner with no label of it (``--labelled 0``), selftrain
  without and with ``style_share`` (:data:`STYLE_SHARE`), then with ``mirror`` (:data:`MIRROR`) as well
  (:data:`FREE`), against replay with every label, on the test splits.
* **labelseeds**: the label-free comparison (selftrain with ``style_share``, without and with ``mirror``; replay with
  every label) repeated with training seeds 1 and 2 (``--seeds``), to tell the effect from one seed's luck.
* **styleval**: selftrain's ``style_share`` at 0, 1 and 2 on the val splits of C and B, which chose the default.
* **mirrorval**: selftrain's ``mirror`` (pseudo-labels averaged over mirrorings) at none, axis 0 and all three axes
  on the same val splits (no mirroring is styleval's ``style_share`` 1 run), which chose the default.
* **memval**: selftrain's replay share (8 memory patches a step, or ``memory_fraction`` 0.5) on the same val splits,
  with ``mirror`` on, which chose ``mem_batch`` (:data:`MEM_BATCH`).
* **teacher** (not an adaptation): the unadapted model's Dice on C's and D's val cases from one pass, from the mean
  over each set of mirrorings, and through the ``matched`` intensity translation: what ``mirror`` improves.
* **sweep**: original -> B, each method's main weight at three values, scored on the **val** splits (the test
  cases choose nothing); the default is the value with the best final average Dice (BWT breaks ties within 0.005).
* **table**: original -> B, every method at the chosen defaults, one process each (its CPU time from
  ``resource``), test splits.

The study runs take hours of CPU; nothing here runs in ``make test``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODEL = "runs/hippo/model.pt"
MANIFEST = "runs/hippo_synth/manifest.json"
STEPS = 80
BASE = ["--config", "pipelines/adapt.yaml", "--steps", str(STEPS), "--loggers", "csv", "--quiet"]
#: The sweep: per method, its main weight and three values (the middle one the earlier default).
SWEEP = {
    "replay": ("memory_fraction", (0.05, 0.1, 0.2)),
    "ewc": ("ewc_lambda", (1.0e4, 1.0e5, 1.0e6)),
    "si": ("si_lambda", (1.0e3, 1.0e4, 1.0e5)),
    "lwf": ("alpha", (1.0, 4.0, 16.0)),
    "mib": ("lambda_kd", (1.0, 10.0, 100.0)),
}
TABLE_METHODS = ("naive", "replay", "ewc", "si", "lwf", "mib", "cumulative", "joint")
BUDGETS = (1, 3, 5, 10)
#: selftrain's ``style_share`` in the label-free study and its default: the best of 0, 1 and 2 on the val splits of
#: scanners B and C (their mean) by the sweep's rule (docs/results.md, "Few labels and none").
STYLE_SHARE = 1.0
#: selftrain's ``mirror`` (pseudo-labels averaged over the mirrorings of these axes) and its default: the best of
#: none, axis 0 and all three on the val splits of B and C (the mirrorval study).
MIRROR = (0, 1, 2)
#: selftrain's ``mem_batch`` (memory patches per step beside the current domain's 2 x 2) and its default: the best of
#: replay's default (null: 4), 8, and a larger memory (``memory_fraction`` 0.5) on the same val splits (memval).
MEM_BATCH = 8


def _selftrain(confidence: float, style_share: float, mirror: tuple[int, ...], mem_batch: int | None = None) -> str:
    """selftrain's settings for ``--methods``, spelled out (a later default does not change a run's meaning)."""
    batch = "null" if mem_batch is None else mem_batch
    return (
        f"{{selftrain: {{confidence: {confidence}, style_share: {style_share}, mirror: {list(mirror)}, "
        f"mem_batch: {batch}}}}}"
    )


def _adapt(out: Path, domains: str, *extra: str) -> dict[str, Any]:
    """Run one ``medattn adapt`` (unless ``out`` holds a finished run); its comparison rows and CPU seconds."""
    done = out / "comparison.json"
    cpu_file = out.with_name(out.name + ".cpu.json")
    if not done.is_file():
        cmd = [
            str(ROOT / ".venv/bin/medattn"),
            "adapt",
            MODEL,
            f"{MANIFEST}:{domains}",
            *BASE,
            *extra,
            "--out",
            str(out),
        ]
        print("$", shlex.join(cmd), flush=True)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        cpu_file.write_text(json.dumps({"cpu_s": round(cpu, 1), "wall_s": round(time.perf_counter() - t0, 1)}))
    rows = json.loads(done.read_text())
    cpu = json.loads(cpu_file.read_text()) if cpu_file.is_file() else {}
    return {"rows": {r["method"]: r for r in rows}, **cpu}


def run_few(out: Path) -> None:
    for n in (*BUDGETS, None):
        extra = [] if n is None else ["--labelled", str(n)]
        _adapt(out / f"few_N{n or 'all'}", "vumc,vumc_B", "--strategies", "naive,replay", *extra)
    ranking = out / "drift_B.json"
    if not ranking.is_file():
        cmd = [
            str(ROOT / ".venv/bin/medattn"),
            "drift",
            MODEL,
            "--reference",
            f"{MANIFEST}:vumc",
            "--reference-split",
            "train",
            "--target",
            f"{MANIFEST}:vumc_B",
            "--target-split",
            "train",
            "-o",
            str(ranking),
        ]
        print("$", shlex.join(cmd), flush=True)
        subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})  # exit 4: drift
    for n in (3, 5):
        order = str(out / "drift_B_ranking.csv")
        _adapt(
            out / f"rank_N{n}",
            "vumc,vumc_B",
            "--strategies",
            "replay",
            "--labelled",
            str(n),
            "--label-order",
            order,
            "--no-eval-before",
        )
        for seed in (1, 2):
            _adapt(
                out / f"few_N{n}_s{seed}",
                "vumc,vumc_B",
                "--strategies",
                "replay",
                "--labelled",
                str(n),
                "--seed",
                str(seed),
                "--no-eval-before",
            )


#: The label-free variants compared: (run name prefix, style_share, mirror).
FREE: tuple[tuple[str, float, tuple[int, ...], int | None], ...] = (
    ("free", 0.0, (), None),
    ("free_style", STYLE_SHARE, (), None),
    ("free_mirror", STYLE_SHARE, MIRROR, None),
    ("free_mem8", STYLE_SHARE, MIRROR, MEM_BATCH),
)


def run_labelfree(out: Path, confidence: float) -> None:
    for scanner in ("C", "D", "B"):
        stream = f"vumc,vumc_{scanner}"
        for prefix, style, mirror, batch in FREE:
            methods = _selftrain(confidence, style, mirror, batch)
            _adapt(
                out / f"{prefix}_{scanner}",
                stream,
                "--strategies",
                "selftrain",
                "--labelled",
                "0",
                "--methods",
                methods,
            )
        _adapt(out / f"sup_{scanner}", stream, "--strategies", "replay")


def run_labelseeds(
    out: Path,
    seeds: tuple[int, ...],
    confidence: float = 0.9,
    scanners: tuple[str, ...] = ("C", "D", "B"),
    variants: tuple[str, ...] = tuple(v[0] for v in FREE[1:]),
) -> None:
    """The labelfree study's default selftrain and its supervised reference again with other training seeds (the
    start model, the data and the test cases stay; the seed draws the patches, the memory and the augmentation).
    ``variants``: the :data:`FREE` run names to repeat (by default the defaults before mirroring, before
    mem_batch, and now)."""
    unknown = sorted(set(variants) - {v[0] for v in FREE})
    if unknown:
        raise SystemExit(f"labelseeds: unknown variants {unknown}; known: {[v[0] for v in FREE]}")
    for seed in seeds:
        for scanner in scanners:
            stream = f"vumc,vumc_{scanner}"
            for prefix, style, mirror, batch in (v for v in FREE if v[0] in variants):
                extra = ("--labelled", "0", "--methods", _selftrain(confidence, style, mirror, batch))
                _adapt(
                    out / f"{prefix}_{scanner}_s{seed}",
                    stream,
                    "--strategies",
                    "selftrain",
                    *extra,
                    "--seed",
                    str(seed),
                )
            _adapt(out / f"sup_{scanner}_s{seed}", stream, "--strategies", "replay", "--seed", str(seed))


def _selftrain_val(out: Path, name: str, scanner: str, settings: str) -> None:
    """One selftrain run, original -> ``scanner`` without its labels, scored on the val splits; ``settings`` spell
    out every option a study compares (a later default does not change a run's meaning)."""
    _adapt(
        out / name,
        f"vumc,vumc_{scanner}",
        "--strategies",
        "selftrain",
        "--labelled",
        "0",
        "--eval-split",
        "val",
        "--methods",
        f"{{selftrain: {{{settings}}}}}",
    )


def run_styleval(out: Path) -> None:
    """selftrain's ``style_share`` at 0, 1 and 2 on the val splits of scanners C and B (the default's choice),
    without mirroring and with replay's memory share, the defaults of the time."""
    for scanner in ("C", "B"):
        for share in (0, 1, 2):
            _selftrain_val(
                out, f"styleval_{scanner}_s{share}", scanner, f"style_share: {share}, mirror: [], mem_batch: null"
            )


#: selftrain's ``mirror`` values in the mirrorval study (the first the default before it; its runs are styleval's).
MIRRORS = ((), (0,), (0, 1, 2))


def run_mirrorval(out: Path) -> None:
    """selftrain's ``mirror`` (its pseudo-labels averaged over mirrorings) on the val splits of C and B, with
    replay's memory share; no mirroring is styleval's ``style_share`` 1 run (the same settings)."""
    for scanner in ("C", "B"):
        for axes in MIRRORS[1:]:
            name = f"mirrorval_{scanner}_m{''.join(map(str, axes))}"
            _selftrain_val(out, name, scanner, f"style_share: 1, mirror: {list(axes)}, mem_batch: null")


#: The memval study's variants: run name suffix -> selftrain's replay setting beside replay's others.
MEMORY = {"mb8": "mem_batch: 8", "mf5": "mem_batch: null, memory_fraction: 0.5"}


def run_memval(out: Path) -> None:
    """selftrain's replay share on the val splits of C and B: 8 memory patches a step, or a memory five times
    larger, against replay's defaults (4 a step, a tenth: mirrorval's all-axes run, the same settings)."""
    for scanner in ("C", "B"):
        for name, setting in MEMORY.items():
            _selftrain_val(
                out, f"memval_{scanner}_{name}", scanner, f"style_share: 1, mirror: {list(MIRROR)}, {setting}"
            )


def run_sweep(out: Path) -> None:
    for i in range(3):
        methods = ", ".join(f"{m}: {{{p}: {vals[i]}}}" for m, (p, vals) in SWEEP.items())
        _adapt(
            out / f"sweep_v{i + 1}",
            "vumc,vumc_B",
            "--strategies",
            ",".join(SWEEP),
            "--eval-split",
            "val",
            "--no-eval-before",
            "--methods",
            f"{{{methods}}}",
        )


def run_table(out: Path, only: tuple[str, ...] = TABLE_METHODS) -> None:
    for m in only:
        _adapt(out / f"table_{m}", "vumc,vumc_B", "--strategies", m)


# ---- report ----------------------------------------------------------------------------------------------------------


def _load(out: Path, name: str) -> dict[str, Any] | None:
    done = out / name / "comparison.json"
    if not done.is_file():
        return None
    cpu = out / f"{name}.cpu.json"
    rows = json.loads(done.read_text())
    return {"rows": {r["method"]: r for r in rows}, **(json.loads(cpu.read_text()) if cpu.is_file() else {})}


def report(out: Path, figures: Path) -> str:
    lines: list[str] = []
    few = {n: _load(out, f"few_N{n}") for n in (*BUDGETS, "all")}
    if any(few.values()):
        lines += [
            "| labelled cases of B | naive: B | naive: original | replay: B | replay: original |",
            "|---|---|---|---|---|",
        ]
        series: dict[str, list[tuple[int, float, float]]] = {"naive": [], "replay": []}
        for n, run in few.items():
            if run is None:
                continue
            cells = []
            for m in ("naive", "replay"):
                r = run["rows"].get(m, {})
                b, a = r.get("dice_vumc_B"), r.get("dice_vumc")
                cells += [f"{b:.3f}" if b is not None else "", f"{a:.3f}" if a is not None else ""]
                if b is not None and a is not None:
                    series[m].append((145 if n == "all" else int(n), b, a))
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
        start = _matrix(out, "few_N1", "naive")
        _plot_budget(series, figures / "label_budget.png", None if start is None else start["before"]["overall"])
        lines.append("")
    rank = {n: _load(out, f"rank_N{n}") for n in (3, 5)}
    if any(rank.values()):
        lines += [
            "| labelled cases of B | top of drift's ranking | random, seed 0 | seed 1 | seed 2 |",
            "|---|---|---|---|---|",
        ]
        for n in (3, 5):
            cells = []
            for name in (f"rank_N{n}", f"few_N{n}", f"few_N{n}_s1", f"few_N{n}_s2"):
                run = _load(out, name)
                v = None if run is None else run["rows"].get("replay", {}).get("dice_vumc_B")
                cells.append("" if v is None else f"{v:.3f}")
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
        lines.append("")
    sweep = [_load(out, f"sweep_v{i + 1}") for i in range(3)]
    if all(sweep):
        lines += [
            "| method | weight | value | final average Dice (val) | BWT (val) | chosen |",
            "|---|---|---|---|---|---|",
        ]
        for method, (param, values) in SWEEP.items():
            got = [(v, run["rows"][method]) for v, run in zip(values, sweep) if run and method in run["rows"]]
            best = _choose(got)
            for v, row in got:
                mark = "**yes**" if v == best else ""
                lines.append(f"| {method} | {param} | {v:g} | {row['average_dice']:.4f} | {row['bwt']:+.4f} | {mark} |")
        lines.append("")
    styles = {(x, v): _load(out, f"styleval_{x}_s{v}") for x in "CB" for v in (0, 1, 2)}
    if all(styles.values()):
        lines += [
            "| style_share | C: final average (val) | C: BWT | B: final average (val) | B: BWT | mean | chosen |",
            "|---|---|---|---|---|---|---|",
        ]
        got = []
        for v in (0, 1, 2):
            rows = [styles[x, v]["rows"]["selftrain"] for x in "CB"]  # type: ignore[index]
            mean = {k: sum(r[k] for r in rows) / 2 for k in ("average_dice", "bwt")}
            got.append((float(v), mean))
        best = _choose(got)
        for v, mean in got:
            c, b = (styles[x, int(v)]["rows"]["selftrain"] for x in "CB")  # type: ignore[index]
            lines.append(
                f"| {v:g} | {c['average_dice']:.4f} | {c['bwt']:+.4f} | {b['average_dice']:.4f} | {b['bwt']:+.4f} "
                f"| {mean['average_dice']:.4f} | {'**yes**' if v == best else ''} |"
            )
        lines.append("")
    table = {m: _matrix(out, f"table_{m}", m) for m in TABLE_METHODS}
    if any(table.values()):
        naive = table.get("naive")
        lines += [
            "| method | main weight | final average Dice | BWT | forgetting | plasticity | Dice original | Dice B "
            "| CPU min |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for m, mat in table.items():
            if mat is None:
                continue
            summary = mat["summary"]["overall"]
            grid = mat["matrix"]["overall"]
            plast = ""
            if naive is not None and m not in ("naive", "joint"):
                own = [grid[j][j] for j in range(len(grid))]
                ref = [naive["matrix"]["overall"][j][j] for j in range(len(grid))]
                plast = f"{sum(a - b for a, b in zip(own, ref)) / len(own):+.3f}"
            weight = ""
            if m in SWEEP:
                params = json.loads((out / f"table_{m}" / "config.json").read_text())["methods"].get(m, {})
                weight = f"{SWEEP[m][0]} {params.get(SWEEP[m][0], ''):g}" if SWEEP[m][0] in params else ""
            cpu = _load(out, f"table_{m}") or {}
            bwt = summary.get("bwt")
            cells = [
                weight,
                f"{summary['average_dice']:.3f}",
                "" if bwt is None else f"{bwt:+.3f}",
                "" if summary.get("forgetting") is None else f"{summary['forgetting']:.3f}",
                plast,
                f"{grid[-1][0]:.3f}",
                f"{grid[-1][-1]:.3f}",
                f"{cpu['cpu_s'] / 60:.1f}" if "cpu_s" in cpu else "",
            ]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
    mirrors = {(x, m): _load(out, f"mirrorval_{x}_m{''.join(map(str, m))}") for x in "CB" for m in MIRRORS[1:]}
    for x in "CB":
        mirrors[x, ()] = styles.get((x, 1))  # no mirroring: styleval's default run
    if all(mirrors.values()):
        lines += [
            "| mirror | C: final average (val) | C: BWT | C: Dice of C | B: final average (val) | B: BWT "
            "| B: Dice of B | mean | CPU s (C, B) | chosen |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        got = []
        for m in MIRRORS:
            rows = [mirrors[x, m]["rows"]["selftrain"] for x in "CB"]  # type: ignore[index]
            got.append((float(len(m)), {k: sum(r[k] for r in rows) / 2 for k in ("average_dice", "bwt")}))
        best = max(got, key=lambda g: g[1]["average_dice"])[0]  # no BWT tie-break: all within 0.001 of each other
        for m, (key, mean) in zip(MIRRORS, got):
            c, b = (mirrors[x, m]["rows"]["selftrain"] for x in "CB")  # type: ignore[index]
            cpus = [mirrors[x, m].get("cpu_s") for x in "CB"]  # type: ignore[union-attr]
            cpu = "" if None in cpus else ", ".join(f"{v:.0f}" for v in cpus)
            lines.append(
                f"| {list(m)} | {c['average_dice']:.4f} | {c['bwt']:+.4f} | {c['dice_vumc_C']:.4f} "
                f"| {b['average_dice']:.4f} | {b['bwt']:+.4f} | {b['dice_vumc_B']:.4f} | {mean['average_dice']:.4f} "
                f"| {cpu} | {'**yes**' if key == best else ''} |"
            )
        lines.append("")
    mems = {(x, k): _load(out, f"memval_{x}_{k}") for x in "CB" for k in MEMORY}
    for x in "CB":
        mems[x, "default"] = mirrors.get((x, MIRROR))
    if all(mems.values()):
        lines += [
            "| replay share | C: final average (val) | C: BWT | C: Dice of C | B: final average (val) | B: BWT "
            "| B: Dice of B | B: Dice of the original | mean | mean BWT | chosen |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        shown = {
            "default": "mem_batch 4 (null), memory_fraction 0.1",
            "mb8": "mem_batch 8",
            "mf5": "memory_fraction 0.5",
        }
        got = []
        for k in shown:
            rows = [mems[x, k]["rows"]["selftrain"] for x in "CB"]  # type: ignore[index]
            got.append((float(len(got)), {m: sum(r[m] for r in rows) / 2 for m in ("average_dice", "bwt")}))
        best = _choose(got, keep=0)
        for (k, label), (key, mean) in zip(shown.items(), got):
            c, b = (mems[x, k]["rows"]["selftrain"] for x in "CB")  # type: ignore[index]
            lines.append(
                f"| {label} | {c['average_dice']:.4f} | {c['bwt']:+.4f} | {c['dice_vumc_C']:.4f} "
                f"| {b['average_dice']:.4f} | {b['bwt']:+.4f} | {b['dice_vumc_B']:.4f} | {b['dice_vumc']:.4f} "
                f"| {mean['average_dice']:.4f} | {mean['bwt']:+.4f} | {'**yes**' if key == best else ''} |"
            )
        lines.append("")
    free = {
        (x, label): (_matrix(out, f"{prefix}_{x}", "selftrain"), _load(out, f"sup_{x}") or _load(out, "few_Nall"))
        for x in "BCD"
        for prefix, style, mirror, batch in FREE
        for label in [f"{style:g}, {list(mirror)}, {batch or 4}"]
    }
    if any(mat for mat, _ in free.values()):
        lines += [
            "| new scanner | style_share, mirror, mem_batch | unadapted | selftrain, no labels | replay, every label "
            "| gap recovered | selftrain BWT | worst change against unadapted | decision |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for (x, label), (mat, sup) in free.items():
            if mat is None:
                continue
            before, final = mat["before"]["overall"], mat["matrix"]["overall"][-1]
            sup_dice = None if sup is None else sup["rows"].get("replay", {}).get(f"dice_vumc_{x}")
            gap = None if sup_dice is None or sup_dice == before[1] else (final[1] - before[1]) / (sup_dice - before[1])
            bwt = mat["summary"]["overall"].get("bwt")
            worst = min(f - b for f, b in zip(final, before))
            decision = mat.get("decision", "trained")
            cells = [
                f"{before[1]:.3f}",
                f"{final[1]:.3f}",
                "" if sup_dice is None else f"{sup_dice:.3f}",
                "" if gap is None else f"{gap:.0%}",
                "" if bwt is None else f"{bwt:+.3f}",
                f"{worst:+.3f}",
                decision,
            ]
            lines.append(f"| {x} | {label} | " + " | ".join(cells) + " |")
        lines.append("")
    for prefix, style, mirror, batch in FREE[1:]:
        lines += _seeds_table(out, prefix, f"style_share {style:g}, mirror {list(mirror)}, mem_batch {batch or 4}")
    return "\n".join(lines)


def _seeds_table(out: Path, prefix: str = "free_mirror", settings: str = "") -> list[str]:
    """The label-free comparison over training seeds (seed 0: the labelfree study's runs; others: labelseeds'), per
    scanner one row a seed and one of the means (the gap recovered of the means), for selftrain's runs named
    ``prefix`` (:data:`FREE`)."""
    lines: list[str] = []
    for x in "CDB":
        runs = []
        for seed in range(10):
            suffix = "" if seed == 0 else f"_s{seed}"
            mat = _matrix(out, f"{prefix}_{x}{suffix}", "selftrain")
            sup = _load(out, f"sup_{x}{suffix}")
            dice = None if sup is None else sup["rows"].get("replay", {}).get(f"dice_vumc_{x}")
            if mat is not None and dice is not None:
                runs.append((seed, mat, dice))
        if len(runs) < 2:
            continue
        if not lines:
            lines += [
                f"selftrain with {settings}:" if settings else "",
                "",
                "| new scanner | seed | unadapted | selftrain, no labels | replay, every label | gap recovered "
                "| selftrain BWT | worst change against unadapted |",
                "|---|---|---|---|---|---|---|---|",
            ]
        cols: dict[str, list[float]] = {"free": [], "sup": [], "bwt": [], "worst": []}
        before = runs[0][1]["before"]["overall"]
        for seed, mat, dice in runs:
            final = mat["matrix"]["overall"][-1]
            bwt = mat["summary"]["overall"]["bwt"]
            worst = min(f - b for f, b in zip(final, mat["before"]["overall"]))
            gap = (final[1] - before[1]) / (dice - before[1])
            lines.append(
                f"| {x} | {seed} | {before[1]:.3f} | {final[1]:.3f} | {dice:.3f} | {gap:.0%} | {bwt:+.4f} "
                f"| {worst:+.4f} |"
            )
            for k, v in zip(cols, (final[1], dice, bwt, worst)):
                cols[k].append(v)
        mean = {k: sum(v) / len(v) for k, v in cols.items()}
        gap = (mean["free"] - before[1]) / (mean["sup"] - before[1])
        lines.append(
            f"| {x} | **mean of {len(runs)}** | {before[1]:.3f} | {mean['free']:.3f} | {mean['sup']:.3f} | "
            f"**{gap:.0%}** | {mean['bwt']:+.4f} | {mean['worst']:+.4f} (worst seed {min(cols['worst']):+.4f}) |"
        )
    if lines:
        lines.append("")
    return lines


def _choose(got: list[tuple[float, dict[str, Any]]], keep: int = 1) -> float | None:
    """The sweep's rule: the best final average Dice; within 0.005 of it, the best BWT. An exact BWT tie (the same
    run in effect, e.g. two budgets the replay floor makes equal) keeps candidate ``keep``, the earlier default (the
    sweep's middle value), or the one nearest it."""
    if not got:
        return None
    top = max(row["average_dice"] for _, row in got)
    near = [(i, v, row) for i, (v, row) in enumerate(got) if row["average_dice"] >= top - 0.005]
    return max(near, key=lambda ivr: (round(ivr[2]["bwt"], 6), -abs(ivr[0] - keep)))[1]


def _matrix(out: Path, name: str, method: str) -> dict[str, Any] | None:
    """A method's ``metrics.json`` (its Dice matrix), with ``decision``: what it did on the new scanner."""
    path = out / name / method / "metrics.json"
    if not path.is_file():
        return None
    doc = json.loads(path.read_text())
    decisions = out / name / method / "decisions.json"
    if decisions.is_file():
        skipped = [d for d in json.loads(decisions.read_text()) if not d["adapt"]]
        doc["decision"] = "skipped: " + skipped[0]["reason"][:60] + "..." if skipped else "trained"
    passes = out / name / method / "pseudo_labels.json"
    if passes.is_file() and doc.get("decision", "trained") == "trained":
        new = doc["domains"][-1]  # the new scanner, the stream's last domain
        used = [r for r in json.loads(passes.read_text()) if r.get("used") and r.get("domain") == new]
        if used and used[0].get("teacher", "as stored") != "as stored":
            ratios = ", ".join(f"{v:.2f}x" for v in used[0].get("volume_ratio", []))
            teacher = used[0]["teacher"]
            doc["decision"] = f"trained; pseudo-labels through its intensities {teacher} ({ratios} the volumes)"
    return doc


def _plot_budget(
    series: dict[str, list[tuple[int, float, float]]], path: Path, before: list[float] | None = None
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.4), dpi=120)
    for m, style in (("naive", "--"), ("replay", "-")):
        pts = sorted(series[m])
        if not pts:
            continue
        xs = [p[0] for p in pts]
        ax.plot(xs, [p[1] for p in pts], style, marker="o", label=f"{m}: new scanner B")
        ax.plot(xs, [p[2] for p in pts], style, marker="s", label=f"{m}: original scanner")
    if before is not None:  # the start model: [original, B]
        ax.axhline(before[1], color="grey", linestyle=":", label="B before adaptation")
        ax.axhline(before[0], color="black", linestyle=":", label="original before adaptation")
    ax.set_xscale("log")
    ax.set_xlabel("labelled training cases of B (145: all)")
    ax.set_ylabel("test Dice after adaptation")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


#: The teacher study's mirrorings: none, each axis, each pair, all three.
TEACHER_MIRRORS = ((), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2))


def teacher(out: Path, scanners: tuple[str, ...]) -> str:
    """The unadapted model's Dice on each scanner's val cases from one pass and from the mean over mirrorings (the
    pseudo-labels selftrain's ``mirror`` makes), and with the images' body intensities matched onto the original
    scanner's training images (selftrain's ``matched`` teacher); mean confidence and the CPU time of a volume's
    prediction (one thread) beside it. Val cases: they have
    labels and choose things; the test cases stay out. Writes ``teacher_<X>.json`` per scanner."""
    import numpy as np
    import torch

    from medattn.continual.methods._acquisition import body_quantiles, translate
    from medattn.continual.scenario import domain_split
    from medattn.data.manifest import Manifest
    from medattn.data.transforms import eval_transforms, make_dataset
    from medattn.infer.sliding import SlidingWindowPredictor
    from medattn.models.model_file import load_model

    torch.set_num_threads(1)
    manifest = Manifest.load(ROOT / MANIFEST)
    start = load_model(ROOT / MODEL)
    plan = start.plan

    def cases(domain: str, split: str) -> Any:
        train, held = domain_split(manifest, domain, test_split="val")
        items = {d["case_id"]: d for d in manifest.datalist(domain)}
        ids = held if split == "val" else train
        return make_dataset([items[i] for i in ids], eval_transforms(plan), "memory", None, 0, False)

    rng = np.random.default_rng(0)
    ref = cases("vumc", "train")
    curve = sum(body_quantiles(ref[i]["image"], rng) for i in range(len(ref))) / len(ref)
    lines = [
        "| scanner | teacher | mirror | Dice (val) | mean confidence | CPU s per volume |",
        "|---|---|---|---|---|---|",
    ]
    for x in scanners:
        val = cases(f"vumc_{x}", "val")
        got: dict[str, list[tuple[float, float]]] = {}
        for i in range(len(val)):
            image = torch.as_tensor(val[i]["image"]).float()
            label = torch.as_tensor(val[i]["label"])[0].long()
            shown = {"as stored": image, "matched": translate(image, curve, 1, rng)}
            for name, axes in [("as stored", m) for m in TEACHER_MIRRORS] + [("matched", ()), ("matched", (0, 1, 2))]:
                predictor = SlidingWindowPredictor(
                    start.model, tuple(plan.patch_size), num_classes=plan.num_classes, mirror_axes=axes
                )
                t0 = time.process_time()
                probs = predictor(shown[name], return_probabilities=True).probabilities.float()
                cpu = time.process_time() - t0
                conf, cls = probs.max(0)
                dice = [
                    2 * float(((cls == c) & (label == c)).sum()) / max(1, int((cls == c).sum() + (label == c).sum()))
                    for c in range(1, plan.num_classes)
                ]
                got.setdefault(f"{name}|{list(axes)}", []).append((float(np.mean(dice)), float(conf.mean()), cpu))
        summary = {
            k: {m: float(np.mean([r[i] for r in v])) for i, m in enumerate(("dice", "confidence", "cpu_s"))}
            for k, v in got.items()
        }
        (out / f"teacher_{x}.json").write_text(json.dumps({"cases": len(val), "teachers": summary}, indent=2))
        for k, v in summary.items():
            name, axes = k.split("|")
            lines.append(f"| {x} | {name} | {axes} | {v['dice']:.4f} | {v['confidence']:.5f} | {v['cpu_s']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    r = sub.add_parser("run")
    r.add_argument(
        "study", choices=("few", "labelfree", "labelseeds", "styleval", "mirrorval", "memval", "sweep", "table")
    )
    r.add_argument("--seeds", default="1,2", help="labelseeds: training seeds (comma-separated)")
    r.add_argument("--scanners", default="C,D,B", help="labelseeds: the new scanners (comma-separated)")
    r.add_argument(
        "--variants", default=",".join(v[0] for v in FREE[1:]), help="labelseeds: selftrain's variants (FREE names)"
    )
    r.add_argument("--out", type=Path, default=ROOT / "runs" / "studies")
    r.add_argument("--confidence", type=float, default=0.9, help="labelfree: selftrain's confidence")
    r.add_argument("--only", default=",".join(TABLE_METHODS), help="table: these methods (comma-separated)")
    t = sub.add_parser("teacher", help="the unadapted model's Dice on val cases per teacher (selftrain's mirror)")
    t.add_argument("--scanners", default="C,D")
    t.add_argument("--out", type=Path, default=ROOT / "runs" / "studies")
    q = sub.add_parser("report")
    q.add_argument("--out", type=Path, default=ROOT / "runs" / "studies")
    q.add_argument("--figures", type=Path, default=ROOT / "docs" / "figures")
    args = p.parse_args(argv)
    if args.what == "teacher":
        args.out.mkdir(parents=True, exist_ok=True)
        print(teacher(args.out, tuple(x for x in args.scanners.split(",") if x)))
        return 0
    if args.what == "report":
        print(report(args.out, args.figures))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    if args.study == "table":
        run_table(args.out, tuple(m for m in args.only.split(",") if m))
    elif args.study == "labelfree":
        run_labelfree(args.out, args.confidence)
    elif args.study == "labelseeds":
        run_labelseeds(
            args.out,
            tuple(int(v) for v in args.seeds.split(",") if v),
            args.confidence,
            tuple(x for x in args.scanners.split(",") if x),
            tuple(v for v in args.variants.split(",") if v),
        )
    else:
        {
            "few": run_few,
            "styleval": run_styleval,
            "mirrorval": run_mirrorval,
            "memval": run_memval,
            "sweep": run_sweep,
        }[args.study](args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
