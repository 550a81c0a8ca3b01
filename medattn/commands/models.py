"""``medattn models``: the model presets with parameters and FLOPs per voxel (``--measure``: timed here)."""

from __future__ import annotations

import argparse

from medattn.commands.common import EXIT_OK

NAME = "models"
HELP = "list model presets with parameters and FLOPs per voxel"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--measure", action="store_true", help="also time the forward pass on this machine")
    p.add_argument("--in-channels", type=int, default=1)
    p.add_argument("--out-channels", type=int, default=3)
    p.add_argument("--window", type=int, default=64, help="cubic window edge for --measure (default 64)")


def run(args: argparse.Namespace) -> int:
    from medattn.models.registry import models_table

    print(
        models_table(
            measure=args.measure, in_channels=args.in_channels, out_channels=args.out_channels, window=args.window
        )
    )
    return EXIT_OK
