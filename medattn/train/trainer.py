"""The training loop of ``medattn train``: one function, DDP-aware, resumable.

:func:`train` takes a :class:`~medattn.train.config.TrainConfig`, a manifest and a run folder, and writes::

    RUN/config.json      the resolved run config          RUN/plan.json       the (effective) plan
    RUN/split.json       training and validation case ids RUN/log.csv         one row per epoch
    RUN/model.pt         best validation Dice (self-contained, medattn.models.model_file.save_model)
    RUN/model_last.pt    the latest epoch                 RUN/checkpoint.pt   resume state (medattn.train.state)
    RUN/summary.json     best epoch and Dice              RUN/tensorboard/    TensorBoard events

every file atomically, and only on rank 0. An epoch: a fixed number of steps of Dice + cross-entropy with deep
supervision (:mod:`medattn.train.losses`), gradient clipping and optional autocast; poly learning-rate decay;
every ``val_every`` epochs (and after the last) sliding-window validation on whole volumes
(:mod:`medattn.train.validation`). A run killed at any moment continues with ``resume=True`` from the end of its
last completed epoch, with the same optimiser, scheduler, random state and the same batches it would have drawn.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medattn.data.digests import case_digests, changed_cases
from medattn.data.manifest import Manifest
from medattn.data.plan import Plan
from medattn.errors import MedattnError
from medattn.runtime import Rank, resolve_device, seed_everything
from medattn.train import distributed
from medattn.train.config import TrainConfig, augment_config
from medattn.train.run import case_items, prepare_run, resolve_plan
from medattn.train.splits import Split, make_split, resolve_fold

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpochRecord:
    """What one finished epoch produced (given to ``on_epoch_end`` after its files are written)."""

    epoch: int
    row: Mapping[str, Any]
    is_best: bool


@dataclass
class TrainResult:
    """A finished (or already complete) run: where its files are and how well it did."""

    out: Path
    config: TrainConfig
    plan: Plan
    split: Split
    epochs: int
    best_dice: float
    best_epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)
    val_cases: int = 0
    """Cases validated (the split's validation cases, at most ``val_max_cases``)."""
    model: nn.Module | None = field(default=None, repr=False)
    """The trained network after the last epoch (unwrapped from DDP, on the training device)."""
    excluded: list[dict[str, Any]] = field(default_factory=list)
    """Cases the input gate refused and ``exclude_invalid`` left out: ``case``, ``domain``, ``file``, ``reason``."""

    @property
    def model_path(self) -> Path:
        return self.out / "model.pt"

    def summary(self) -> dict[str, Any]:
        last = self.history[-1] if self.history else {}
        return {
            "model": str(self.model_path),
            "epochs": self.epochs,
            "best_epoch": self.best_epoch,
            "best_val_dice": None if math.isnan(self.best_dice) else self.best_dice,
            "last": {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in last.items()},
            "split": self.split.description,
            "train_cases": len(self.split.train),
            "val_cases": self.val_cases,
            "excluded": self.excluded,
        }


def train(
    config: TrainConfig | None,
    manifest: Manifest,
    out: str | Path,
    *,
    plan: Plan | None = None,
    resume: bool = False,
    progress: bool = True,
    on_epoch_end: Callable[[EpochRecord], None] | None = None,
) -> TrainResult:
    """Train a model on ``manifest`` and write the run folder ``out`` (see the module docstring).

    Args:
        config: the run configuration; with ``resume`` only its runtime fields (device, workers, data location,
            cache, tensorboard) are used and the rest comes from ``out/config.json`` (may be None).
        manifest: the dataset (already restricted to the domains to train on).
        out: run folder; must not hold a finished epoch unless ``resume``.
        plan: preprocessing plan; None: ``out/plan.json`` when resuming, else computed with ``make_plan``.
        resume: continue from ``out/checkpoint.pt`` (or start over with the saved config when the run was killed
            before its first epoch ended).
        progress: show progress bars (rank 0).
        on_epoch_end: called on every rank after each epoch's files are written.

    Distributed: when ``torch.distributed`` is initialised (``torchrun``; see
    :func:`medattn.train.distributed.init_from_env`), every rank calls this with the same arguments; the network
    is wrapped in ``DistributedDataParallel``, each rank samples its share and validates its share of the cases,
    metrics are reduced, and only rank 0 writes. Seeds torch, NumPy and ``random`` from ``config.seed`` (the
    purpose of a seed); changes no other global state.

    Raises:
        ConfigError: an invalid option, or ``out`` already holding a run without ``resume``.
        DataError: an unreadable case or checkpoint.
    """
    from medattn.models.from_plan import build_network, output_scales
    from medattn.models.model_file import save_model
    from medattn.train.data import batch_plan, epoch_batches, training_dataset, validation_dataset
    from medattn.train.logs import RunLogger, log_columns
    from medattn.train.losses import DeepSupervisionLoss
    from medattn.train.optim import make_optimizer, make_poly_schedule
    from medattn.train.precision import resolve_precision
    from medattn.train.state import capture_rng, load_checkpoint, restore_rng, save_checkpoint
    from medattn.train.validation import validate

    out = Path(out)
    info = distributed.current()
    config, ckpt_path, saved_plan = prepare_run(config, out, resume, info)
    if info.is_main:  # before any data is read: the run folder is no input and can be written
        from medattn.data.guard import InputGuard, prepare_output_dir

        InputGuard.of_manifest(manifest, config.data_root, config.data or None).check_dir(out, "--out")
        prepare_output_dir(out, "--out")
    ckpt = load_checkpoint(ckpt_path) if ckpt_path is not None else None
    config = config.replace(fold=resolve_fold(manifest, config.fold))
    split = make_split(manifest, str(config.fold), config.folds, config.split_seed)
    split, excluded = _gate(manifest, split, config, info, progress and info.is_main)
    digests = case_digests(manifest, [*split.train, *split.val], config.data_root)  # --resume: the same files
    if resume:
        _check_same_split(out, split, digests)
    planning = manifest.without({e["case"] for e in excluded})
    config, plan = resolve_plan(config, planning, saved_plan or plan, info, progress and info.is_main)
    device = resolve_device(config.device, local_rank=info.local_rank if info.enabled else None)
    precision = resolve_precision(config.precision, device)
    train_items = case_items(manifest, split.train, config.data_root)
    val_items = case_items(manifest, split.val, config.data_root)[: config.val_max_cases]
    class_names = [plan.labels[k] for k in sorted(plan.labels)]
    # ---- model, optimiser, state -------------------------------------------------------------------------------
    seed_everything(config.seed)
    net = build_network(config.model, plan, config.widths, config.deep_supervision, config.model_options).to(device)
    optimizer = make_optimizer(
        net, config.optimizer, float(config.lr or 0), float(config.weight_decay or 0), config.momentum
    )
    scheduler = make_poly_schedule(optimizer, config.epochs, config.poly_power)
    scaler = precision.grad_scaler()
    loss_fn = DeepSupervisionLoss(scales=output_scales(net), batch_dice=config.batch_dice)
    main = info.is_main  # the network is built before anything is written: a misfit fails cleanly
    if main:
        out.mkdir(parents=True, exist_ok=True)
        config.save(out / "config.json")
        plan.save(out / "plan.json")
        from medattn.data.io import atomic_write_text

        doc = {**split.to_dict(), "excluded": excluded, "file_digests": digests}
        atomic_write_text(out / "split.json", json.dumps(doc, indent=2) + "\n")
        log.info("training on %d case(s), validating on %d: %s", len(split.train), len(val_items), split.description)

    seed_everything(config.seed + info.rank)
    start, best_dice, best_epoch, history = 0, float("nan"), 0, []
    if ckpt is not None:
        net.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        rngs = ckpt.get("rng", [])
        if len(rngs) == info.world_size:
            restore_rng(rngs[info.rank])
        elif main:
            log.warning(
                "checkpoint was written by %d process(es), this run has %d: random state re-seeded",
                len(rngs),
                info.world_size,
            )
        start = int(ckpt["epoch"])
        best = ckpt.get("best", {})
        best_dice, best_epoch = float(best.get("dice", float("nan"))), int(best.get("epoch", 0))
        history = [dict(r) for r in ckpt.get("history", [])]
        if main:
            log.info("resuming %s after epoch %d of %d", out, start, config.epochs)
    model: nn.Module = net
    if info.enabled:
        model = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)

    result = TrainResult(out, config, plan, split, start, best_dice, best_epoch, history, len(val_items), net, excluded)
    if start >= config.epochs:
        if main:
            log.info("%s is already complete (%d epochs)", out, start)
        return result

    # ---- data ------------------------------------------------------------------------------------------------
    cache_dir = out / "cache" if config.cache == "disk" else None
    train_ds = training_dataset(
        train_items, plan, augment_config(config), config.samples_per_volume, config.cache, cache_dir, progress and main
    )
    my_val = val_items[info.rank :: info.world_size]
    val_ds = validation_dataset(my_val, plan, config.cache, cache_dir, progress and main) if val_items else None
    bp = batch_plan(len(train_items), plan.batch_size, config.samples_per_volume, config.iterations, info.world_size)
    logger = RunLogger(
        out, log_columns(class_names[1:]), enabled=main, tensorboard=config.tensorboard, start_epoch=start
    )
    meta_base = {"run": config.to_dict(), "split": split.description, "dataset": manifest.name}

    from tqdm.auto import tqdm

    bar = tqdm(total=config.epochs, initial=start, desc="train", unit="epoch", disable=not (progress and main))
    try:
        for epoch in range(start, config.epochs):
            t0 = time.perf_counter()
            lr = float(optimizer.param_groups[0]["lr"])
            loss_sum = _train_epoch(
                model,
                loss_fn,
                optimizer,
                scaler,
                precision,
                config.grad_clip,
                epoch_batches(train_ds, bp, epoch, config.seed, info, config.workers, device.type == "cuda"),
                bp.iterations,
                device,
                progress and main,
                f"epoch {epoch + 1}/{config.epochs}",
            )
            totals = distributed.all_reduce_sum(loss_sum, info)
            train_loss = float(totals[0]) / max(float(totals[1]), 1.0)
            scheduler.step()
            seconds = time.perf_counter() - t0
            row: dict[str, Any] = {"epoch": epoch + 1, "lr": lr, "train_loss": train_loss, "seconds": seconds}
            is_last = epoch + 1 == config.epochs
            is_best = False
            if val_ds is not None and ((epoch + 1) % config.val_every == 0 or is_last):
                t1 = time.perf_counter()
                res = validate(
                    net,
                    val_ds,
                    plan.patch_size,
                    class_names,
                    device=device,
                    sw_batch_size=config.sw_batch_size,
                    overlap=config.val_overlap,
                    precision=precision,
                    dist_info=info,
                    progress=False,
                )
                row.update(res.as_row())
                row["val_seconds"] = time.perf_counter() - t1
                if not math.isnan(res.mean) and (math.isnan(best_dice) or res.mean > best_dice):
                    best_dice, best_epoch, is_best = res.mean, epoch + 1, True
            elif val_ds is None:
                best_epoch, is_best = epoch + 1, True  # without validation, the latest is the one to keep
            history.append(row)
            if main:
                meta = {**meta_base, "epoch": epoch + 1, "metrics": row}
                logger.write(history)
                save_model(out / "model_last.pt", net, plan, {**meta, "kind": "last"})
                if is_best:
                    save_model(out / "model.pt", net, plan, {**meta, "kind": "best"})
            rngs = distributed.gather_objects(capture_rng(), info)
            if main:
                save_checkpoint(
                    out / "checkpoint.pt",
                    {
                        "epoch": epoch + 1,
                        "model": net.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                        "rng": rngs,
                        "best": {"dice": best_dice, "epoch": best_epoch},
                        "history": history,
                        "config": config.to_dict(),
                    },
                )
                _log_epoch(row, class_names[1:], config.epochs)
                bar.set_postfix(loss=f"{train_loss:.3f}", dice=_fmt(row.get("val_dice")), best=_fmt(best_dice))
            bar.update()
            result.epochs, result.best_dice, result.best_epoch = epoch + 1, best_dice, best_epoch
            if on_epoch_end is not None:
                on_epoch_end(EpochRecord(epoch + 1, dict(row), is_best))
        if main:
            from medattn.data.io import atomic_write_text

            atomic_write_text(out / "summary.json", json.dumps(result.summary(), indent=2) + "\n")
    finally:
        bar.close()
        logger.close()
    distributed.barrier(info)
    return result


