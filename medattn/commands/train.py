"""``medattn train DATA --out RUN``: train a model on a dataset (``--resume`` continues a run).

Every option is a field of :class:`medattn.train.config.TrainConfig` (dashes for underscores) and may also be
given as a key of ``--config pipelines/train.yaml``. Defaults are ``None`` here so that the config's defaults
apply and ``--resume`` can tell which options were given.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medattn.commands.common import EXIT_OK, EXIT_PROBLEMS, load_data, print_excluded
from medattn.commands.options import (
    add_data,
    add_device,
    add_epochs,
    add_exclude_invalid,
    add_fold,
    add_import_options,
    add_out,
    add_seed,
    add_workers,
)

if TYPE_CHECKING:
    from medattn.train.config import TrainConfig

NAME = "train"
HELP = "train a model on a dataset; RUN/model.pt plus logs (--resume continues)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_data(p)
    add_import_options(p)
    add_out(
        p, required=True, help="run folder (model.pt, model_last.pt, checkpoint.pt, config.json, plan.json, log.csv)"
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--plan", help="plan JSON to use (default: fingerprint the dataset, as `medattn plan` does)")
    p.add_argument("--plan-max-cases", type=int, help="when planning, fingerprint at most this many cases per domain")
    add_exclude_invalid(p)

    m = p.add_argument_group("model")
    m.add_argument("--model", help="model preset (see `medattn models`; default ag_unet)")
    m.add_argument(
        "--widths",
        help="feature width per stage, finest first, e.g. 16,32,64,128 (default: the preset's base width doubled "
        "per plan stage, at most 320)",
    )
    m.add_argument("--deep-supervision", type=int, help="extra low-resolution outputs (default min(2, stages - 2))")
    m.add_argument("--model-options", help='further model config fields as JSON, e.g. \'{"norm": "group"}\'')

    t = p.add_argument_group("optimisation")
    add_epochs(p)
    t.add_argument("--iterations", type=int, help="optimiser steps per epoch (default: one pass over the volumes)")
    t.add_argument("--batch-size", type=int, help="patches per step and process (default: the plan's)")
    t.add_argument("--patch-size", help="training patch and validation window X,Y,Z (default: the plan's)")
    t.add_argument("--samples-per-volume", type=int, help="patches drawn per loaded volume (default 1)")
    t.add_argument("--foreground-ratio", type=float, help="share of patches centred on foreground (default: plan's)")
    t.add_argument("--optimizer", choices=("adamw", "sgd"), help="adamw (default) or sgd (Nesterov momentum)")
    t.add_argument("--lr", type=float, help="initial learning rate (default 1e-3 for adamw, 1e-2 for sgd)")
    t.add_argument("--weight-decay", type=float, help="weight decay (default 1e-2 for adamw, 3e-5 for sgd)")
    t.add_argument("--momentum", type=float, help="SGD momentum (default 0.99)")
    t.add_argument("--poly-power", type=float, help="exponent of the poly learning-rate decay (default 0.9)")
    t.add_argument("--grad-clip", type=float, help="maximum gradient norm; 0 disables (default 12)")
    t.add_argument(
        "--batch-dice", action=argparse.BooleanOptionalAction, default=None, help="Dice over the batch (default on)"
    )
    t.add_argument(
        "--precision",
        choices=("auto", "fp32", "fp16", "bf16"),
        help="autocast: auto = bf16 or fp16 on CUDA, fp32 on a CPU (bf16 only on CPUs with native bf16)",
    )
    t.add_argument("--augment", help="augmentation: default, none, or JSON of AugmentConfig fields")
    add_seed(p)

    v = p.add_argument_group("split and validation")
    add_fold(p)
    v.add_argument(
        "--folds",
        type=int,
        help="k of the k-fold split (default 5); --fold all trains on every case, --fold all-folds trains each of "
        "the k folds into OUT/fold_0 .. OUT/fold_{k-1} (an ensemble for predict, out-of-fold cases for crossval)",
    )
    v.add_argument(
        "--split-seed", type=int, help="seed of the k-fold shuffle and of the held-back validation slice (default 0)"
    )
    v.add_argument("--val-every", type=int, help="validate every N epochs, and after the last (default 1)")
    v.add_argument("--val-overlap", type=float, help="sliding-window overlap in validation (default 0.5)")
    v.add_argument("--sw-batch-size", type=int, help="windows per forward pass in validation (default 2)")
    v.add_argument("--val-max-cases", type=int, help="validate on at most this many cases (default all)")

    r = p.add_argument_group("machine")
    add_device(p)
    add_workers(p)
    r.add_argument("--cache", choices=("memory", "disk", "none"), help="cache preprocessed volumes (default memory)")
    r.add_argument(
        "--tensorboard", action=argparse.BooleanOptionalAction, default=None, help="TensorBoard logs (default on)"
    )
    # None marks "not given" for --resume; TrainConfig supplies the defaults.
    p.set_defaults(seed=None, workers=None)


def given_options(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`~medattn.train.config.TrainConfig` fields the command line or ``--config`` gave (not None)."""
    import dataclasses

    from medattn.train.config import TrainConfig

    names = [f.name for f in dataclasses.fields(TrainConfig)]
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The run config from the command line; on ``--resume``, the saved one with the runtime options applied
    (:func:`medattn.train.run.resumed_config`)."""
    from medattn.train.config import TrainConfig
    from medattn.train.run import resumed_config

    values = given_options(args)
    given = TrainConfig.from_options(values)
    return resumed_config(given, set(values), Path(args.out)) if args.resume else given


ALL_FOLDS = "all-folds"


def run(args: argparse.Namespace) -> int:
    """Parse, join a torchrun job if any, train, print a summary (rank 0); ``--fold all-folds``: every fold."""
    from medattn.runtime import retain_freed_memory

    retain_freed_memory()  # the step's freed activations stay in the heap for the next step (see its docstring)
    if getattr(args, "fold", None) == ALL_FOLDS:
        return run_all_folds(args)
    return train_one(args)


def run_all_folds(args: argparse.Namespace) -> int:
    """Train folds 0 .. k-1 one after another into ``OUT/fold_k`` (nnU-Net's five folds, in one command).

    Every fold uses one plan: ``--plan`` when given, else the one fold 0 computed (``OUT/fold_0/plan.json``), so the
    folds are one ensemble that :mod:`medattn.models.ensemble` accepts. With ``--resume`` a fold that has a run
    folder continues it (a finished one returns at once) and a fold without one starts; without it, an existing
    fold folder is refused as any run folder is. Exit code: the worst of the folds'.
    """
    import copy

    from medattn.runtime import Rank
    from medattn.train.config import TrainConfig

    out = Path(args.out)
    k = args.folds or TrainConfig.folds
    say = not args.quiet and Rank.from_env().is_main  # under torchrun every rank runs this loop; rank 0 speaks
    codes = []
    for fold in range(k):
        fold_args = copy.copy(args)
        fold_args.fold, fold_args.out = str(fold), str(out / f"fold_{fold}")
        fold_args.resume = bool(args.resume) and (out / f"fold_{fold}" / "config.json").is_file()
        if fold and not args.plan and not fold_args.resume:
            fold_args.plan = str(out / "fold_0" / "plan.json")
        if say:
            print(f"fold {fold} of {k}: {fold_args.out}", flush=True)
        codes.append(train_one(fold_args))
    if say:
        print(f"{k} folds in {out}: `medattn crossval {out} DATA` learns the postprocessing on their validation")
        print(f"cases; `medattn predict {out} IMAGES OUT` predicts with the {k}-fold ensemble")
    return max(codes)


def train_one(args: argparse.Namespace) -> int:
    """One run: ``args.out`` with ``args.fold``."""
    import math

    from medattn.data.plan import Plan
    from medattn.train import distributed
    from medattn.train.trainer import train

    out = Path(args.out)
    config = train_config(args)
    config = config.replace(data=str(args.data), data_root=args.data_root or config.data_root)
    info, device = distributed.init_from_env(config.device)
    try:
        config = config.replace(device=device)
        manifest = load_data(args)
        plan = Plan.load(args.plan) if getattr(args, "plan", None) else None
        result = train(config, manifest, out, plan=plan, resume=bool(args.resume), progress=not args.quiet)
        if info.is_main:
            dice = "no validation" if math.isnan(result.best_dice) else f"best val Dice {result.best_dice:.4f}"
            print(f"{result.epochs} epoch(s); {dice} (epoch {result.best_epoch}); model written to {result.model_path}")
            print_excluded(result.excluded)
    finally:
        distributed.shutdown(info)
    return EXIT_PROBLEMS if result.excluded else EXIT_OK
