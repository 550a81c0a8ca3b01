"""The ``medattn`` command line: one thin function per subcommand over the library API.

Heavy imports (torch, monai) happen inside the command functions so ``medattn --help`` is instant. Options that
several commands share are defined once in the ``_add_*`` helpers. Every command accepts ``--config FILE.yaml``
whose keys are option names (``data_root``, ``out``, ...); flags given on the command line override the file.

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
from typing import Any

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_USAGE = 2
EXIT_DATA = 3

log = logging.getLogger("medattn")

Handler = Callable[[argparse.Namespace], int]
_COMMANDS: dict[str, tuple[Handler, Callable[[argparse.ArgumentParser], None], str]] = {}


def command(name: str, help: str) -> Callable[[Handler], Handler]:
    """Register ``fn`` as subcommand ``name``; the parser is configured by ``fn.configure`` (set below it)."""

    def deco(fn: Handler) -> Handler:
        _COMMANDS[name] = (fn, lambda p: None, help)
        return fn

    return deco


def arguments(name: str) -> Callable[[Callable[[argparse.ArgumentParser], None]], Any]:
    def deco(conf: Callable[[argparse.ArgumentParser], None]) -> Any:
        fn, _, help_ = _COMMANDS[name]
        _COMMANDS[name] = (fn, conf, help_)
        return conf

    return deco


# ---- shared options --------------------------------------------------------------------------------------------


from medattn.options import add_data as _add_data  # noqa: E402
from medattn.options import add_import_options as _add_import_options  # noqa: E402
from medattn.options import add_seed as _add_seed  # noqa: E402


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file of option values (keys are option names); flags override it")
    p.add_argument("--quiet", action="store_true", help="only warnings and errors")
    p.add_argument("--verbose", action="store_true", help="debug logging")


# ---- helpers used by several commands --------------------------------------------------------------------------


def _load_data(args: argparse.Namespace) -> Any:
    from medattn.data.importers import load_dataset

    return load_dataset(
        args.data,
        domain_from=getattr(args, "domain_from", None),
        channels=getattr(args, "channels", None),
        label_name=getattr(args, "label_name", None),
        modality=getattr(args, "modality", None),
    )


def _guard_output_file(manifest: Any, args: argparse.Namespace, out: Path, what: str) -> None:
    """Refuse an output file that is one of the dataset's files or its description, or lies in its image or label
    folders; then check it can be written (both before any volume is read)."""
    from medattn.data.guard import InputGuard, prepare_output_file

    InputGuard.of_manifest(manifest, getattr(args, "data_root", None), args.data).check_file(out, what)
    prepare_output_file(out, what)


def _write_json(path: str | Path, doc: Any) -> Path:
    from medattn.jsonio import write_json

    return write_json(path, doc)


# ---- commands --------------------------------------------------------------------------------------------------


@command("validate", "check every case of a dataset; table of problems; exit 1 if any")
def cmd_validate(args: argparse.Namespace) -> int:
    from medattn.data.io import atomic_write_text
    from medattn.data.validate import CHECKS, format_report, validate_manifest
    from medattn.errors import ConfigError, DataError
    from medattn.jsonio import dumps

    skip = [s.strip() for s in (args.skip or "").split(",") if s.strip()]
    unknown = sorted(set(skip) - set(CHECKS))
    if unknown:
        raise ConfigError(f"--skip: unknown check(s) {unknown}; known checks: {', '.join(CHECKS)}")
    if {"exists", "header"} & set(skip):
        raise ConfigError("--skip: the 'exists' and 'header' checks cannot be skipped")
    manifest = _load_data(args)
    out = Path(args.out) if args.out else None
    if out is not None:  # refuse before the run, not after it
        _guard_output_file(manifest, args, out, "--out")
    checks = [c for c in CHECKS if c not in skip] if skip else None
    report = validate_manifest(manifest, data_root=args.data_root, checks=checks, progress=not args.quiet)
    print(format_report(report, max_rows=args.max_rows))
    if out is not None:
        doc = dumps(report.to_dict())
        try:
            atomic_write_text(out, doc)
        except OSError as e:
            raise DataError(f"cannot write the report: {e.strerror or e}; choose another path with --out", out) from e
        print(f"report written to {out}")
    return EXIT_OK if report.ok else EXIT_PROBLEMS


@arguments("validate")
def _args_validate(p: argparse.ArgumentParser) -> None:
    _add_data(p)
    _add_import_options(p)
    p.add_argument(
        "-o",
        "--out",
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


@command("manifest", "build a manifest JSON from a dataset folder")
def cmd_manifest(args: argparse.Namespace) -> int:
    manifest = _load_data(args)
    _guard_output_file(manifest, args, Path(args.out), "-o")
    path = manifest.save(args.out)
    counts = ", ".join(f"{d.name}: {len(d.cases)}" for d in manifest.domains)
    print(f"{manifest.name}: {manifest.num_cases} cases in {len(manifest.domains)} domains ({counts})")
    print(f"manifest written to {path}")
    return EXIT_OK


@arguments("manifest")
def _args_manifest(p: argparse.ArgumentParser) -> None:
    _add_data(p)
    _add_import_options(p)
    p.add_argument("-o", "--out", required=True, help="manifest JSON to write")


@command("plan", "fingerprint a dataset and derive a preprocessing plan")
def cmd_plan(args: argparse.Namespace) -> int:
    from medattn.data.plan import format_plan, make_plan

    manifest = _load_data(args)
    _guard_output_file(manifest, args, Path(args.out), "-o")
    plan = make_plan(
        manifest,
        data_root=args.data_root,
        memory_budget_mb=args.memory_mb,
        max_cases=args.max_cases,
        seed=args.seed,
        progress=not args.quiet,
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


@arguments("plan")
def _args_plan(p: argparse.ArgumentParser) -> None:
    _add_data(p)
    _add_import_options(p)
    _add_seed(p)
    p.add_argument(
        "-o",
        "--out",
        default="plan.json",
        help="plan JSON to write (default plan.json). Cases of a test split are left out of the fingerprint",
    )
    p.add_argument(
        "--memory-mb",
        type=float,
        default=2048.0,
        help="activation-memory budget for one training patch (batch 2), in MiB (default 2048)",
    )
    p.add_argument("--max-cases", type=int, default=None, help="fingerprint at most this many cases per domain")


@command("synth", "write a multi-scanner phantom dataset, or simulated scanner domains of a real one (--from)")
def cmd_synth(args: argparse.Namespace) -> int:
    from medattn.data.synth import synth_command

    return synth_command(args)


@arguments("synth")
def _args_synth(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", nargs="?", help="output folder (created; must be new or empty)")
    p.add_argument("--from", dest="source", help="derive scanner domains from this dataset instead of phantoms")
    p.add_argument("--data-root", help="data root for --from's manifest")
    _add_seed(p)
    p.add_argument("--cases", type=int, default=None, help="cases per domain (phantom default 8)")
    p.add_argument("--size", type=int, default=None, help="phantom volume edge in voxels (default 48)")
    p.add_argument(
        "--scanners",
        default=None,
        help="comma-separated scanner profiles to write (see `medattn synth --list-profiles`)",
    )
    p.add_argument("--list-profiles", action="store_true", help="print the scanner profiles and exit")
    _add_import_options(p)


@command("models", "list model presets with parameters and FLOPs per voxel")
def cmd_models(args: argparse.Namespace) -> int:
    from medattn.models.registry import models_table

    print(
        models_table(
            measure=args.measure, in_channels=args.in_channels, out_channels=args.out_channels, window=args.window
        )
    )
    return EXIT_OK


@arguments("models")
def _args_models(p: argparse.ArgumentParser) -> None:
    p.add_argument("--measure", action="store_true", help="also time the forward pass on this machine")
    p.add_argument("--in-channels", type=int, default=1)
    p.add_argument("--out-channels", type=int, default=3)
    p.add_argument("--window", type=int, default=64, help="cubic window edge for --measure (default 64)")


@command("train", "train a model on a dataset; RUN/model.pt plus logs (--resume continues)")
def cmd_train(args: argparse.Namespace) -> int:
    from medattn.train.trainer import train_command

    return train_command(args)


@arguments("train")
def _args_train(p: argparse.ArgumentParser) -> None:
    from medattn.train.options import add_train_arguments

    add_train_arguments(p)


@command("predict", "sliding-window inference on a file, folder or manifest; masks in the input's geometry")
def cmd_predict(args: argparse.Namespace) -> int:
    from medattn.infer.predict import predict_command

    return predict_command(args)


@arguments("predict")
def _args_predict(p: argparse.ArgumentParser) -> None:
    from medattn.infer.options import add_predict_arguments

    add_predict_arguments(p)


@command("evaluate", "Dice, HD95 and surface Dice per case and class, with confidence intervals")
def cmd_evaluate(args: argparse.Namespace) -> int:
    from medattn.evaluate.report import evaluate_command

    return evaluate_command(args)


@arguments("evaluate")
def _args_evaluate(p: argparse.ArgumentParser) -> None:
    from medattn.evaluate.options import add_evaluate_arguments

    add_evaluate_arguments(p)


@command("drift", "test whether target volumes drifted from the reference; exit 0 no drift, 4 drift")
def cmd_drift(args: argparse.Namespace) -> int:
    from medattn.drift.report import drift_command

    return drift_command(args)


@arguments("drift")
def _args_drift(p: argparse.ArgumentParser) -> None:
    from medattn.drift.options import add_drift_arguments

    add_drift_arguments(p)


@command("adapt", "continual learning over a dataset's domains (Avalanche); Dice matrix, BWT, forgetting, FWT")
def cmd_adapt(args: argparse.Namespace) -> int:
    from medattn.continual.adapt import adapt_command

    return adapt_command(args)


@arguments("adapt")
def _args_adapt(p: argparse.ArgumentParser) -> None:
    from medattn.continual.options import add_adapt_arguments

    add_adapt_arguments(p)


@command("demo", "the whole story end to end on the embedded phantom dataset (or --data)")
def cmd_demo(args: argparse.Namespace) -> int:
    from medattn.demo import run_demo

    return run_demo(args)


@arguments("demo")
def _args_demo(p: argparse.ArgumentParser) -> None:
    from medattn.demo import add_demo_arguments

    add_demo_arguments(p)


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
        _add_common(p)
        p.set_defaults(_handler=fn)
    return parser


def _apply_config(parser: argparse.ArgumentParser, argv: Sequence[str], args: argparse.Namespace) -> None:
    """Fill options from ``--config`` (YAML) where the command line did not give them."""
    if not getattr(args, "config", None):
        return
    import yaml

    from medattn.errors import ConfigError

    path = Path(args.config)
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping of option names to values")
    section = doc.get(args.command, doc) if isinstance(doc.get(args.command), dict) else doc
    given = _given_dests(parser, args.command, argv)
    known = vars(args)
    for key, value in section.items():
        k = str(key).replace("-", "_")
        if k not in known:
            raise ConfigError(f"{path}: unknown option {key!r} for `medattn {args.command}`")
        if k not in given:
            setattr(args, k, value)


def _given_dests(parser: argparse.ArgumentParser, command: str, argv: Sequence[str]) -> set[str]:
    """Destinations of the options spelled on the command line (any alias, ``--opt value`` or ``--opt=value``)."""
    sub = next((a.choices[command] for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    words = {w.split("=", 1)[0] for w in argv if w.startswith("-")}
    given = set()
    for action in sub._actions if sub is not None else []:
        if any(opt in words for opt in action.option_strings):
            given.add(action.dest)
    return given


def _quiet_readers() -> None:
    """Silence the readers' own repair notes (nibabel's "pixdim ... setting to abs", ITK's C++ warnings on
    stderr), once per file and command: the input gate reports each such header itself, in one line per case
    (``medattn validate``'s ``geometry`` check). ``--verbose`` keeps them. The command line owns the process, so
    this global setting belongs here and not in the library."""
    logging.getLogger("nibabel").setLevel(logging.ERROR)
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
