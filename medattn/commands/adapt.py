"""``medattn adapt MODEL DATA --strategy NAME --out RUN``: continual learning over a dataset's domains
(:func:`medattn.continual.adapt.adapt`); prints each method's Dice matrix and the comparison table."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from medattn.commands.common import EXIT_OK, EXIT_PROBLEMS, load_data, print_excluded
from medattn.commands.options import (
    add_data,
    add_device,
    add_epochs,
    add_exclude_invalid,
    add_import_options,
    add_out,
    add_seed,
    add_workers,
)
from medattn.continual.methods import method_names

if TYPE_CHECKING:
    from medattn.continual.config import AdaptConfig

NAME = "adapt"
HELP = "continual learning over a dataset's domains (Avalanche); Dice matrix, BWT, forgetting, FWT"

#: Options that are :class:`~medattn.continual.config.AdaptConfig` fields of the same name (besides the
#: ``--strategy``/``--strategies`` pair, which both give ``strategies``).
CONFIG_OPTIONS = (
    "epochs",
    "steps",
    "batch_size",
    "samples_per_volume",
    "patch_size",
    "optimizer",
    "lr",
    "weight_decay",
    "precision",
    "overlap",
    "window_batch",
    "augment",
    "cache",
    "test_fraction",
    "eval_split",
    "eval_before",
    "methods",
    "loggers",
    "seed",
    "workers",
    "device",
    "momentum",
    "poly_power",
    "grad_clip",
    "auto",
    "exclude_invalid",
    "drift_alpha",
    "drift_max_reference",
    "drift_permutations",
    "labelled",
    "label_order",
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="the trained model file to start from (model.pt of `medattn train`)")
    add_data(p, help_extra="; the domains are adapted through in this order (DATA:A,B,C picks and orders them)")
    add_import_options(p)
    methods = ", ".join(method_names())  # the files of medattn/continual/methods/, read without importing them
    g = p.add_mutually_exclusive_group()
    g.add_argument("--strategy", metavar="NAME", help=f"the continual-learning method: {methods} (default naive)")
    g.add_argument(
        "--strategies",
        metavar="A,B,C",
        help=f"several methods, comma-separated ({methods}), each from the same start model, plus a comparison "
        "table (RUN/comparison.*)",
    )
    add_out(p, required=True, help="run folder: one sub-folder per method (models per experience, Dice matrix, logs)")
    add_epochs(p)
    p.add_argument(
        "--steps",
        type=int,
        metavar="N",
        help="optimiser steps per domain instead of --epochs (the same training length for a domain of few labelled "
        "cases as for a large one)",
    )
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
        "--eval-split",
        choices=("test", "val"),
        help="the split every Dice is measured on: test (default), or val to choose hyper-parameters without the "
        "test cases",
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
        "--config file's methods section (every method's options and defaults: --print-template)",
    )
    p.add_argument(
        "--print-template",
        action=PrintTemplate,
        help="print the methods section of pipelines/adapt.yaml (each method's hyper-parameters at their defaults, "
        "from medattn/continual/methods/) and exit",
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
    p.add_argument(
        "--labelled",
        type=int,
        metavar="N",
        help="train on the labels of only N training cases of each domain after the first (the others' labels are "
        "never read; their images are the unlabelled pool of label-free methods such as selftrain); RUN/labels.json "
        "lists them. Default: every label",
    )
    p.add_argument(
        "--label-order",
        metavar="FILE",
        help="with --labelled: label the first N of each domain in this order (the ranking.csv of `medattn drift`, a "
        "JSON list or one case id a line); default: N drawn at random with --seed",
    )
    add_exclude_invalid(p)
    add_seed(p)
    add_workers(p)
    add_device(p)
    p.add_argument("--resume", action="store_true", help="continue the run in --out after its last finished experience")


class PrintTemplate(argparse.Action):
    """``--print-template``: print :func:`~medattn.continual.methods.methods_template` and exit (like
    ``--version``, before the positional arguments are required)."""

    def __init__(self, option_strings: Sequence[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, help=help)

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option: str | None = None
    ) -> None:
        from medattn.continual.methods import methods_template

        sys.stdout.write(methods_template())
        parser.exit()


def adapt_config(args: argparse.Namespace) -> AdaptConfig:
    """An :class:`~medattn.continual.config.AdaptConfig` from parsed arguments (values may come from ``--config``
    YAML; ``--methods`` is merged over the config file's ``methods`` section, per method)."""
    import yaml

    from medattn.continual.config import AdaptConfig
    from medattn.errors import ConfigError

    values: dict[str, Any] = {}
    # --strategy and --strategies exclude each other on the command line; the one given there wins over the other
    # one from --config
    given: set[str] = getattr(args, "_given", set())
    if not given & {"strategy", "strategies"} and getattr(args, "strategy", None) and getattr(args, "strategies", None):
        raise ConfigError("the config file gives both strategy and strategies; keep one")
    first, second = ("strategy", "strategies") if "strategy" in given else ("strategies", "strategy")
    strategies = getattr(args, first, None) or getattr(args, second, None)
    if strategies:
        values["strategies"] = strategies
    for name in CONFIG_OPTIONS:
        v = getattr(args, name, None)
        if v is not None:
            values[name] = v
    for name in ("methods", "augment"):
        if isinstance(values.get(name), str) and values[name] not in ("default", "none"):
            try:
                values[name] = yaml.safe_load(values[name])
            except yaml.YAMLError as e:
                raise ConfigError(f"--{name}: not valid YAML: {e}") from e
    # the config file's options as the command line read them (medattn.cli._apply_config), not the file again
    from_file = getattr(args, "_config", {}).get("methods")
    if isinstance(values.get("methods"), dict) and isinstance(from_file, dict):
        values["methods"] = _merge_methods(dict(from_file), values["methods"])
    return AdaptConfig(**values)


def _merge_methods(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Per method, ``--methods`` values over the config file's (so one flag can change one hyper-parameter)."""
    out = {k: dict(v or {}) for k, v in base.items()}
    for name, params in override.items():
        out[name] = {**out.get(name, {}), **dict(params or {})}
    return out


def run(args: argparse.Namespace) -> int:
    """Run, print each method's Dice matrix and the comparison table; 1 when a method did not finish or cases were
    left out."""
    from medattn.continual.adapt import adapt, format_comparison, format_matrix
    from medattn.runtime import retain_freed_memory

    cfg = adapt_config(args)
    retain_freed_memory()  # as medattn train does: no page faults for each step's activations
    manifest = load_data(args)
    result = adapt(
        args.model, manifest, args.out, cfg, data_root=args.data_root, resume=bool(args.resume), quiet=bool(args.quiet)
    )
    for name, method_run in result.runs.items():
        print(format_matrix(name, method_run))
    print(format_comparison(result.comparison))
    print(f"results written to {result.out}")
    print_excluded(result.excluded)
    finished = all(r.finished for r in result.runs.values())
    return EXIT_OK if finished and not result.excluded else EXIT_PROBLEMS
