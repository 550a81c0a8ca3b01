"""Command-line options that several ``medattn`` commands share, each defined once so that it is spelled, defaulted
and explained the same everywhere.

=================================== =====================================================================
option                              commands
=================================== =====================================================================
``DATA`` and ``--data-root``        validate, manifest, plan, train, evaluate, adapt (``--data-root``
                                    alone: synth, predict, drift, demo)
``--domain-from``, ``--channels``,  validate, manifest, plan, synth, train, predict, evaluate, adapt
``--label-name``, ``--modality``
``--device``                        train, predict, drift, adapt, demo
``--seed``                          plan, synth, train, evaluate, drift, adapt, demo
``--workers``                       train, predict, adapt
``--epochs``                        train, adapt, demo
``--fold``                          train
``-o/--out``                        validate, manifest, plan, train, evaluate, drift, adapt, demo
``--exclude-invalid``               train, adapt
``--config``, ``--quiet``,          every command (added by :mod:`medattn.cli`)
``--verbose``
=================================== =====================================================================

Light on purpose (argparse only): every command module imports it when the parser is built, and ``medattn --help``
has to be instant. What the parsed values become (a dataset, import options) is in :mod:`medattn.commands.common`.
"""

from __future__ import annotations

import argparse

#: What an option is added to: a parser, or one of its argument groups (so that it shows under that heading).
Options = argparse.ArgumentParser | argparse._ArgumentGroup

#: Help of ``--data-root``, wherever a command reads a manifest.
DATA_ROOT_HELP = "folder that the manifest's relative paths start from (overrides its 'root')"


def add_data(p: Options, name: str = "data", help_extra: str = "") -> None:
    """The positional dataset (``DATA[:DOMAIN]``) and ``--data-root``."""
    p.add_argument(
        name,
        help="a manifest JSON, an MSD folder (dataset.json), an nnU-Net v2 folder, a BIDS folder or a root with one "
        "sub-folder per domain; append :DOMAIN to select domains (comma-separated)" + help_extra,
    )
    add_data_root(p)


def add_data_root(p: Options) -> None:
    """``--data-root`` (also for commands whose data is not the positional ``DATA``: ``--from``, ``--data``, an
    input or reference that may be a manifest)."""
    p.add_argument("--data-root", help=DATA_ROOT_HELP)


def add_import_options(p: argparse.ArgumentParser) -> None:
    """How a dataset folder is imported (:func:`medattn.data.importers.load_dataset`'s keyword arguments)."""
    g = p.add_argument_group("importing a folder (ignored for a manifest JSON)")
    g.add_argument(
        "--domain-from",
        help="BIDS: sidecar key (e.g. Manufacturer) or entity (suffix, ses, acq) naming domains; DICOM series: header"
        " attribute (e.g. Manufacturer, InstitutionName) or 'folder' (the first folder level)",
    )
    g.add_argument("--channels", help="folder layout: comma-separated channel file stems in order, e.g. FLAIR,T1")
    g.add_argument("--label-name", help="folder layout: stem of the label file in each case folder, e.g. GT_W")
    g.add_argument("--modality", help="modality of every channel when the layout does not say (MR, CT, ...)")
    g.add_argument(
        "--labels",
        help="folder, BIDS or DICOM layout (which declare 0 background, 1 foreground): the label values and names, "
        "e.g. 1=edema,2=core (0 is background unless named)",
    )


#: Destinations of :func:`add_import_options`, as :func:`medattn.data.importers.load_dataset` names them.
IMPORT_OPTIONS = ("domain_from", "channels", "label_name", "modality", "labels")


def add_seed(p: Options, default: int = 0) -> None:
    p.add_argument("--seed", type=int, default=default, help=f"random seed (default {default})")


def add_workers(p: Options) -> None:
    p.add_argument("--workers", type=int, default=0, help="data-loading worker processes (default 0: in-process)")


def add_device(p: Options) -> None:
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")


def add_epochs(p: Options, help: str = "training epochs") -> None:
    """``--epochs`` (default None: the command's config supplies it)."""
    p.add_argument("--epochs", type=int, help=help)


def add_fold(p: Options) -> None:
    p.add_argument(
        "--fold",
        default=None,
        help="cross-validation fold (0..k-1) of a deterministic k-fold split of the cases outside the test split, or "
        "'fixed' for the manifest's train/val split (validation from a held-back slice of train when there is no val; "
        "a test split is never read), 'all' (every non-test case, no validation) or 'all-folds' (each fold in turn, "
        "into OUT/fold_0 ..); default: fixed when the manifest has a train split, else fold 0 of 5",
    )


def add_out(p: Options, *, required: bool = False, default: str | None = None, help: str = "output folder") -> None:
    """``-o/--out``: an output file or folder (its default and meaning are the command's)."""
    p.add_argument("-o", "--out", required=required, default=default, help=help)


def add_exclude_invalid(p: Options) -> None:
    p.add_argument(
        "--exclude-invalid",
        action="store_true",
        default=None,
        help="leave out the cases that fail the input checks (listed in the log and the run's summary) instead "
        "of refusing to start; every case is checked before the first step either way",
    )


def add_common(p: argparse.ArgumentParser) -> None:
    """``--config``, ``--quiet`` and ``--verbose``, which every command takes (:mod:`medattn.cli` adds them)."""
    p.add_argument("--config", help="YAML file of option values (keys are option names); flags override it")
    p.add_argument("--quiet", action="store_true", help="only warnings and errors")
    p.add_argument("--verbose", action="store_true", help="debug logging")


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (a bad value is a usage error naming it)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
