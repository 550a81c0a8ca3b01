"""``medattn export MODEL OUT --format torchscript|onnx``: the network for runtimes without medattn, with its plan."""

from __future__ import annotations

import argparse

from medattn.commands.common import EXIT_OK

NAME = "export"
HELP = "export a model file's network to TorchScript or ONNX, with its preprocessing plan beside it"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model file (model.pt of medattn train or adapt)")
    p.add_argument("out", help="network file to write (model.onnx, model.ts); OUT.plan.json is written beside it")
    p.add_argument("--format", choices=("torchscript", "onnx"), default="onnx", help="default onnx")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from medattn.data.guard import prepare_output_file
    from medattn.errors import DataError
    from medattn.export import export_model, plan_path

    out, plan = Path(args.out), plan_path(args.out)
    if out.exists() and not plan.is_file():  # another file (a checkpoint, a model, data): never written over
        raise DataError(
            f"OUT exists and is not an earlier export (no {plan.name} beside it); choose another path, or remove it",
            out,
        )
    for path in (out, plan):
        prepare_output_file(path, "OUT")
    record = export_model(args.model, args.out, args.format)
    print(
        f"{args.format} network written to {args.out} (input {record['input']['shape']}, max |difference| against"
        f" PyTorch on a random window {record['max_abs_diff_vs_pytorch']:.2e}); plan: {plan_path(args.out)}"
    )
    return EXIT_OK
