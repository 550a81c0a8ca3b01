"""Arguments of ``medattn evaluate`` (light: argparse only)."""

from __future__ import annotations

import argparse

from medattn.options import add_data


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pred", help="folder of predicted masks (as written by `medattn predict`)")
    add_data(p)
    p.add_argument("-o", "--out", default="metrics.json", help="metrics JSON to write (a CSV is written beside it)")