def _gate(
    manifest: Manifest, split: Split, config: TrainConfig, info: Rank, progress: bool
) -> tuple[Split, list[dict[str, Any]]]:
    """Pass every training and validation case through the input gate before the first step (each process checks
    its share, all get the verdict). Refused cases stop the run, or with ``exclude_invalid`` leave the split."""
    from medattn.data.gate import admit
    from medattn.errors import DataError

    _, excluded = admit(
        manifest,
        [*split.train, *split.val],
        exclude=config.exclude_invalid,
        command="training",
        data_root=config.data_root,
        progress=progress,
        share=(info.rank, info.world_size),
        gather=(lambda results: distributed.gather_objects(results, info)) if info.enabled else None,
    )
    bad = {e["case"] for e in excluded}
    if not bad:
        return split, excluded
    kept = Split(
        tuple(i for i in split.train if i not in bad),
        tuple(i for i in split.val if i not in bad),
        f"{split.description}; {len(bad)} refused case(s) left out",
    )
    if not kept.train:
        raise DataError(f"{manifest.name}: every training case was refused by the input checks")
    return kept, excluded


def _check_same_split(out: Path, split: Split, digests: Mapping[str, str]) -> None:
    """A resumed run trains on the cases it started with, file for file: refuse when the gate now keeps other
    ones, or when a case's files differ from those recorded at the start (runs written before the digests were
    recorded are checked by ids only)."""
    from medattn.errors import DataError

    path = out / "split.json"
    if not path.is_file():
        return
    saved = json.loads(path.read_text())
    for side in ("train", "val"):
        before, now = set(saved.get(side, [])), set(getattr(split, side))
        if before != now:
            change = sorted(before ^ now)[:5]
            raise DataError(
                f"--resume: the {side} cases differ from those the run started with (e.g. {change}); a case's "
                "files changed or now fail the input checks. Restore them, or start a new run with another --out"
            )
    changed = changed_cases(saved.get("file_digests") or {}, dict(digests))
    if changed:
        raise DataError(
            f"--resume: the files of {len(changed)} case(s) differ from those the run started on (e.g. "
            f"{changed[:5]}): another dataset with the same case ids, or images or labels edited since. Restore "
            "them, or start a new run with another --out"
        )


