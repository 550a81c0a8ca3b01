"""Arguments of ``medattn evaluate`` (light: argparse only)."""

from __future__ import annotations

import argparse

from medattn.options import add_data, add_import_options, add_seed


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pred", help="folder of predicted masks named <case>.nii.gz (as written by `medattn predict`)")
    add_data(p, help_extra="; its labelled cases are the reference")
    add_import_options(p)
    p.add_argument("--split", help="only the labelled cases of this split of the dataset (e.g. test)")
    p.add_argument("-o", "--out", default="metrics.json", help="metrics JSON to write (default metrics.json)")
    p.add_argument("--csv", help="per-case-and-class CSV to write (default: the JSON's path with .csv)")
    p.add_argument(
        "--nsd-tolerance",
        help="normalised surface Dice tolerance in mm: one value for every class, or VALUE:MM,... per label "
        "value (default 1.0)",
    )
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs (default 1000)")
    p.add_argument("--confidence", type=float, default=0.95, help="confidence level of the intervals (default 0.95)")
    add_seed(p)
