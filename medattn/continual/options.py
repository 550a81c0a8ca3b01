"""Arguments of ``medattn adapt`` (light: argparse only, imported when the parser is built)."""

from __future__ import annotations

import argparse

from medattn.options import (
    add_data,
    add_device,
    add_epochs,
    add_exclude_invalid,
    add_import_options,
    add_out,
    add_seed,
    add_workers,
)

METHOD_NAMES = "naive, joint, cumulative, replay, ewc, si, lwf, mib"


def add_adapt_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="the trained model file to start from (model.pt of `medattn train`)")
    add_data(p, help_extra="; the domains are adapted through in this order (DATA:A,B,C picks and orders them)")
    add_import_options(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--strategy", help=f"the continual-learning method: {METHOD_NAMES} (default naive)")
    g.add_argument(
        "--strategies",
        metavar="A,B,C",
        help="several methods, each from the same start model, plus a comparison table (RUN/comparison.*)",
    )
    add_out(p, help="run folder: one sub-folder per method (models per experience, Dice matrix, logs)")
    add_epochs(p)
    p.add_argument("--batch-size", type=int, help="volumes per training step (default 2)")
    p.add_argument("--samples-per-volume", type=int, help="patches drawn per volume (default 2)")
    p.add_argument("--patch-size", help="training patch and evaluation window X,Y,Z (default: the model's plan)")
    p.add_argument("--optimizer", choices=("adamw", "sgd"), help="optimiser (default adamw)")
    p.add_argument("--lr", type=float, help="learning rate (default 3e-4)")
    p.add_argument("--weight-decay", type=float, help="weight decay (default 1e-4)")
    p.add_argument("--momentum", type=float, help="SGD momentum (default 0.99)")
    p.add_argument(
        "--poly-power", type=float, help="poly learning-rate decay within each experience (default 0.9; 0: off)"
    )
    p.add_argument("--grad-clip", type=float, help="maximum gradient norm (default 12; 0: off)")
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "fp16", "bf16"),
        help="auto (default): mixed precision on CUDA, float32 on the CPU",
    )
    p.add_argument("--overlap", type=float, help="sliding-window overlap of the evaluation (default 0.5)")
    p.add_argument("--window-batch", type=int, help="windows per forward pass in evaluation (default 2)")
    p.add_argument("--augment", help="'default', 'none' or a YAML mapping of augmentation options")
    p.add_argument("--cache", choices=("memory", "disk", "none"), help="caching of preprocessed volumes")
    p.add_argument(
        "--test-fraction",
        type=float,
        help="share of a domain's cases tested when the manifest has no test split (default 0.25)",
    )
    p.add_argument(
        "--no-eval-before",
        dest="eval_before",
        action="store_const",
        const=False,
        default=None,
        help="skip evaluating the start model (no 'before' row, no forward transfer)",
    )
    p.add_argument(
        "--methods",
        help="YAML mapping of per-method hyper-parameters, e.g. '{replay: {mem_size: 64}}', merged over the "
        "--config file's methods section (defaults as in pipelines/adapt.yaml)",
    )
    p.add_argument(
        "--loggers",
        help="Avalanche loggers: interactive,text,csv,tensorboard (default "
        "interactive,csv,tensorboard; --quiet drops interactive)",
    )
    p.add_argument(
        "--auto",
        action="store_const",
        const=True,
        default=None,
        help="drift-gated adaptation: test each domain after the first for drift against the domains trained on so "
        "far and train on it only when it has drifted; decisions and evidence in RUN/<method>/decisions.json",
    )
    p.add_argument("--drift-alpha", type=float, help="with --auto: significance level of the drift test (default 0.05)")
    p.add_argument(
        "--drift-max-reference",
        type=int,
        help="with --auto: reference volumes at most, balanced over the trained domains (default 40)",
    )
    p.add_argument("--drift-permutations", type=int, help="with --auto: MMD permutations per test (default 1000)")
    add_exclude_invalid(p)
    add_seed(p)
    add_workers(p)
    add_device(p)
    p.add_argument("--resume", action="store_true", help="continue the run in --out after its last finished experience")
