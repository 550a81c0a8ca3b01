"""Command-line options shared by several ``medattn`` commands, defined once so they are spelled the same everywhere.

This module must stay light (argparse only): it is imported when the parser is built, and ``medattn --help`` has
to be instant.
"""

from __future__ import annotations

import argparse


def add_data(p: argparse.ArgumentParser, name: str = "data", help_extra: str = "") -> None:
    p.add_argument(
        name,
        help="a manifest JSON, an MSD folder (dataset.json), an nnU-Net v2 folder, a BIDS folder or a root with one "
        "sub-folder per domain; append :DOMAIN to select domains (comma-separated)" + help_extra,
    )
    p.add_argument("--data-root", help="folder that the manifest's relative paths start from (overrides its 'root')")


def add_import_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("importing a folder (ignored for a manifest JSON)")
    g.add_argument(
        "--domain-from", help="BIDS: sidecar key (e.g. Manufacturer) or entity (suffix, ses, acq) naming domains"
    )
    g.add_argument("--channels", help="folder layout: comma-separated channel file stems in order, e.g. FLAIR,T1")
    g.add_argument("--label-name", help="folder layout: stem of the label file in each case folder, e.g. GT_W")
    g.add_argument("--modality", help="modality of every channel when the layout does not say (MR, CT, ...)")


def add_seed(p: argparse.ArgumentParser, default: int = 0) -> None:
    p.add_argument("--seed", type=int, default=default, help=f"random seed (default {default})")


def add_workers(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=0, help="data-loading worker processes (default 0: in-process)")


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")


def add_epochs(p: argparse.ArgumentParser, default: int | None = None) -> None:
    suffix = f" (default {default})" if default else ""
    p.add_argument("--epochs", type=int, default=default, help="training epochs" + suffix)


def add_fold(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--fold",
        default=None,
        help="cross-validation fold (0..k-1) of a deterministic k-fold split of the cases outside the test split, or "
        "'fixed' for the manifest's train/val split (validation from a held-back slice of train when there is no val; "
        "a test split is never read); default: fixed when the manifest has a train split, else fold 0 of 5",
    )


def add_out(p: argparse.ArgumentParser, required: bool = True, help: str = "output folder") -> None:
    p.add_argument("--out", "-o", required=required, help=help)


def add_exclude_invalid(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--exclude-invalid",
        action="store_true",
        default=None,
        help="leave out the cases that fail the input checks (listed in the log and the run's summary) instead "
        "of refusing to start; every case is checked before the first step either way",
    )
