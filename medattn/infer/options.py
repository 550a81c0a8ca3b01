"""Arguments of ``medattn predict`` (light: argparse only)."""

from __future__ import annotations

import argparse

from medattn.options import add_device, add_workers


def add_predict_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model file (model.pt written by `medattn train`)")
    p.add_argument("input", help="an image file, a folder of images, or a dataset/manifest (DATA[:DOMAIN])")
    p.add_argument("output", help="output folder for the masks (created)")
    p.add_argument("--data-root", help="data root for a manifest input")
    add_device(p)
    add_workers(p)
