"""Running the demo: :func:`run`, the library call behind ``medattn demo`` (:mod:`medattn.commands.demo`)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medattn.demo.config import DemoConfig
from medattn.demo.data import load_data, prepare_out, with_splits
from medattn.demo.steps import DemoSteps, StepLog
from medattn.errors import ConfigError

log = logging.getLogger("medattn.demo")


@dataclass
class DemoResult:
    """What :func:`run` produced: the summary document and where the report is."""

    summary: dict[str, Any]
    report: Path
    timings: dict[str, dict[str, float]]


def run(
    cfg: DemoConfig,
    out: str | Path,
    *,
    data: str | None = None,
    data_root: str | None = None,
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
) -> DemoResult:
    """Run the eight steps of :mod:`medattn.demo`; returns the summary and the report's path.

    Args:
        cfg: the knobs.
        out: output folder (new, empty, or an earlier demo's).
        data: a dataset (manifest, MSD, nnU-Net, per-domain folders...) instead of the phantom.
        data_root: overrides ``data``'s manifest root.
        progress: show progress bars.
        echo: where the step lines (``[k/8] ...`` and each step's result) go; None: the ``medattn.demo`` logger
            at INFO level. ``medattn demo`` prints them.

    ``cfg.threads`` is recorded in ``demo_config.json`` but not applied: the thread count is the caller's (global
    PyTorch state); ``medattn demo`` runs this inside :func:`medattn.runtime.torch_threads`, and a caller that wants
    the command's numbers does the same.

    Raises:
        ConfigError: bad options or output folder; DataError / ManifestError: unreadable data;
        MedattnError: validation found problems (the report lists them in ``validation.json``).
    """
    from medattn.data.io import atomic_write_text
    from medattn.data.plan import make_plan
    from medattn.data.validate import validate_manifest
    from medattn.data.validation_report import format_report
    from medattn.errors import MedattnError

    echo = echo or log.info
    out = Path(out)
    prepare_out(out, data, data_root)
    atomic_write_text(out / "demo_config.json", json.dumps(cfg.to_dict(), indent=2) + "\n")
    steps = StepLog(echo)

    steps.start("data", "data: " + (f"{data} with simulated scanners" if data else "multi-scanner phantom"))
    manifest = with_splits(load_data(cfg, out, data, data_root, progress))
    manifest.save(out / "data" / "manifest.json")
    first = manifest.domains[0].name
    if len(manifest.domains) < 2:
        raise ConfigError("the demo needs at least two scanners (domains); give more with --scanners")
    counts = ", ".join(f"{d.name} {len(d.cases)}" for d in manifest.domains)
    steps.done(f"{manifest.num_cases} cases in {len(manifest.domains)} scanners ({counts}) in {out / 'data'}")

    steps.start("validate", "validate every case")
    report = validate_manifest(manifest, progress=False)
    atomic_write_text(out / "validation.json", json.dumps(report.to_dict(), indent=2) + "\n")
    steps.done(format_report(report, max_rows=10).splitlines()[-1])
    if not report.ok:
        echo(format_report(report, max_rows=20))
        raise MedattnError(f"validation found problems; see {out / 'validation.json'}")

    steps.start("plan", f"plan on scanner {first}")
    plan = make_plan(manifest.select([first]), seed=cfg.seed)
    plan.save(out / "plan.json")
    steps.done(
        f"spacing {_fmt_triple(plan.target_spacing)} mm, patch {_fmt_triple(plan.patch_size)}, "
        f"{len(plan.strides)} stages, {plan.num_classes} classes"
    )

    later = DemoSteps(cfg, out, manifest, first, progress, steps)
    later.train(plan)
    later.predict()
    later.drift()
    later.adapt()
    summary, report_path = later.report()
    return DemoResult(summary, report_path, steps.timings)


def _fmt_triple(values: Sequence[float]) -> str:
    return "x".join(f"{v:g}" for v in values)
