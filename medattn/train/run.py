"""The run folder: starting a run or resuming one, the plan it trains with, and the config ``--resume`` uses.

A run folder holds at most one run. A new run refuses a folder that already holds a finished epoch (continue it
with ``--resume``, or pick another ``--out``). A resumed run takes its configuration from ``RUN/config.json`` and
its plan from ``RUN/plan.json``; only the fields that describe the machine and where the data lie
(:data:`~medattn.train.config.RUNTIME_FIELDS`) may change, and any other option given with ``--resume`` that
differs from the saved run is refused rather than silently ignored.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import replace
from pathlib import Path
from typing import Any

from medattn.data.manifest import Manifest
from medattn.data.plan import Plan
from medattn.errors import ConfigError
from medattn.runtime import Rank
from medattn.train import distributed
from medattn.train.config import RUNTIME_FIELDS, TrainConfig

log = logging.getLogger(__name__)

#: What a run folder holds (``tensorboard/`` and, with ``cache: disk``, ``cache/`` besides).
RUN_FILES = (
    "config.json",
    "plan.json",
    "split.json",
    "log.csv",
    "model.pt",
    "model_last.pt",
    "checkpoint.pt",
    "summary.json",
)


def prepare_run(
    config: TrainConfig | None, out: Path, resume: bool, info: Rank
) -> tuple[TrainConfig, Path | None, Plan | None]:
    """The run's config, the path of its resume checkpoint (or None; loaded by the caller once the run folder is
    known to be writable) and its saved plan (resume only)."""
    if resume:
        if not (out / "config.json").is_file():
            raise ConfigError(f"--resume: {out} holds no run (no config.json); start one without --resume")
        saved = TrainConfig.load(out / "config.json")
        if config is not None:
            saved = saved.replace(**{f: getattr(config, f) for f in RUNTIME_FIELDS})
        plan = Plan.load(out / "plan.json") if (out / "plan.json").is_file() else None
        ckpt = out / "checkpoint.pt" if (out / "checkpoint.pt").is_file() else None
        if ckpt is None and info.is_main:
            log.warning("%s: no checkpoint yet (killed during its first epoch); starting it again", out)
        return saved, ckpt, plan
    if config is None:
        raise ConfigError("train(): a config is needed unless resuming")
    taken = [n for n in ("checkpoint.pt", "model.pt", "model_last.pt") if (out / n).exists()]
    if taken:
        raise ConfigError(
            f"{out} already holds a run ({', '.join(taken)}); continue it with --resume or pick a new --out"
        )
    return config, None, None


def resolve_plan(
    config: TrainConfig, manifest: Manifest, plan: Plan | None, info: Rank, progress: bool
) -> tuple[TrainConfig, Plan]:
    """Compute the plan on rank 0 when none is given, apply the run's overrides, and resolve them in the config."""
    if plan is None:
        doc = None
        if info.is_main:
            from medattn.data.plan import make_plan

            log.info("planning from %s (fingerprint) ...", manifest.name)
            plan = make_plan(
                manifest,
                data_root=config.data_root,
                max_cases=config.plan_max_cases,
                seed=config.seed,
                progress=progress,
                checked=True,  # the trainer's input gate has passed every case it is given
            )
            doc = plan.to_dict()
        plan = Plan.from_dict(distributed.broadcast_object(doc, info))
    if dict(plan.labels) != dict(manifest.labels):
        raise ConfigError(f"the plan's labels {dict(plan.labels)} differ from the dataset's {dict(manifest.labels)}")
    from medattn.data.gate import channel_mismatch

    why = channel_mismatch([c.name for c in plan.channels], [c.name for c in manifest.channels])
    if why:
        raise ConfigError(f"--plan: {why}")
    effective = replace(
        plan,
        patch_size=config.patch_size or plan.patch_size,
        batch_size=config.batch_size or plan.batch_size,
        foreground_ratio=plan.foreground_ratio if config.foreground_ratio is None else config.foreground_ratio,
    )
    if effective.batch_size % config.samples_per_volume:
        raise ConfigError(
            f"batch size {effective.batch_size} is not a multiple of samples_per_volume {config.samples_per_volume}"
        )
    config = config.replace(
        patch_size=effective.patch_size, batch_size=effective.batch_size, foreground_ratio=effective.foreground_ratio
    )
    return config, effective


def case_items(manifest: Manifest, ids: tuple[str, ...], data_root: str | None) -> list[dict[str, Any]]:
    by_id = {d["case_id"]: d for d in manifest.datalist(data_root=data_root)}
    return [by_id[i] for i in ids]


def resumed_config(given: TrainConfig, explicit: Collection[str], out: Path) -> TrainConfig:
    """The saved config of the run in ``out`` for ``--resume``, with the runtime options among ``explicit`` (the
    field names the user gave) taken from ``given``; any other explicit option that differs from the saved run is
    refused rather than silently ignored.

    Raises:
        ConfigError: ``out`` holds no run, or an explicit experiment option differs from the saved one.
    """
    path = out / "config.json"
    if not path.is_file():
        raise ConfigError(f"--resume: {out} holds no run (no config.json); start one without --resume")
    saved = TrainConfig.load(path)
    names = [n for n in saved.to_dict() if n not in ("format", "version")]
    explicit = {n for n in names if n in explicit}
    differ = [n for n in sorted(explicit - set(RUNTIME_FIELDS) - {"fold"}) if getattr(given, n) != getattr(saved, n)]
    if "fold" in explicit and given.fold != saved.fold:
        differ.append("fold")
    if differ:
        raise ConfigError(
            f"--resume continues {out} with its saved configuration; these options differ from it: "
            + ", ".join(f"{n} ({getattr(given, n)!r} vs {getattr(saved, n)!r})" for n in differ)
            + ". Drop them, or start a new run with another --out."
        )
    return saved.replace(**{f: getattr(given, f) for f in RUNTIME_FIELDS if f in explicit})
