"""The commands layer: one module per command, shared options defined once, a parser that imports no library."""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys

import pytest

from medattn.cli import _COMMANDS, build_parser
from medattn.commands.common import import_options
from medattn.commands.options import DATA_ROOT_HELP

#: Options whose spelling, help and type must read the same in every command that takes them.
SHARED = (
    "--data-root",
    "--domain-from",
    "--channels",
    "--label-name",
    "--modality",
    "--device",
    "--seed",
    "--workers",
    "--fold",
    "--exclude-invalid",
    "--config",
    "--quiet",
    "--verbose",
)


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _options(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {o: a for a in p._actions for o in a.option_strings}


def test_every_command_is_registered_in_order() -> None:
    names = list(_subparsers(build_parser()))
    assert names == list(_COMMANDS)
    assert names == [
        "validate",
        "manifest",
        "plan",
        "synth",
        "models",
        "train",
        "predict",
        "evaluate",
        "crossval",
        "drift",
        "adapt",
        "export",
        "demo",
    ]


def test_shared_options_read_the_same_in_every_command() -> None:
    seen: dict[str, set[tuple[object, ...]]] = {o: set() for o in SHARED}
    users: dict[str, list[str]] = {o: [] for o in SHARED}
    for name, p in _subparsers(build_parser()).items():
        for opt, action in _options(p).items():
            if opt in seen:
                seen[opt].add((tuple(action.option_strings), action.help, action.type, action.nargs, action.const))
                users[opt].append(name)
    for opt, variants in seen.items():
        assert len(variants) == 1, f"{opt} is defined {len(variants)} ways: {variants}"
    assert len(users["--data-root"]) == 11 and "models" not in users["--data-root"]
    assert next(iter(seen["--data-root"]))[1] == DATA_ROOT_HELP
    assert len(users["--config"]) == len(_COMMANDS)
    outs = [_options(p).get("--out") for p in _subparsers(build_parser()).values()]
    spellings = {tuple(a.option_strings) for a in outs if a is not None}
    assert spellings == {("-o", "--out")} and len([a for a in outs if a]) == 8  # default and meaning: each command's


def test_import_options_come_from_the_arguments() -> None:
    parser = build_parser()
    args = parser.parse_args(["validate", "DATA", "--channels", "FLAIR,T1", "--label-name", "GT_W"])
    assert import_options(args) == {
        "domain_from": None,
        "channels": "FLAIR,T1",
        "label_name": "GT_W",
        "modality": None,
        "labels": None,
    }
    args = parser.parse_args(["drift", "m.pt", "--reference", "R", "--target", "T"])  # no import options there
    assert import_options(args) == dict.fromkeys(("domain_from", "channels", "label_name", "modality", "labels"))


def test_building_the_parser_imports_no_library() -> None:
    """``medattn --help`` and ``medattn COMMAND --help`` stay instant: no PyTorch, MONAI, Avalanche or NumPy."""
    code = (
        "import sys\n"
        "from medattn.cli import build_parser\n"
        "p = build_parser()\n"
        "p.format_help()\n"
        "[s.format_help() for a in p._actions if hasattr(a, 'choices') and isinstance(a.choices, dict) "
        "for s in a.choices.values()]\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'monai', 'avalanche', 'numpy'})\n"
        "print(','.join(heavy))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""


def test_the_library_demo_reports_steps_through_logging(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """The step lines are the command's to print; the library logs them unless given an ``echo``."""
    from medattn.demo.steps import StepLog

    with caplog.at_level(logging.INFO, logger="medattn.demo"):
        steps = StepLog()
        steps.start("data", "data: phantom")
        steps.done("4 cases")
    assert capsys.readouterr().out == ""
    messages = [r.getMessage().strip() for r in caplog.records]
    assert messages[0] == "[1/8] data: phantom" and messages[1].startswith("4 cases  (")
    lines: list[str] = []
    steps = StepLog(lines.append)
    steps.start("data", "data: phantom")
    assert lines == ["[1/8] data: phantom"]
