"""``medattn predict MODEL [MODEL ...] INPUT OUTPUT``: sliding-window inference on a file, folder or dataset, by
one model or an ensemble; masks in each input's geometry (:func:`medattn.infer.predict.run_predict`). Exit code 1
when any case failed."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medattn.commands.common import EXIT_OK, EXIT_PROBLEMS, import_options
from medattn.commands.options import add_data_root, add_device, add_import_options, add_workers

if TYPE_CHECKING:
    from medattn.infer.predict import PredictOptions

NAME = "predict"
HELP = "sliding-window inference on a file, folder or manifest; masks in the input's geometry"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model",
        nargs="+",
        help="model file (model.pt written by `medattn train`); several, or a run folder holding fold_*/model.pt,"
        " make an ensemble: their probabilities are averaged window by window",
    )
    p.add_argument(
        "input",
        help="an image file, a folder of images (nnU-Net style case_0000.nii.gz channel files are grouped), "
        "or a dataset/manifest (DATA[:DOMAIN])",
    )
    p.add_argument("output", help="output folder for the masks (created); OUTPUT/<case>.nii.gz + predictions.json")
    add_data_root(p)
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
        "--save-uncertainty",
        action="store_true",
        default=None,
        help="also write voxel-wise uncertainty to OUTPUT/uncertainty/: softmax entropy / log K, and with --tta the"
        " share of mirrored passes that disagree with the mask (about doubles inference time); predictions.json gets"
        " a per-case summary and the cases in checking order",
    )
    o.add_argument(
        "--postprocessing",
        metavar="RULE",
        help="postprocessing rule to apply to each mask (a postprocessing.json from `medattn crossval`); default:"
        " the run folder's postprocessing.json when MODEL is a run folder that holds one",
    )
    o.add_argument(
        "--no-postprocessing", action="store_true", help="write the raw masks, even if the run folder holds a rule"
    )
    o.add_argument(
        "--format",
        choices=("nii.gz", "nii", "nrrd", "mha", "input", "dicom-seg"),
        default="nii.gz",
        help="mask file format (default nii.gz; 'input': the input file's own format; 'dicom-seg': a DICOM"
        " Segmentation referencing the input DICOM series, OUTPUT/<case>.dcm)",
    )


def predict_options(args: argparse.Namespace) -> PredictOptions:
    """Parsed arguments (values may come from ``--config`` YAML) as :class:`~medattn.infer.predict.PredictOptions`
    (validated there)."""
    from medattn.infer.predict import PredictOptions

    mirror: tuple[int, ...] = ()
    if getattr(args, "mirror_axes", None):
        mirror = _int_list(args.mirror_axes, "--mirror-axes")
    elif getattr(args, "tta", False) or getattr(args, "mirror", False):
        mirror = (0, 1, 2)
    window = None
    if getattr(args, "window", None):
        w = _int_list(args.window, "--window")
        window = (w[0],) * 3 if len(w) == 1 else w
    probs = getattr(args, "save_probabilities", None)
    return PredictOptions(
        window=window,  # type: ignore[arg-type]  # validated in __post_init__
        overlap=float(args.overlap),
        window_batch=int(args.window_batch),
        blend=str(args.blend),
        mirror_axes=mirror,
        device=args.device,
        stitch_device=str(args.stitch_device),
        accumulator_dtype=str(args.accumulator_dtype),
        save_probabilities=None if probs in (None, False, "none") else str(probs),
        output_format=str(args.format),
        workers=int(args.workers or 0),
        progress=not getattr(args, "quiet", False),
        replace_nonfinite=bool(getattr(args, "replace_nonfinite", False)),
        save_uncertainty=bool(getattr(args, "save_uncertainty", False)),
        postprocessing="none" if getattr(args, "no_postprocessing", False) else getattr(args, "postprocessing", None),
    )


def _int_list(value: Any, what: str) -> tuple[int, ...]:
    """``"1,2,3"``, ``"64x64x32"`` or a YAML list as integers."""
    from medattn.errors import ConfigError

    items = value if isinstance(value, (list, tuple)) else str(value).replace("x", ",").split(",")
    try:
        return tuple(int(str(v).strip()) for v in items if str(v).strip())
    except ValueError:
        raise ConfigError(f"{what}: expected comma-separated integers, got {value!r}") from None


def run(args: argparse.Namespace) -> int:
    """Predict (this rank's share of) the cases; rank 0 prints what was written and which cases failed."""
    from medattn.infer.outputs import SUMMARY_NAME
    from medattn.infer.predict import run_predict
    from medattn.runtime import Rank

    options = predict_options(args)
    rank = Rank.from_env()
    summary = run_predict(
        args.model,
        args.input,
        args.output,
        options,
        data_root=getattr(args, "data_root", None),
        import_options=import_options(args),
        rank=rank,
        split=getattr(args, "split", None),
    )
    if rank.is_main:
        print(
            f"{summary['num_written']} of {summary['num_cases']} cases written to {args.output}"
            + (f"; {summary['num_failed']} failed:" if summary["num_failed"] else "")
        )
        for f in summary["failed"]:
            print(f"  {f['case']}: {f['file']}: {f['reason']}")
        warned = [c for c in summary["cases"] if c["status"] == "ok" and c.get("warnings")]
        if warned:  # written, but the input checks found something a reader of the mask should know
            print(f"{len(warned)} of the written cases have input warnings (also in {SUMMARY_NAME}):")
            for c in warned[:20]:
                print(f"  {c['case']}: " + "; ".join(c["warnings"]))
            if len(warned) > 20:
                print(f"  ... and {len(warned) - 20} more")
        if summary.get("postprocessing"):
            print(f"postprocessing: {summary['postprocessing']['description']}")
        print(f"summary written to {Path(args.output) / SUMMARY_NAME}")
    return EXIT_PROBLEMS if summary["num_failed"] else EXIT_OK
