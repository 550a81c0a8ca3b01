"""``medattn manifest DATA -o FILE``: import a dataset folder and write its manifest JSON."""

from __future__ import annotations

import argparse
from pathlib import Path

from medattn.commands.common import EXIT_OK, guard_output_file, load_data
from medattn.commands.options import add_data, add_import_options, add_out

NAME = "manifest"
HELP = "build a manifest JSON from a dataset folder"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_data(p)
    add_import_options(p)
    add_out(p, required=True, help="manifest JSON to write")


def run(args: argparse.Namespace) -> int:
    manifest = load_data(args)
    guard_output_file(manifest, args, Path(args.out), "-o")
    path = manifest.save(args.out)
    counts = ", ".join(f"{d.name}: {len(d.cases)}" for d in manifest.domains)
    print(f"{manifest.name}: {manifest.num_cases} cases in {len(manifest.domains)} domains ({counts})")
    print(f"manifest written to {path}")
    return EXIT_OK
