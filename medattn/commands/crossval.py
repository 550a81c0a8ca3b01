"""``medattn crossval RUN DATA``: out-of-fold predictions of a k-fold run, their Dice, and the postprocessing rule
chosen on them (:func:`medattn.evaluate.crossval.run_crossval`). Exit code 1 when a case could not be predicted."""

from __future__ import annotations

import argparse

from medattn.commands.common import EXIT_OK, EXIT_PROBLEMS, load_data, print_cases
from medattn.commands.options import add_data, add_device, add_import_options

NAME = "crossval"
HELP = "out-of-fold Dice of a k-fold run and the postprocessing learned on it (RUN/postprocessing.json)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run folder holding fold_*/ (medattn train DATA --fold k --out RUN/fold_k)")
    add_data(p, help_extra="; the dataset the folds were trained on (its labels score the out-of-fold masks)")
    add_import_options(p)
    add_device(p)
    p.add_argument("--tta", action="store_true", help="predict with mirroring test-time augmentation (8 passes)")


def run(args: argparse.Namespace) -> int:
    from medattn.evaluate.crossval import format_crossval, run_crossval
    from medattn.infer.predict import PredictOptions

    options = PredictOptions(
        device=args.device, progress=not getattr(args, "quiet", False), mirror_axes=(0, 1, 2) if args.tta else ()
    )
    summary = run_crossval(
        args.run, load_data(args), data=args.data, data_root=getattr(args, "data_root", None), options=options
    )
    print(format_crossval(summary))
    if summary["failed"]:
        print_cases(f"{len(summary['failed'])} case(s) failed:", summary["failed"])
    print(f"rule written to {summary['postprocessing']['rule']}; out-of-fold masks and summary in {args.run}/crossval")
    return EXIT_PROBLEMS if summary["failed"] else EXIT_OK
