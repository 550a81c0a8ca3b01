"""``medattn validate DATA``: check every case of a dataset, print the table of problems, exit 1 if any."""

from __future__ import annotations

import argparse
from pathlib import Path

from medattn.commands.common import EXIT_OK, EXIT_PROBLEMS, guard_output_file, load_data
from medattn.commands.options import add_data, add_import_options, add_out

NAME = "validate"
HELP = "check every case of a dataset; table of problems; exit 1 if any"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_data(p)
    add_import_options(p)
    add_out(
        p,
        default="validation.json",
        help="write the report as JSON here (default: validation.json in the current folder; '' for none); "
        "never one of the dataset's files",
    )
    p.add_argument("--max-rows", type=int, default=50, help="rows of the problem table to print (default 50)")
    p.add_argument(
        "--skip",
        metavar="CHECK[,CHECK]",
        help="checks to leave out: voxels, dims, spacing, shape, affine, finite, intensity, labels "
        "(skipping voxels, finite, intensity and labels reads headers only)",
    )


def checks_to_run(skip: str | None) -> list[str] | None:
    """The checks ``--skip`` leaves (None: all of them).

    Raises:
        ConfigError: an unknown check, or one that cannot be skipped (``exists``, ``header``).
    """
    from medattn.data.checks import CHECKS
    from medattn.errors import ConfigError

    names = [s.strip() for s in (skip or "").split(",") if s.strip()]
    unknown = sorted(set(names) - set(CHECKS))
    if unknown:
        raise ConfigError(f"--skip: unknown check(s) {unknown}; known checks: {', '.join(CHECKS)}")
    if {"exists", "header"} & set(names):
        raise ConfigError("--skip: the 'exists' and 'header' checks cannot be skipped")
    return [c for c in CHECKS if c not in names] if names else None


def run(args: argparse.Namespace) -> int:
    from medattn.data.validate import validate_manifest
    from medattn.data.validation_report import format_report
    from medattn.errors import DataError

    checks = checks_to_run(args.skip)
    manifest = load_data(args)
    out = Path(args.out) if args.out else None
    if out is not None:  # refuse before the run, not after it
        guard_output_file(manifest, args, out, "--out")
    report = validate_manifest(manifest, data_root=args.data_root, checks=checks, progress=not args.quiet)
    print(format_report(report, max_rows=args.max_rows))
    if out is not None:
        try:
            report.save(out)
        except OSError as e:
            raise DataError(f"cannot write the report: {e.strerror or e}; choose another path with --out", out) from e
        print(f"report written to {out}")
    return EXIT_OK if report.ok else EXIT_PROBLEMS
