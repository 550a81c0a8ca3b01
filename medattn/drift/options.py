"""Arguments of ``medattn drift`` (light: argparse only)."""

from __future__ import annotations

import argparse

from medattn.options import add_device, add_seed


def add_drift_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model file (model.pt written by `medattn train`)")
    p.add_argument(
        "--reference", required=True, help="data the model knows: dataset, manifest[:DOMAIN] or image folder"
    )
    p.add_argument("--target", required=True, help="incoming data to test: dataset, manifest[:DOMAIN] or image folder")
    p.add_argument("--reference-split", help="only the reference cases of this manifest split (e.g. train)")
    p.add_argument("--target-split", help="only the target cases of this manifest split (e.g. test)")
    p.add_argument("--data-root", help="data root for manifest inputs")
    p.add_argument("-o", "--out", default="drift.json", help="report JSON (PNG plots are written beside it)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level of the set-level decision")
    p.add_argument("--fpr", type=float, default=0.05, help="false-positive rate the volume threshold is calibrated for")
    p.add_argument(
        "--features",
        default="model,prediction",
        help="feature groups the decision tests: model (bottleneck), prediction, image",
    )
    p.add_argument("--permutations", type=int, default=1000, help="MMD permutations (default 1000)")
    p.add_argument("--overlap", type=float, default=0.25, help="sliding-window overlap (default 0.25)")
    add_device(p)
    add_seed(p)
