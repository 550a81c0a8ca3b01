"""What the command modules share beyond option definitions: exit codes, parsed options turned into a dataset, the
output-file check of the data commands, and the lists of failed cases they print.

Light at module level (the library is imported inside the functions), like every module of
:mod:`medattn.commands`.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medattn.commands.options import IMPORT_OPTIONS

if TYPE_CHECKING:
    from medattn.data.manifest import Manifest

#: The command ran and found nothing wrong.
EXIT_OK = 0
#: The command ran but found problems: validation failures, failed or refused cases, cases left out with
#: ``--exclude-invalid``, an internal error.
EXIT_PROBLEMS = 1
#: Usage or configuration error: an output that would touch an input, an unwritable output.
EXIT_USAGE = 2
#: A data error stopped the command: unreadable manifest, missing file, refused case, channels that are not the
#: model's, a read or write that failed mid-run.
EXIT_DATA = 3
#: ``medattn drift`` found drift.
EXIT_DRIFT = 4


def import_options(args: argparse.Namespace) -> dict[str, Any]:
    """The folder-import options (``--domain-from``, ``--channels``, ``--label-name``, ``--modality``,
    ``--labels``) as keyword arguments of :func:`medattn.data.importers.load_dataset` (None where not given or not
    an option of the command)."""
    return {k: getattr(args, k, None) for k in IMPORT_OPTIONS}


def load_data(args: argparse.Namespace, spec: str | None = None) -> Manifest:
    """The dataset a command names: ``spec``, by default the positional ``DATA`` (``args.data``), imported with the
    command's import options. The one place where a command turns its arguments into a
    :class:`~medattn.data.manifest.Manifest`.

    Raises:
        ManifestError: naming the file or folder that could not be understood.
    """
    from medattn.data.importers import load_dataset

    return load_dataset(args.data if spec is None else spec, **import_options(args))


def guard_output_file(manifest: Manifest, args: argparse.Namespace, out: Path, what: str) -> None:
    """Refuse an output file that is one of the dataset's files or its description, or lies in its image or label
    folders; then check it can be written (both before any volume is read).

    Raises:
        ConfigError: naming ``what`` (the option that gave ``out``) and the input it would touch.
    """
    from medattn.data.guard import InputGuard, prepare_output_file

    InputGuard.of_manifest(manifest, getattr(args, "data_root", None), args.data).check_file(out, what)
    prepare_output_file(out, what)


def print_cases(header: str, cases: Iterable[Mapping[str, Any]]) -> None:
    """``header`` then one indented ``case: file: reason`` line per failed or left-out case."""
    print(header)
    for c in cases:
        print(f"  {c['case']}: {c['file']}: {c['reason']}")


def print_excluded(excluded: list[dict[str, Any]]) -> None:
    """The cases ``--exclude-invalid`` left out (nothing when there are none)."""
    if excluded:
        print_cases(f"{len(excluded)} case(s) failed the input checks and were left out (--exclude-invalid):", excluded)