def _train_epoch(
    model: nn.Module,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    precision: Any,
    grad_clip: float,
    batches: Any,
    iterations: int,
    device: torch.device,
    progress: bool,
    desc: str,
) -> torch.Tensor:
    """One epoch of optimiser steps; returns ``[sum of step losses, steps]`` (float64) of this rank."""
    from tqdm.auto import tqdm

    model.train()
    total, steps = 0.0, 0
    bar = tqdm(batches, total=iterations, desc=desc, unit="step", leave=False, disable=not progress)
    for batch in bar:
        x = batch["image"].to(device, non_blocking=True)
        y = batch["label"].to(device, non_blocking=True)
        with precision.autocast():
            outputs = model(x)
        loss = loss_fn(outputs, y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if grad_clip > 0:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise MedattnError(f"the training loss became {value}; lower --lr or use --precision fp32")
        total += value
        steps += 1
        bar.set_postfix(loss=f"{total / steps:.3f}")
    return torch.tensor([total, float(steps)], dtype=torch.float64)


def _fmt(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def _log_epoch(row: Mapping[str, Any], names: list[str], epochs: int) -> None:
    msg = f"epoch {row['epoch']}/{epochs}: loss {row['train_loss']:.4f}, lr {row['lr']:.3g}, {row['seconds']:.1f} s"
    if "val_dice" in row:
        per = ", ".join(f"{n} {_fmt(row.get(f'val_dice_{n}'))}" for n in names)
        msg += f"; val Dice {_fmt(row['val_dice'])} ({per})"
    log.info(msg)
