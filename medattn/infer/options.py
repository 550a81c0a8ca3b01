"""Arguments of ``medattn predict`` (light: argparse only)."""

from __future__ import annotations

import argparse

from medattn.options import add_device, add_import_options, add_workers


def add_predict_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model file (model.pt written by `medattn train`)")
    p.add_argument(
        "input",
        help="an image file, a folder of images (nnU-Net style case_0000.nii.gz channel files are grouped), "
        "or a dataset/manifest (DATA[:DOMAIN])",
    )
    p.add_argument("output", help="output folder for the masks (created); OUTPUT/<case>.nii.gz + predictions.json")
    p.add_argument("--data-root", help="data root for a manifest input")
    p.add_argument("--split", help="only the cases of this split of a dataset input (e.g. test)")
    add_import_options(p)
    add_device(p)
    add_workers(p)
    p.add_argument(
        "--replace-nonfinite",
        action="store_true",
        help="replace NaN/Inf image voxels by their channel's lowest finite value (recorded per case in "
        "predictions.json) instead of refusing the case",
    )
    g = p.add_argument_group("sliding window")
    g.add_argument(
        "--window",
        help="window size X,Y,Z in voxels (RAS order, after resampling) or one edge; default: the plan's patch size",
    )
    g.add_argument("--overlap", type=float, default=0.5, help="fraction shared by neighbouring windows (default 0.5)")
    g.add_argument("--window-batch", type=int, default=1, help="windows per network call (default 1)")
    g.add_argument(
        "--blend",
        choices=("gaussian", "constant"),
        default="gaussian",
        help="weights of overlapping windows (default gaussian)",
    )
    g.add_argument(
        "--tta",
        action="store_true",
        help="mirroring test-time augmentation: average the flips over all axis combinations (8 passes)",
    )
    # A separate flag rather than an alias, so that `--mirror` on the command line beats `tta: false` in a config.
    g.add_argument("--mirror", action="store_true", help="the same as --tta")
    g.add_argument("--mirror-axes", help="mirror only these spatial axes, e.g. 0,1 (implies --tta)")
    g.add_argument(
        "--stitch-device",
        default="auto",
        help="where windows are stitched: auto (the network's device if the buffers fit in half its free memory, "
        "else cpu), cpu, same, or a device (default auto)",
    )
    g.add_argument(
        "--accumulator-dtype",
        choices=("float32", "float16"),
        default="float32",
        help="dtype of the slab buffers that sum logits (default float32; float16 halves them)",
    )
    o = p.add_argument_group("output")
    o.add_argument(
        "--save-probabilities",
        nargs="?",
        const="4d",
        choices=("4d", "per-class"),
        default=None,
        help="also write softmax probabilities (float32) to OUTPUT/probabilities/: one 4D file per case "
        "(classes last; the default when given without a value) or one file per class (<case>_<label value>)",
    )
    o.add_argument(
        "--format",
        choices=("nii.gz", "nii", "nrrd", "mha", "input"),
        default="nii.gz",
        help="mask file format (default nii.gz; 'input': the input file's own format)",
    )
