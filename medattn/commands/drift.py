"""``medattn drift MODEL --reference DATA --target DATA``: test whether the target volumes drifted from the
reference the model knows (:func:`medattn.drift.run.drift_report`).

Exit codes: 0 no drift, 4 drift (whether or not volumes were refused), 1 no drift found but some volumes were
refused, or too few readable volumes to test, 2 fewer volumes given than the tests take (at least 4 reference and
2 target), an output that would touch an input or cannot be written, 3 data error (model file, dataset description,
channels that do not match the model's).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from medattn.commands.common import EXIT_DRIFT, EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE
from medattn.commands.options import add_data_root, add_device, add_out, add_seed
from medattn.runtime import resolve_device

if TYPE_CHECKING:
    from medattn.drift.options import DriftOptions

NAME = "drift"
HELP = "test whether target volumes drifted from the reference; exit 0 no drift, 4 drift"

#: Too few readable volumes to test (the message is printed, not raised).
EXIT_TOO_FEW = EXIT_PROBLEMS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model file (model.pt written by `medattn train`)")
    p.add_argument(
        "--reference",
        required=True,
        help="data the model knows: dataset, manifest[:DOMAIN], image folder or image file",
    )
    p.add_argument(
        "--target", required=True, help="incoming data to test: dataset, manifest[:DOMAIN], image folder or image file"
    )
    p.add_argument("--reference-split", help="only the reference cases of this manifest split (e.g. train)")
    p.add_argument("--target-split", help="only the target cases of this manifest split (e.g. test)")
    add_data_root(p)
    add_out(
        p,
        default="drift.json",
        help="report JSON; PNG plots and the target volumes' labelling ranking (STEM_ranking.csv, .json) beside it",
    )
    p.add_argument("--alpha", type=float, default=0.05, help="significance level of the set-level decision")
    p.add_argument("--fpr", type=float, default=0.05, help="false-positive rate the volume threshold is calibrated for")
    p.add_argument(
        "--features",
        default="model,prediction",
        help="feature groups the decision tests: model (bottleneck), prediction, image",
    )
    p.add_argument("--permutations", type=int, default=1000, help="MMD permutations (default 1000)")
    p.add_argument("--overlap", type=float, default=0.25, help="sliding-window overlap (default 0.25)")
    add_device(p)
    add_seed(p)


def drift_options(args: argparse.Namespace) -> DriftOptions:
    """:class:`~medattn.drift.options.DriftOptions` from parsed ``--alpha --fpr --features --permutations --overlap
    --seed`` (``medattn drift``, ``bench/drift_calibration.py``)."""
    from medattn.drift.options import DriftOptions

    return DriftOptions(
        alpha=args.alpha,
        fpr=args.fpr,
        features=tuple(s.strip() for s in args.features.split(",") if s.strip()),
        permutations=args.permutations,
        overlap=args.overlap,
        seed=args.seed,
    )


def run(args: argparse.Namespace) -> int:
    from medattn.drift.analysis import TooFewVolumesError, TooFewVolumesGivenError
    from medattn.drift.run import drift_report
    from medattn.drift.summary import format_report

    options = drift_options(args)
    try:
        report = drift_report(
            args.model,
            args.reference,
            args.target,
            args.out,
            data_root=args.data_root,
            options=options,
            device=str(resolve_device(args.device)),
            progress=not args.quiet,
            reference_split=args.reference_split,
            target_split=args.target_split,
        )
    except TooFewVolumesError as e:
        print(f"medattn drift: {e}")
        return EXIT_USAGE if isinstance(e, TooFewVolumesGivenError) else EXIT_TOO_FEW
    print(format_report(report))
    print(f"report written to {Path(args.out)}; plots: {', '.join(report.plots)}")
    print(f"labelling ranking of the target volumes: {', '.join(report.ranking_files)}")
    if report.drift:
        return EXIT_DRIFT
    return EXIT_PROBLEMS if report.failures else EXIT_OK
