"""Arguments of ``medattn train`` (light: argparse only)."""

from __future__ import annotations

import argparse

from medattn.options import add_data, add_device, add_epochs, add_fold, add_import_options, add_out, add_seed, add_workers


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    add_data(p)
    add_import_options(p)
    p.add_argument("--model", default="ag_unet", help="model preset (see `medattn models`)")
    add_out(p, help="run folder (model.pt, checkpoints, logs)")
    add_epochs(p)
    add_seed(p)
    add_device(p)
    add_fold(p)
    add_workers(p)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
