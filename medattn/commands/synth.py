"""``medattn synth OUT``: write the multi-scanner phantom dataset, or (``--from DATA``) simulated scanner domains
of a real one; ``--list-profiles`` prints the scanner profiles."""

from __future__ import annotations

import argparse

from medattn.commands.common import EXIT_OK, EXIT_PROBLEMS, load_data
from medattn.commands.options import add_data_root, add_import_options, add_seed

NAME = "synth"
HELP = "write a multi-scanner phantom dataset, or simulated scanner domains of a real one (--from)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", nargs="?", help="output folder (created; must be new or empty)")
    p.add_argument("--from", dest="source", help="derive scanner domains from this dataset instead of phantoms")
    add_data_root(p)
    add_seed(p)
    p.add_argument("--cases", type=int, default=None, help="cases per domain (phantom default 8)")
    p.add_argument("--size", type=int, default=None, help="phantom volume edge in voxels (default 48)")
    p.add_argument(
        "--scanners",
        default=None,
        help="comma-separated scanner profiles to write (see `medattn synth --list-profiles`)",
    )
    p.add_argument("--list-profiles", action="store_true", help="print the scanner profiles and exit")
    add_import_options(p)


def run(args: argparse.Namespace) -> int:
    import logging

    from medattn.data.phantom import DEFAULT_SIZE
    from medattn.data.scanner_table import format_profiles, get_profiles
    from medattn.data.synth import DEFAULT_CASES, synth_phantom
    from medattn.data.synth_from import synth_from
    from medattn.errors import ConfigError

    if getattr(args, "list_profiles", False):
        print(format_profiles())
        return EXIT_OK
    if not args.out:
        raise ConfigError("give an output folder: medattn synth OUT [--from DATA]")
    try:
        profiles = get_profiles(args.scanners)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    progress = not args.quiet
    if args.source:
        if args.size is not None:
            logging.getLogger("medattn.data.synth").warning("--size applies to phantoms only; ignored with --from")
        source = load_data(args, args.source)
        result = synth_from(
            source,
            args.out,
            profiles=profiles,
            seed=args.seed,
            cases=args.cases,
            data_root=args.data_root,
            progress=progress,
        )
    else:
        result = synth_phantom(
            args.out,
            seed=args.seed,
            cases=DEFAULT_CASES if args.cases is None else args.cases,
            size=DEFAULT_SIZE if args.size is None else args.size,
            profiles=profiles,
            progress=progress,
        )
    counts = ", ".join(f"{d.name}: {len(d.cases)}" for d in result.manifest.domains)
    print(
        f"{result.manifest.name}: {result.manifest.num_cases} cases in {len(result.manifest.domains)} domains "
        f"({counts})"
    )
    print(f"manifest written to {result.path}")
    if result.failures:
        print(f"{len(result.failures)} source case(s) failed and were skipped: {', '.join(result.failures)}")
        return EXIT_PROBLEMS
    return EXIT_OK
