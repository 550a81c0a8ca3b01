"""The demo's dataset and output folder: the phantom or ``--data`` (with simulated scanners), split and indexed.

Every scanner gets a train/test split (the data's own, else :func:`medattn.data.synth_writer.default_splits`): the test
split is what ``predict`` calls held out and what ``adapt`` evaluates, so both speak of the same cases.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import shutil
from pathlib import Path
from typing import Any

from medattn.demo.config import DemoConfig
from medattn.errors import ConfigError

log = logging.getLogger(__name__)

#: What a demo writes in OUT (besides ``*.png``); cleared when OUT holds an earlier demo.
DEMO_ENTRIES = (
    "data",
    "runs",
    "predictions",
    "drift",
    "heldout.json",
    "plan.json",
    "validation.json",
    "summary.json",
    "timings.json",
    "report.html",
    "demo_config.json",
)
#: Scanners simulated from a one-domain ``--data`` (A is the near-identity reference: the real data already is).
DATA_SCANNERS = ("B", "C", "D")


def prepare_out(out: Path, data: str | None, data_root: str | None = None) -> None:
    """Make ``out`` ready: create it, or clear an earlier demo from it; refuse a file, a foreign non-empty folder or
    a folder holding any file of the ``--data`` dataset, wherever its manifest or ``--data-root`` places them
    (clearing would delete the user's data: a manifest outside ``out`` whose root was an earlier demo's ``data``)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder")
    if data is not None:
        from medattn.data.importers import split_spec
        from medattn.infer.inputs import input_files

        spec = split_spec(data)[0]
        files, _ = input_files(spec, data_root=data_root) if spec.exists() else ([], None)  # load_data names it
        inside = out.resolve()
        for f in [spec, *([Path(data_root)] if data_root else []), *files]:
            r = Path(f).resolve()
            if inside == r or inside in r.parents:
                raise ConfigError(
                    f"--out {out} holds {f}, a file of the --data dataset; the demo clears its output folder,"
                    " choose another"
                )
    if out.is_dir() and any(out.iterdir()):
        if not (out / "demo_config.json").is_file():
            raise ConfigError(f"--out {out} is not empty and holds no earlier demo; give a new or empty folder")
        for name in DEMO_ENTRIES:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        for png in out.glob("*.png"):
            png.unlink()
    from medattn.data.guard import prepare_output_dir

    prepare_output_dir(out, "--out")


def safe_name(name: str) -> str:
    """A case or scanner name as a file-name part."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "case"


def with_splits(manifest: Any) -> Any:
    """Every domain with a train/test split (the held-out cases are its test split, for predict and adapt alike).

    A domain keeps the data's own splits when they name ``train`` and ``test``; otherwise it gets
    :func:`medattn.data.synth_writer.default_splits` (train/val/test). Training validates on the ``val`` split, or on a
    slice of ``train`` when there is none (:func:`medattn.train.splits.make_split`), never on ``test``.
    """
    from medattn.data.synth_writer import default_splits

    domains = []
    for d in manifest.domains:
        labelled = [c.id for c in d.cases if c.label is not None]
        splits = dict(d.splits)
        if not {"train", "test"} <= set(splits):
            splits = default_splits(labelled)
        splits = {k: tuple(i for i in v if i in labelled) for k, v in splits.items()}
        if not splits.get("train") or not splits.get("test"):
            raise ConfigError(f"domain {d.name!r} needs at least 2 labelled cases (one to train, one to test)")
        domains.append(dataclasses.replace(d, splits=splits))
    return dataclasses.replace(manifest, domains=tuple(domains))


def first_cases(manifest: Any, n: int | None) -> Any:
    """Each domain's first ``n`` labelled cases (all with None), splits restricted to them."""
    domains = []
    for d in manifest.domains:
        cases = tuple(c for c in d.cases if c.label is not None)[:n]
        ids = {c.id for c in cases}
        splits = {k: tuple(i for i in v if i in ids) for k, v in d.splits.items()}
        domains.append(dataclasses.replace(d, cases=cases, splits=splits))
    return dataclasses.replace(manifest, domains=tuple(domains))


def load_data(cfg: DemoConfig, out: Path, data: str | None, data_root: str | None, progress: bool) -> Any:
    """The dataset of the demo, written or indexed under ``out/data`` (see the module docstring)."""
    from medattn.data.importers import load_dataset
    from medattn.data.scanner_table import get_profiles
    from medattn.data.synth import synth_phantom
    from medattn.data.synth_from import synth_from

    try:
        profiles = get_profiles(cfg.scanners or (None if data is None else DATA_SCANNERS))
    except ValueError as e:
        raise ConfigError(f"scanners: {e}") from None
    if data is None:
        return synth_phantom(
            out / "data", seed=cfg.seed, cases=cfg.cases, size=cfg.size, profiles=profiles, progress=progress
        ).manifest
    source = first_cases(load_dataset(data), cfg.max_cases)
    if len(source.domains) == 1:
        result = synth_from(
            source, out / "data", profiles=profiles, seed=cfg.seed, data_root=data_root, progress=progress
        )
        if result.failures:
            log.warning("%d source case(s) could not be read and were left out", len(result.failures))
        return result.manifest
    if cfg.scanners:
        log.warning("--scanners ignored: %s already has %d domains", source.name, len(source.domains))
    log.info("%s has %d domains: using them as the scanners (nothing simulated)", source.name, len(source.domains))
    return dataclasses.replace(source, root=None, base_dir=source.data_root(data_root))
