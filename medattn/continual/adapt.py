"""``medattn adapt MODEL DATA --strategy NAME --out RUN``: continual learning over a dataset's domains.

:func:`adapt` is the library call: it loads the start model, builds the Avalanche stream
(:func:`~medattn.continual.scenario.domain_scenario`), runs each method from the same start
(:func:`~medattn.continual.runner.run_method`) and writes per method the Dice matrix and its metrics, and for
several methods a comparison table; :func:`format_matrix` and :func:`format_comparison` give the text that
``medattn adapt`` (:mod:`medattn.commands.adapt`) prints.

Output::

    RUN/config.json                      the resolved run configuration
    RUN/excluded.json                    cases the input gate refused (left out with --exclude-invalid)
    RUN/labels.json                      with --labelled N: per new domain, the training cases whose labels are used
    RUN/<method>/...                     see medattn.continual.runner (models per experience, state, logs)
    RUN/<method>/metrics.json            Dice matrix, per class and overall, with ACC, BWT, forgetting, FWT, plasticity
    RUN/<method>/matrix.csv, summary.csv, matrix.png
    RUN/<method>/decisions.json          with --auto: per domain, adapted or skipped, and the drift evidence; also
                                         each domain a method skipped (no labelled case, pseudo-labels refused)
    RUN/<method>/pseudo_labels.json      selftrain: each pseudo-labelling pass (share of voxels trusted, volumes,
                                         the teacher: the images as stored or translated, see ``translate``)
    RUN/comparison.json, .csv, .md       one row per method (always written; one row for a single method)

With ``--auto`` (``AdaptConfig.auto``) each domain after the first is tested for drift against the domains the
model has been trained on so far, and trained on only when it has drifted (:mod:`medattn.drift.gate`); the
comparison table then names the domains each method adapted to and skipped.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medattn.continual.config import AdaptConfig
from medattn.continual.metrics import DiceMatrix
from medattn.continual.runner import MethodRun, run_method
from medattn.data.gate import admit, channel_mismatch
from medattn.data.guard import InputGuard, clean_orphans, prepare_output_dir
from medattn.data.io import atomic_write_text
from medattn.data.manifest import Manifest
from medattn.errors import ConfigError, DataError

#: ``RUN/excluded.json``: the cases the input gate refused and ``--exclude-invalid`` left out (empty list: none).
EXCLUDED_NAME = "excluded.json"

log = logging.getLogger(__name__)


@dataclass
class AdaptResult:
    """What :func:`adapt` did: the runs per method and the comparison rows."""

    runs: dict[str, MethodRun]
    comparison: list[dict[str, Any]]
    out: Path
    excluded: list[dict[str, Any]] = field(default_factory=list)
    """Cases the input gate refused and ``exclude_invalid`` left out (``case``, ``domain``, ``file``, ``reason``)."""


def _check_out(out: Path, cfg: AdaptConfig, resume: bool) -> None:
    """Refuse a folder that holds something else than this run (before anything is read or written there)."""
    saved = out / "config.json"
    if resume:
        if not saved.is_file():
            raise ConfigError(f"--resume: {out} holds no earlier adapt run (no config.json)")
        try:
            old = AdaptConfig.from_dict(json.loads(saved.read_text()))
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"{saved}: cannot read the earlier run's config: {e}") from e
        a, b = old.experiment_dict(), cfg.experiment_dict()
        changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k != "strategies")
        if changed:
            raise ConfigError(f"--resume: options {changed} differ from the earlier run in {out}; use a new --out")
    elif out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out}: output folder exists and is not empty; use a new --out or --resume")


#: The start model's and every case's file digests, recorded at the start of a run (``--resume`` compares them).
INPUTS_NAME = "inputs.json"


def _check_same_inputs(
    out: Path, model_path: Path, manifest: Manifest, data_root: str | Path | None, resume: bool
) -> None:
    """Record the digests of the start model and of every case's files; on ``--resume``, refuse another start model
    or cases whose files changed since the run started (their finished methods learned from the old ones). A run
    written before the digests were recorded is not compared."""
    from medattn.data.digests import case_digests, changed_cases, file_digest

    cases = case_digests(manifest, [c.id for _, c in manifest.iter_cases()], data_root)
    now = {"model": file_digest(model_path), "cases": cases}
    saved = out / INPUTS_NAME
    if resume and saved.is_file():
        try:
            before = json.loads(saved.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"{saved}: cannot read the earlier run's input digests: {e}") from e
        if before.get("model") != now["model"]:
            raise DataError(
                "--resume: this start model is not the file the run started from (its bytes differ); resume with "
                "that model, or start a new run with another --out",
                model_path,
            )
        recorded = before.get("cases") or {}
        if set(recorded) != set(cases):
            differ = sorted(set(recorded) ^ set(cases))
            raise DataError(
                f"--resume: the dataset's cases are not those the run started on ({len(differ)} differ, e.g. "
                f"{differ[:5]}); resume with that dataset, or start a new run with another --out",
                manifest.base_dir or manifest.name,
            )
        changed = changed_cases(recorded, cases)
        if changed:
            raise DataError(
                f"--resume: the files of {len(changed)} case(s) differ from those the run started on (e.g. "
                f"{changed[:5]}); restore them, or start a new run with another --out",
                manifest.base_dir or manifest.name,
            )
    atomic_write_text(saved, json.dumps(now, indent=2) + "\n")


def _check_labels(manifest: Manifest, start: Any, model_path: Path) -> None:
    k = int(start.model.config["out_channels"])
    if len(manifest.labels) != k:
        raise DataError(
            f"the data have {len(manifest.labels)} labels {dict(manifest.labels)}, the model predicts {k} classes "
            f"{start.labels}",
            model_path,
        )


def comparison_rows(runs: dict[str, MethodRun], naive: DiceMatrix | None) -> list[dict[str, Any]]:
    """One row per method: final average Dice, BWT, forgetting, FWT, plasticity, memory, final Dice per domain.

    Memory: ``memory_fraction``, the stored share of the training voxels seen (None without a memory), and, when
    some method keeps one (replay), ``stored_<domain>``, the patches it stores per domain at the end (0 for a domain
    it stores nothing of, None for a method without a memory). Every row has the same keys, in the same order
    (a key only some rows have, such as ``adapted`` of a gated method next to ``joint``, is None in the others), so
    ``comparison.json``, ``.csv`` and ``.md`` hold the same table.
    """
    with_memory = any("stored_per_domain" in run.extras for run in runs.values())
    rows = []
    for name, run in runs.items():
        s = run.matrix.summary(naive)["overall"]
        final = run.matrix.matrix()[-1] if len(run.matrix.rows) else []
        row: dict[str, Any] = {"method": name, **s, "finished": run.finished}
        row["memory_fraction"] = run.extras.get("stored_fraction")
        if with_memory:
            stored = run.extras.get("stored_per_domain")
            for dom in run.matrix.domains:
                row[f"stored_{dom}"] = None if stored is None else int(stored.get(dom, 0))
        if run.decisions:  # a domain without a record was trained on (the gate records every domain it sees)
            skipped = {d["domain"] for d in run.decisions if not d["adapt"]}
            doms = run.matrix.domains[: len(run.matrix.rows)]
            row["adapted"] = ",".join(dom for dom in doms if dom not in skipped)
            row["skipped"] = ",".join(dom for dom in doms if dom in skipped)
        through = [  # selftrain: the domains pseudo-labelled through translated intensities, and which way
            f"{r['domain']}: {r['teacher']}"
            for r in run.extras.get("pseudo_labels", [])
            if r.get("used") and r.get("teacher", "as stored") != "as stored"
        ]
        if through:
            row["pseudo_labels_through"] = ",".join(through)
        for dom, v in zip(run.matrix.domains, final):
            row[f"dice_{dom}"] = None if v != v else round(float(v), 6)
        rows.append(row)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return [{k: r.get(k) for k in keys} for r in rows]


def format_comparison(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of :func:`comparison_rows` (signed transfer metrics, four decimals, counts as integers)."""
    if not rows:
        return ""
    from medattn.text import markdown_table

    def cell(key: str, value: Any) -> str:
        if isinstance(value, str):
            return value
        if value is None:
            return ""
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return f"{value:+.4f}" if key in ("bwt", "fwt", "plasticity") else f"{value:.4f}"

    keys = [k for k in rows[0] if k != "finished"]
    return markdown_table(keys, [[cell(k, r.get(k)) for k in keys] for r in rows])


