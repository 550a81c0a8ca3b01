"""``medattn plan DATA``: fingerprint a dataset and write its preprocessing plan."""

from __future__ import annotations

import argparse
from pathlib import Path

from medattn.commands.common import EXIT_OK, EXIT_PROBLEMS, guard_output_file, load_data
from medattn.commands.options import add_data, add_import_options, add_out, add_seed, positive_int

NAME = "plan"
HELP = "fingerprint a dataset and derive a preprocessing plan"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_data(p)
    add_import_options(p)
    add_seed(p)
    add_out(
        p,
        default="plan.json",
        help="plan JSON to write (default plan.json). Cases of a test split are left out of the fingerprint",
    )
    p.add_argument(
        "--memory-mb",
        type=float,
        default=2048.0,
        help="activation-memory budget for one training patch (batch 2), in MiB (default 2048)",
    )
    p.add_argument(
        "--max-cases", type=positive_int, default=None, help="fingerprint at most this many cases per domain"
    )
    p.add_argument(
        "--spacing",
        type=_spacing,
        default=None,
        help="target voxel size X,Y,Z in mm instead of the fingerprint's median (e.g. 2,2,2 for a low-resolution plan "
        "of large volumes); patch and network topology follow from it",
    )


def run(args: argparse.Namespace) -> int:
    from medattn.data.plan import format_plan, make_plan

    manifest = load_data(args)
    guard_output_file(manifest, args, Path(args.out), "-o")
    plan = make_plan(
        manifest,
        data_root=args.data_root,
        memory_budget_mb=args.memory_mb,
        max_cases=args.max_cases,
        seed=args.seed,
        progress=not args.quiet,
        target_spacing=args.spacing,
    )
    plan.save(args.out)
    print(format_plan(plan))
    print(f"plan written to {args.out}")
    skipped = plan.fingerprint.get("skipped_cases", [])
    if skipped:
        print(f"{len(skipped)} case(s) failed the input checks and were left out of the fingerprint:")
        for line in skipped:
            print(f"  {line}")
    return EXIT_PROBLEMS if skipped else EXIT_OK


def _spacing(text: str) -> tuple[float, float, float]:
    """``--spacing 2,2,2`` (or one number for all three axes) as checked voxel sizes; a bad value is a usage error
    (exit 2, argparse's message)."""
    from medattn.data.plan import check_spacing
    from medattn.errors import DataError

    try:
        parts = [float(v) for v in text.split(",")]
        return check_spacing(parts * 3 if len(parts) == 1 else parts)
    except (ValueError, DataError) as e:
        raise argparse.ArgumentTypeError(f"{text!r}: {e}") from None
