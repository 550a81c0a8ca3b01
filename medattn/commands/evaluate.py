"""``medattn evaluate PRED DATA``: Dice, HD95 and surface Dice per case and class with confidence intervals
(:func:`medattn.evaluate.folder.evaluate_dataset`). Exit code 1 when a case could not be scored, or when cases of
the dataset (of ``--split``) have no prediction, unless ``--allow-missing``: scores over part of the cases asked
for must not pass a script that checks the exit code as the whole."""

from __future__ import annotations

import argparse
from pathlib import Path

from medattn.commands.common import EXIT_OK, EXIT_PROBLEMS, load_data, print_cases
from medattn.commands.options import add_data, add_import_options, add_out, add_seed

NAME = "evaluate"
HELP = "Dice, HD95 and surface Dice per case and class, with confidence intervals"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pred", help="folder of predicted masks named <case>.nii.gz (as written by `medattn predict`)")
    add_data(p, help_extra="; its labelled cases are the reference")
    add_import_options(p)
    p.add_argument("--split", help="only the labelled cases of this split of the dataset (e.g. test)")
    add_out(p, default="metrics.json", help="metrics JSON to write (default metrics.json)")
    p.add_argument("--csv", help="per-case-and-class CSV to write (default: the JSON's path with .csv)")
    p.add_argument(
        "--nsd-tolerance",
        help="normalised surface Dice tolerance in mm: one value for every class, or VALUE:MM,... per label "
        "value (default 1.0)",
    )
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs (default 1000)")
    p.add_argument("--confidence", type=float, default=0.95, help="confidence level of the intervals (default 0.95)")
    add_seed(p)
    p.add_argument(
        "--allow-missing",
        action="store_true",
        help="exit 0 although cases of the dataset (or of --split) have no prediction; they are listed either way",
    )
    p.add_argument(
        "--postprocessing",
        metavar="RULE",
        help="also score the predictions with this postprocessing rule applied (RUN/postprocessing.json of"
        " `medattn crossval`), beside the raw scores",
    )


def run(args: argparse.Namespace) -> int:
    """Score ``args.pred`` against ``args.data``; write JSON and CSV; print the summary table."""
    from medattn.evaluate.folder import evaluate_dataset
    from medattn.evaluate.options import EvaluateOptions, parse_tolerance
    from medattn.evaluate.results import format_summary

    options = EvaluateOptions(
        nsd_tolerance=parse_tolerance(getattr(args, "nsd_tolerance", None)),
        resamples=int(args.bootstrap),
        confidence=float(args.confidence),
        seed=int(args.seed),
        postprocessing=getattr(args, "postprocessing", None),
    )
    manifest = load_data(args)
    out = Path(args.out)
    csv_path = Path(args.csv) if getattr(args, "csv", None) else out.with_suffix(".csv")
    doc = evaluate_dataset(
        args.pred,
        manifest,
        out,
        csv_path,
        options,
        data=args.data,
        data_root=args.data_root,
        split=getattr(args, "split", None),
        progress=not getattr(args, "quiet", False),
    )
    print(format_summary(doc))
    if "postprocessed" in doc:
        print(f"with postprocessing ({doc['postprocessed']['description']}):")
        print(format_summary(doc["postprocessed"]))
    if doc["failed"]:
        print_cases(f"{len(doc['failed'])} case(s) failed:", doc["failed"])
    missing = doc.get("missing", [])
    if missing:
        scope = f"of split {args.split!r} " if getattr(args, "split", None) else ""
        shown = ", ".join(missing[:10]) + (f", ... ({len(missing) - 10} more)" if len(missing) > 10 else "")
        print(
            f"{len(missing)} case(s) {scope}have no prediction in {args.pred}: {shown}; the scores above are over "
            f"the {doc['num_evaluated']} predicted case(s) only"
            + ("" if args.allow_missing else " (exit 1; --split scores one split, --allow-missing accepts this)")
        )
    print(f"metrics written to {out} and {csv_path}")
    return EXIT_PROBLEMS if doc["failed"] or (missing and not args.allow_missing) else EXIT_OK
