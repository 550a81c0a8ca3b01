"""The ``medattn`` command line: the entry point that builds the parser from the command modules of
:mod:`medattn.commands` and maps exceptions to exit codes.

Each command module defines its arguments and its ``run(args) -> int`` (the thin layer over one library call);
options several commands share are defined once in :mod:`medattn.commands.options`. Heavy imports (torch, monai)
happen inside ``run``, so ``medattn --help`` is instant. Every command accepts ``--config FILE.yaml`` whose keys
are option names (``data_root``, ``out``, ...; a section named after the command overrides the keys beside it);
flags given on the command line override the file, and positional arguments stay on the command line.

Exit codes: 0 success; 1 the command ran but found problems (validation failures, failed or refused cases, cases
left out with ``--exclude-invalid``, an internal error); 2 usage or configuration error (an output that would
touch an input, an unwritable output); 3 data error that stopped the command (unreadable manifest, missing file,
``train``/``adapt`` refusing to start on a refused case, channels that are not the model's, a read or write that
failed mid-run); 4 ``drift`` found drift. No error ends in a traceback unless ``--verbose`` asks for it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from medattn.commands import (
    adapt,
    crossval,
    demo,
    drift,
    evaluate,
    export,
    manifest,
    models,
    plan,
    predict,
    synth,
    train,
    validate,
)
from medattn.commands.common import EXIT_DATA, EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE
from medattn.commands.options import add_common

__all__ = ["EXIT_DATA", "EXIT_OK", "EXIT_PROBLEMS", "EXIT_USAGE", "build_parser", "main"]

log = logging.getLogger("medattn")

Handler = Callable[[argparse.Namespace], int]
#: Subcommand name -> (its ``run``, the function that adds its arguments, its one-line help), in ``--help`` order.
_COMMANDS: dict[str, tuple[Handler, Callable[[argparse.ArgumentParser], None], str]] = {
    m.NAME: (m.run, m.add_arguments, m.HELP)
    for m in (validate, manifest, plan, synth, models, train, predict, evaluate, crossval, drift, adapt, export, demo)
}


# ---- entry point -----------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medattn",
        description="3D medical image segmentation that keeps working when the scanner changes.",
    )
    from medattn import __version__

    parser.add_argument("--version", action="version", version=f"medattn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (fn, conf, help_) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        conf(p)
        add_common(p)
        p.set_defaults(_handler=fn)
    return parser


def _apply_config(parser: argparse.ArgumentParser, argv: Sequence[str], args: argparse.Namespace) -> None:
    """Fill options from ``--config`` (YAML) where the command line did not give them.

    The file's keys are option names; a section named after the command (``train: {...}``) overrides its top-level
    keys (:func:`~medattn.configdoc.config_section`). Positional arguments (MODEL, DATA, OUT...) stay on the command
    line: a key naming one is refused, as is an unknown key.
    """
    from medattn.configdoc import config_section, read_config_file
    from medattn.errors import ConfigError

    args._given = _given_dests(parser, args.command, argv)
    if not getattr(args, "config", None):
        return
    path = Path(args.config)
    sub = _subparser(parser, args.command)
    options = {a.dest for a in sub._actions if a.option_strings and a.dest not in ("help", "config")}
    section = config_section(read_config_file(path), args.command, list(_COMMANDS), options)
    args._config = section  # what the file set, for a command that merges a mapping option (adapt's --methods)
    positionals = {a.dest for a in sub._actions if not a.option_strings}
    for key, value in section.items():
        k = str(key).replace("-", "_")
        if k in positionals:
            raise ConfigError(
                f"{path}: {key!r} is an argument of the command line (`medattn {args.command} --help`), not an"
                " option a config file sets"
            )
        if k not in options:
            raise ConfigError(f"{path}: unknown option {key!r} for `medattn {args.command}`")
        if k not in args._given:
            setattr(args, k, value)


def _subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sub: argparse.ArgumentParser = action.choices[command]
    return sub


def _given_dests(parser: argparse.ArgumentParser, command: str, argv: Sequence[str]) -> set[str]:
    """Destinations the command line gave (any alias or abbreviation argparse accepts, ``--opt value`` or
    ``--opt=value``, and the positional arguments): the command's arguments parsed again with every default
    suppressed, so the namespace holds only what was spelled. (Matching the words against the option strings
    missed ``--epoch`` for ``--epochs``, and the config file's value won.)"""
    sub = _subparser(parser, command)
    rest = list(argv[list(argv).index(command) + 1 :]) if command in argv else list(argv)
    saved = [(a, a.default) for a in sub._actions]
    saved_defaults = dict(sub._defaults)
    try:
        for a, _ in saved:
            a.default = argparse.SUPPRESS
        sub._defaults = {}
        given, _ = sub.parse_known_args(rest)
    finally:
        for a, default in saved:
            a.default = default
        sub._defaults = saved_defaults
    return set(vars(given))


def _quiet_readers() -> None:
    """Silence the readers' own repair notes (nibabel's "pixdim ... setting to abs", ITK's C++ warnings on
    stderr), once per file and command: the input gate reports each such header itself, in one line per case
    (``medattn validate``'s ``geometry`` check). ``--verbose`` keeps them. The command line owns the process, so
    this global setting belongs here and not in the library."""
    logging.getLogger("nibabel").setLevel(logging.ERROR)
    # MONAI's LoadImage tries its readers in turn and logs each one that cannot open the file ("NiftiReader:
    # unable to load ...") at INFO, which reads like a failure on every DICOM series that a later reader opens;
    # a file no reader opens still fails, with the gate's reason
    logging.getLogger("LoadImage").setLevel(logging.WARNING)
    try:
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalWarningDisplay(False)
    except ImportError:  # pragma: no cover - a dependency; validate still runs on NIfTI without it
        pass


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USAGE
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        _quiet_readers()

    from medattn.errors import ConfigError, DataError, ManifestError, MedattnError

    try:
        _apply_config(parser, argv, args)
        return int(args._handler(args))
    except ConfigError as e:
        print(f"medattn {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (DataError, ManifestError) as e:
        print(f"medattn {args.command}: error: {e}", file=sys.stderr)
        return EXIT_DATA
    except MedattnError as e:
        print(f"medattn {args.command}: error: {e}", file=sys.stderr)
        return EXIT_PROBLEMS
    except KeyboardInterrupt:
        print(f"medattn {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # a disk that filled up or a folder that became read-only during the run
        if args.verbose:
            raise
        where = f" {e.filename}" if getattr(e, "filename", None) else ""
        print(f"medattn {args.command}: error: cannot read or write{where}: {e.strerror or e}", file=sys.stderr)
        return EXIT_DATA
    except Exception as e:  # a bug: one line by default, the traceback with --verbose
        if args.verbose:
            raise
        text = (str(e).strip().splitlines() or [""])[0][:300]
        if type(e).__name__ == "OutOfMemoryError":  # torch's, without importing torch here
            print(
                f"medattn {args.command}: error: out of memory on the device ({text}); lower --window-batch or "
                "--batch-size, or use --device cpu",
                file=sys.stderr,
            )
            return EXIT_DATA
        print(
            f"medattn {args.command}: internal error: {type(e).__name__}: {text} "
            "(please report it; --verbose shows the traceback)",
            file=sys.stderr,
        )
        return EXIT_PROBLEMS


if __name__ == "__main__":
    sys.exit(main())