def format_matrix(name: str, run: MethodRun) -> str:
    """A method's Dice matrix as text (rows: the start model, then after each experience; columns: the domains),
    followed by the ``--auto`` decisions."""
    lines = [f"{name}: Dice matrix (rows: after training on; columns: {', '.join(run.matrix.domains)})"]
    labels = (["before"] if run.matrix.before is not None else []) + list(run.matrix.rows)
    grid = run.matrix.matrix()
    if run.matrix.before is not None:
        import numpy as np

        grid = np.vstack([run.matrix.baseline()[None], grid])  # type: ignore[index]
    for label, row in zip(labels, grid):
        lines.append(f"  {label:>12}  " + "  ".join("  nan " if v != v else f"{v:.4f}" for v in row))
    for d in run.decisions:
        lines.append(f"  {d['decision']:>5} {d['domain']}: {d['reason']}")
    return "\n".join(lines)


def _write_comparison(out: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(out / "comparison.json", json.dumps(rows, indent=2) + "\n")
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    atomic_write_text(out / "comparison.csv", buf.getvalue())
    atomic_write_text(out / "comparison.md", format_comparison(rows) + "\n")


def adapt(
    model: str | Path,
    manifest: Manifest,
    out: str | Path,
    cfg: AdaptConfig,
    *,
    data_root: str | Path | None = None,
    resume: bool = False,
    quiet: bool = False,
) -> AdaptResult:
    """Adapt a trained model through ``manifest``'s domains with each method of ``cfg.strategies``.

    Args:
        model: the start model file.
        manifest: the dataset; its domain order is the stream order.
        out: the run folder (new or empty, or an earlier run with ``resume``).
        cfg: the run configuration.
        data_root: overrides the manifest's data root.
        resume: continue an interrupted run in ``out`` (finished methods are not retrained).
        quiet: no progress bars (the ``interactive`` logger is dropped).
    """
    from medattn.continual.loggers import close_loggers, make_loggers
    from medattn.continual.scenario import ScenarioOptions, domain_scenario
    from medattn.models.model_file import load_model

    out = Path(out)
    model_path = Path(model)
    InputGuard.of_manifest(manifest, data_root, other_files=[model_path]).check_dir(out, "--out")
    _check_out(out, cfg, resume)  # before the model and the data are read, and before anything is written
    prepare_output_dir(out, "--out", clean=False)
    clean_orphans(out, recursive=True)  # this run's folder: the method folders hold model files written atomically
    start = load_model(model_path, device="cpu")
    _check_labels(manifest, start, model_path)
    why = channel_mismatch([ch.name for ch in start.plan.channels], [ch.name for ch in manifest.channels])
    if why:
        raise DataError(why, manifest.base_dir or manifest.name)
    budget: list[dict[str, Any]] = []
    if cfg.labelled is not None:  # before the gate: the labels left out are never read
        from medattn.continual.labels import LABELS_NAME, apply_label_budget, read_label_order

        order = None if cfg.label_order is None else read_label_order(cfg.label_order)
        manifest, budget = apply_label_budget(
            manifest, cfg.labelled, order=order, seed=cfg.seed, test_fraction=cfg.test_fraction
        )
    manifest, excluded = _gate(manifest, cfg, data_root, resume, out, quiet)
    _check_same_inputs(out, model_path, manifest, data_root, resume)
    cfg.save(out / "config.json")
    atomic_write_text(out / EXCLUDED_NAME, json.dumps(excluded, indent=2) + "\n")
    if budget:
        atomic_write_text(out / LABELS_NAME, json.dumps(budget, indent=2) + "\n")
    bench = domain_scenario(
        manifest,
        start.plan,
        ScenarioOptions(
            patch_size=cfg.patch_size,
            samples_per_volume=cfg.samples_per_volume,
            augment=cfg.augment_config(),
            cache=cfg.cache,
            cache_dir=str(out / "cache") if cfg.cache == "disk" else None,
            test_fraction=cfg.test_fraction,
            eval_split=cfg.eval_split,
            workers=cfg.workers,
            progress=not quiet,
        ),
        data_root=data_root,
    )
    kinds = [k for k in cfg.loggers if not (quiet and k == "interactive")]
    gate = _drift_gate(manifest, cfg, data_root) if cfg.auto else None
    runs: dict[str, MethodRun] = {}
    for name in cfg.strategies:
        loggers = make_loggers(kinds, out / name)
        try:
            runs[name] = run_method(name, start, bench, cfg, out / name, resume=resume, loggers=loggers, gate=gate)
        finally:
            close_loggers(loggers)
    naive = runs["naive"].matrix if "naive" in runs else _saved_matrix(out / "naive" / "metrics.json")
    for name, run in runs.items():
        paths = run.matrix.write(out / name, naive=naive)
        log.info("%s: metrics in %s", name, paths["json"])
    rows = comparison_rows(runs, naive)
    _write_comparison(out, rows)
    return AdaptResult(runs, rows, out, excluded)


def _gate(
    manifest: Manifest, cfg: AdaptConfig, data_root: str | Path | None, resume: bool, out: Path, quiet: bool
) -> tuple[Manifest, list[dict[str, Any]]]:
    """Every case of every domain through the input gate before the first step; refused cases stop the run, or
    with ``exclude_invalid`` leave the manifest (a resumed run must keep the same cases)."""
    kept, excluded = admit(
        manifest, exclude=cfg.exclude_invalid, command="adaptation", data_root=data_root, progress=not quiet
    )
    saved = out / EXCLUDED_NAME
    if resume and saved.is_file():
        before = {e["case"] for e in json.loads(saved.read_text())}
        now = {e["case"] for e in excluded}
        if before != now:
            raise DataError(
                "--resume: the cases refused by the input checks changed since the run started (then "
                f"{sorted(before)[:5]}, now {sorted(now)[:5]}); restore the files or use a new --out"
            )
    return kept, excluded


def _drift_gate(manifest: Manifest, cfg: AdaptConfig, data_root: str | Path | None) -> Any:
    """The :class:`~medattn.drift.gate.DriftGate` of ``--auto`` (the sliding-window overlap of the evaluation)."""
    from medattn.drift.gate import DriftGate
    from medattn.drift.options import DriftOptions

    options = DriftOptions(
        alpha=cfg.drift_alpha, permutations=cfg.drift_permutations, overlap=cfg.overlap, seed=cfg.seed
    )
    return DriftGate(manifest, options, max_reference=cfg.drift_max_reference, data_root=data_root)


def _saved_matrix(path: Path) -> DiceMatrix | None:
    """The naive run of an earlier ``adapt`` in the same folder (for plasticity), if there is one."""
    if not path.is_file():
        return None
    try:
        return DiceMatrix.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError):
        return None
