"""``medattn predict``: files in, masks out, in the exact geometry of each input.

For each case: inference transforms of the model's plan (load -> RAS -> resample -> normalise [-> crop]) ->
:class:`~medattn.infer.sliding.SlidingWindowPredictor` -> class indices mapped to the label values on disk (a plan's
labels may be sparse, e.g. 0, 63, 117) -> :func:`~medattn.data.transforms.invert_to_input` (nearest neighbour) ->
``OUTPUT/<case>.nii.gz`` written atomically with the input's shape, affine and NIfTI header. Optional probability
maps go to ``OUTPUT/probabilities/`` (resampled with interpolation; float32 because NIfTI has no float16).

Before anything heavy, the output folder is checked: it must not be an input (an image or label folder of the
dataset, an input file) and must be writable; temporary files a killed run left there are removed. Each case then
passes the input gate (:mod:`medattn.data.gate`, the checks of ``medattn validate``: readable and complete files,
dimensions, channels matched to the model's by name and count, geometry, finite voxels) before it is read. A case
that fails is recorded with its file and reason and skipped (and a stale mask of an earlier run for it is
removed); the others are still written. ``OUTPUT/predictions.json`` is rewritten as each case finishes
(``"complete": false`` until the run ends), so after a kill it says which cases are done; a case's probability
maps are written before its mask, so a mask never stands without them. The exit code is 1 when any case failed.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medattn.data.io import read_header
from medattn.errors import ConfigError, DataError
from medattn.infer.distributed import gather, process_group
from medattn.infer.inputs import InputCase, collect_inputs, input_files, shard
from medattn.infer.outputs import (
    OUTPUT_FORMATS,
    PROBABILITY_DIR,
    PROBABILITY_LAYOUTS,
    SUMMARY_NAME,
    label_lookup,
    output_path,
    output_suffix,
    probability_paths,
    uncertainty_paths,
    write_mask,
    write_probabilities,
    write_summary,
)
from medattn.infer.uncertainty import UNCERTAINTY_DIR, check_first
from medattn.progress import progress_bar
from medattn.runtime import Rank, resolve_device
from medattn.typing import Triple

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredictOptions:
    """How ``medattn predict`` runs; saved in ``predictions.json``.

    Attributes:
        window: sliding window (X, Y, Z) in voxels; ``None``: the plan's patch size.
        overlap: fraction shared by neighbouring windows, in [0, 1).
        window_batch: windows per network call.
        blend: ``"gaussian"`` or ``"constant"``.
        mirror_axes: spatial axes mirrored for test-time augmentation (empty: none).
        device: where the network runs (``cpu``, ``cuda``, ``cuda:1``); ``None``: CUDA if available, else CPU.
        stitch_device: ``"auto"``, ``"cpu"``, ``"same"`` or a device (see ``SlidingWindowPredictor``).
        accumulator_dtype: ``"float32"`` or ``"float16"`` for the slab buffers that sum logits.
        save_probabilities: ``None``, ``"4d"`` (one 4D file per case, classes last) or ``"per-class"``.
        output_format: ``"nii.gz"``, ``"nii"``, ``"nrrd"``, ``"mha"``, ``"input"`` (the input file's format) or
            ``"dicom-seg"`` (a DICOM Segmentation of each input DICOM series; probability maps stay NIfTI).
        workers: cases read and preprocessed ahead in background threads (0: none).
        progress: show progress bars.
        replace_nonfinite: replace NaN/Inf image voxels by the channel's lowest finite value (counted per case in
            ``predictions.json``) instead of refusing the case.
        save_uncertainty: also write voxel-wise uncertainty maps (entropy; with mirroring, the passes'
            disagreement) to ``OUTPUT/uncertainty/`` and a per-case summary (:mod:`medattn.infer.uncertainty`).
        postprocessing: a rule file (:mod:`medattn.infer.postprocess`) applied to each mask; ``"none"``: never;
            ``None``: the run folder's ``postprocessing.json`` when the model is given as a run folder holding one.
    """

    window: Triple | None = None
    overlap: float = 0.5
    window_batch: int = 1
    blend: str = "gaussian"
    mirror_axes: tuple[int, ...] = ()
    device: str | None = None
    stitch_device: str = "auto"
    accumulator_dtype: str = "float32"
    save_probabilities: str | None = None
    output_format: str = "nii.gz"
    workers: int = 0
    progress: bool = True
    replace_nonfinite: bool = False
    save_uncertainty: bool = False
    postprocessing: str | None = None

    def __post_init__(self) -> None:
        if self.window is not None and (len(self.window) != 3 or min(self.window) < 1):
            raise ConfigError(f"--window: expected three positive sizes X,Y,Z, got {self.window}")
        if not 0.0 <= self.overlap < 1.0:
            raise ConfigError(f"--overlap: expected a fraction in [0, 1), got {self.overlap}")
        if self.window_batch < 1:
            raise ConfigError(f"--window-batch: expected >= 1, got {self.window_batch}")
        if self.blend not in ("gaussian", "constant"):
            raise ConfigError(f"--blend: expected gaussian or constant, got {self.blend!r}")
        if any(a not in (0, 1, 2) for a in self.mirror_axes):
            raise ConfigError(f"--mirror-axes: spatial axes are 0, 1, 2; got {list(self.mirror_axes)}")
        if len(set(self.mirror_axes)) != len(self.mirror_axes):
            raise ConfigError(f"--mirror-axes: each axis once, got {list(self.mirror_axes)}")
        if self.accumulator_dtype not in ("float32", "float16"):
            raise ConfigError(f"--accumulator-dtype: expected float32 or float16, got {self.accumulator_dtype!r}")
        if self.save_probabilities is not None and self.save_probabilities not in PROBABILITY_LAYOUTS:
            raise ConfigError(f"--save-probabilities: expected 4d or per-class, got {self.save_probabilities!r}")
        if self.output_format not in OUTPUT_FORMATS:
            raise ConfigError(f"--format: expected one of {', '.join(OUTPUT_FORMATS)}, got {self.output_format!r}")
        if self.workers < 0:
            raise ConfigError(f"--workers: expected >= 0, got {self.workers}")


@dataclass
class CaseResult:
    """One case's outcome, as recorded in ``predictions.json``."""

    case: str
    inputs: list[str]
    status: str = "ok"  # "ok" or "failed"
    output: str | None = None
    probabilities: list[str] = field(default_factory=list)
    file: str | None = None  # the offending file when failed
    reason: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    input_shape: list[int] | None = None
    preprocessed_shape: list[int] | None = None
    windows: int | None = None
    rank: int = 0
    nonfinite_replaced: int = 0  # NaN/Inf voxels replaced (``--replace-nonfinite``)
    warnings: list[str] = field(default_factory=list)  # the input gate's warnings for this case
    removed_stale: list[str] = field(default_factory=list)  # an earlier run's outputs of it this run does not write
    uncertainty_maps: list[str] = field(default_factory=list)  # ``--save-uncertainty``: the maps written
    uncertainty: dict[str, Any] | None = None  # and their summary (medattn.infer.uncertainty.summarise)


def run_predict(
    model_path: str | Path | Sequence[str | Path],
    input_spec: str | Path,
    output_dir: str | Path,
    options: PredictOptions | None = None,
    *,
    data_root: str | Path | None = None,
    import_options: dict[str, Any] | None = None,
    rank: Rank | None = None,
    split: str | None = None,
) -> dict[str, Any]:
    """Predict every case of ``input_spec`` (this rank's share of them) into ``output_dir``.

    Returns the summary document (all ranks' cases); rank 0 also writes it to ``OUTPUT/predictions.json``.
    ``split`` keeps only the cases of that split of a dataset input. Several model files, or a run folder of folds,
    predict as an ensemble (:mod:`medattn.models.ensemble`); a postprocessing rule is applied to each mask
    (``options.postprocessing``).

    Raises:
        DataError, ManifestError: the model or the input cannot be read at all (not per-case failures).
        ConfigError: an output path that is an input file, or an output folder that is a file.
    """
    from medattn.data.gate import channel_mismatch
    from medattn.data.guard import InputGuard, prepare_output_dir
    from medattn.models.ensemble import load_models, model_paths

    options = options or PredictOptions()
    rank = rank or Rank()
    out = Path(output_dir)
    specs = [model_path] if isinstance(model_path, (str, Path)) else list(model_path)
    members = model_paths(specs)
    rule_path = rule_file(specs, options.postprocessing)
    # The inputs (and a wrong --split) are known before anything is written or loaded; OUTPUT is checked against
    # every file of the dataset, not only the cases selected.
    collect = {"data_root": data_root, "import_options": import_options, "split": split}
    cases = collect_inputs(input_spec, num_channels=1, **collect)  # type: ignore[arg-type]
    files, dataset = input_files(input_spec, data_root=data_root, import_options=import_options)
    guard = InputGuard.of(files, [*members, *([rule_path] if rule_path else [])], dataset)
    guard.check_dir(out, "OUTPUT")
    if options.output_format == "dicom-seg":
        _require_series(cases)
    if options.save_probabilities is not None:
        guard.check_dir(out / PROBABILITY_DIR, "OUTPUT")
    _refuse_foreign_files(out, cases, options)
    prepare_output_dir(out, "OUTPUT")
    if options.save_probabilities is not None:
        prepare_output_dir(out / PROBABILITY_DIR, "OUTPUT")
    if options.save_uncertainty:
        guard.check_dir(out / UNCERTAINTY_DIR, "OUTPUT")
        prepare_output_dir(out / UNCERTAINTY_DIR, "OUTPUT")
    device = resolve_device(options.device, local_rank=rank.local_rank)
    loaded = load_models(members, device)
    plan = loaded.plan
    rule = _load_rule(rule_path, plan.labels)
    if rule is not None:
        check_rule_models(rule, members, rule_path)
    if options.mirror_axes:
        _warn_untrained_mirroring(loaded, members)
    if plan.num_channels != 1:  # nnU-Net-style channel files group into cases only for a multi-channel model
        cases = collect_inputs(input_spec, num_channels=plan.num_channels, **collect)  # type: ignore[arg-type]
    names = [ch.name for ch in plan.channels]
    named = {c.channels for c in cases if c.channels is not None}
    if len(named) == 1:  # a dataset names its channels once: a mismatch concerns every case, so stop here
        why = channel_mismatch(names, next(iter(named)), single_file=all(len(c.images) == 1 for c in cases))
        if why:
            raise DataError(why, dataset)
    protected = sorted(guard.files)
    seg_writer = _seg_writer(members, loaded, cases) if options.output_format == "dicom-seg" else None
    mine = shard(cases, rank.rank, rank.world_size)
    log.info("rank %d/%d: %d of %d cases on %s", rank.rank, rank.world_size, len(mine), len(cases), device)

    predictor = make_predictor(loaded.model, plan, options, device, members=loaded.members)
    started = time.perf_counter()
    extra = _provenance(members, rule_path, rule)

    def build(rs: list[dict[str, Any]], seconds: float = 0.0) -> dict[str, Any]:
        return {**_summary(model_path, input_spec, out, options, rank, rs, seconds), **extra}

    progress = _Progress(out, rank, build)
    results = []
    for r in predict_cases(mine, plan, predictor, out, options, protected, rank, seg_writer, postprocess=rule):
        results.append(r)
        progress.update([asdict(x) for x in results])
    with process_group(rank) as dist:
        all_results = gather(dist, [asdict(r) for r in results], rank.world_size)
    summary = build(all_results, time.perf_counter() - started)
    summary["complete"] = True
    if rank.is_main:
        write_summary(out / SUMMARY_NAME, summary, protected)
        progress.finish()
    return summary


def _refuse_foreign_files(out: Path, cases: Sequence[InputCase], options: PredictOptions) -> None:
    """Refuse an OUTPUT folder whose files this run would replace though no medattn predict run wrote them.

    A folder with medattn's ``predictions.json`` is an earlier run's: its masks are replaced (and a failed case's
    removed, :func:`_remove_stale`). A ``predictions.json`` of something else, or a file at a mask's path in a
    folder without medattn's summary, is the user's own: nothing says it may go.
    """
    summary = out / SUMMARY_NAME
    if summary.is_file():
        try:
            ours = json.loads(summary.read_text()).get("format") == "medattn-predictions"
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            raise DataError(
                f"OUTPUT already holds a {SUMMARY_NAME} that medattn predict did not write; predict writes its "
                "summary there. Choose another OUTPUT folder, or move that file",
                summary,
            )
        return
    if not out.is_dir():
        return
    found = [
        p
        for case in cases
        for p in (output_path(case, out, options.output_format), *uncertainty_paths(case, out).values())
        if p.exists()
    ]
    if found:
        shown = ", ".join(p.name for p in found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
        raise DataError(
            f"OUTPUT already holds {shown}, where this run would write, and no medattn {SUMMARY_NAME} says an "
            "earlier predict run wrote them; choose an empty OUTPUT folder, or move those files",
            out,
        )


class _Progress:
    """``predictions.json`` kept current as cases finish (``"complete": false``), so a killed run says what is done.

    One process writes ``OUTPUT/predictions.json`` itself; under ``torchrun`` each rank writes
    ``OUTPUT/predictions.rank<r>.json`` and rank 0 replaces them by the merged ``predictions.json`` at the end.
    """

    def __init__(self, out: Path, rank: Rank, build: Any) -> None:
        self.path = out / (SUMMARY_NAME if rank.world_size == 1 else f"predictions.rank{rank.rank}.json")
        self.out, self.rank, self.build = out, rank, build
        if rank.is_main:  # before the first case: an earlier run's summary must not describe this run's folder
            doc = build([])
            doc["complete"] = False
            if rank.world_size > 1:
                doc["rank_files"] = [f"predictions.rank{r}.json" for r in range(rank.world_size)]
            write_summary(out / SUMMARY_NAME, doc, ())

    def update(self, results: list[dict[str, Any]]) -> None:
        doc = self.build(results)
        doc["complete"] = False
        write_summary(self.path, doc, ())

    def finish(self) -> None:
        if self.rank.world_size > 1:
            for r in range(self.rank.world_size):
                (self.out / f"predictions.rank{r}.json").unlink(missing_ok=True)


def rule_file(specs: Sequence[str | Path], choice: str | None) -> Path | None:
    """The postprocessing rule file to apply: ``choice`` (a path), none (``"none"``), or by default the
    ``postprocessing.json`` of the one run folder given as the model."""
    from medattn.infer.postprocess import RULE_NAME

    if choice == "none":
        return None
    if choice is not None:
        if not Path(choice).is_file():
            raise DataError("no such postprocessing rule file", choice)
        return Path(choice)
    if len(specs) == 1 and Path(specs[0]).is_dir() and (Path(specs[0]) / RULE_NAME).is_file():
        return Path(specs[0]) / RULE_NAME
    return None


def _warn_untrained_mirroring(loaded: Any, members: Sequence[Path]) -> None:
    """Say so where mirroring TTA is asked of a model whose file records training without flips: a network never
    shown a flipped image can be far worse on one (the tests' phantom model: 0.81 Dice on the images, 0.61 on the
    mean of their eight mirrorings), so the averaged mask may be worse than the plain one."""
    from medattn.models.model_file import recorded_flip_prob

    for member, model in zip(members, loaded.loaded):
        if recorded_flip_prob(model.doc) == 0.0:
            log.warning(
                "%s was trained without flips (its model file records flip_prob 0): mirrored test-time passes may "
                "lower its accuracy rather than raise it; predict without --tta, or check on labelled cases first",
                member,
            )


def check_rule_models(rule: Any, members: Sequence[Path], rule_path: Path | None) -> None:
    """Refuse a postprocessing rule learned (by ``crossval``) on other models than these: a fold retrained since
    would be postprocessed by what its predecessor's out-of-fold masks chose. The rule records each fold's model
    digest; a rule without them (written by hand, or before they were recorded) is not compared."""
    from medattn.data.digests import file_digest

    recorded = (rule.evidence or {}).get("models")
    if not isinstance(recorded, dict):
        return
    for member in members:
        name = member.parent.name
        if name in recorded and recorded[name] != file_digest(member):
            raise DataError(
                f"the postprocessing rule was learned on other models: {name}/model.pt changed since crossval "
                "ran; run medattn crossval again, or predict with --no-postprocessing",
                rule_path,
            )


def _load_rule(path: Path | None, labels: Any) -> Any:
    from medattn.infer.postprocess import load_rule

    return load_rule(path, labels) if path is not None else None


def _provenance(members: Sequence[Path], rule_path: Path | None, rule: Any) -> dict[str, Any]:
    """What ``predictions.json`` says about the models and the postprocessing beyond the options."""
    doc: dict[str, Any] = {"models": [str(p) for p in members], "postprocessing": None}
    if rule is not None:
        doc["postprocessing"] = {
            "rule": str(rule_path),
            "classes": {str(k): r.to_dict() for k, r in sorted(rule.classes.items())},
            "description": rule.describe(),
        }
    return doc


def make_predictor(
    model: torch.nn.Module, plan: Any, options: PredictOptions, device: torch.device, members: int = 1
) -> Any:
    """The :class:`SlidingWindowPredictor` for ``model`` under ``options`` (window defaults to the plan's patch);
    ``members`` > 1 for an :class:`~medattn.models.ensemble.EnsembleNetwork`."""
    from medattn.infer.sliding import SlidingWindowPredictor

    window = options.window or tuple(plan.patch_size)
    if options.window:
        _check_window(tuple(options.window), model, tuple(plan.patch_size))
    return SlidingWindowPredictor(
        model,
        window,
        overlap=options.overlap,
        window_batch=options.window_batch,
        blend="constant" if options.blend == "constant" else "gaussian",
        mirror_axes=options.mirror_axes,
        sw_device=device,
        stitch_device=options.stitch_device,
        accumulator_dtype=torch.float16 if options.accumulator_dtype == "float16" else torch.float32,
        num_classes=plan.num_classes,
        members=members,
    )


def _check_window(window: tuple[int, ...], model: torch.nn.Module, patch: tuple[int, ...]) -> None:
    """Refuse a ``--window`` that is not a multiple of the network's strides (each window would be zero-padded
    inside the network: a 7-voxel window changed half the mask); warn for one under half the trained patch on an
    axis (the network sees less context than it learnt from: a 1-voxel window changed 59% of the mask)."""
    from medattn.models.padding import needs_padding, padded_size

    nets = list(getattr(model, "members", [model]))
    multiples = {tuple(m) for m in (getattr(n, "required_multiple", None) for n in nets) if m is not None}
    for multiple in multiples:
        if needs_padding(window, multiple):  # not a multiple, or one multiple on every axis (a one-voxel bottleneck)
            raise ConfigError(
                f"--window {','.join(map(str, window))}: each size must be a multiple of the network's"
                f" {','.join(map(str, multiple))} (the product of its strides), twice it on some axis; e.g."
                f" {','.join(map(str, padded_size(window, multiple)))}"
            )
    if any(w < p / 2 for w, p in zip(window, patch)):
        log.warning(
            "--window %s is under half the patch the model was trained on (%s) on some axis: each window gives the"
            " network less context than it learnt from, and the masks may be worse",
            ",".join(map(str, window)),
            ",".join(map(str, patch)),
        )


# ---- per case --------------------------------------------------------------------------------------------------


def predict_cases(
    cases: Sequence[InputCase],
    plan: Any,
    predictor: Any,
    out: Path,
    options: PredictOptions,
    protected: Sequence[Path],
    rank: Rank,
    seg_writer: Any = None,
    *,
    postprocess: Any = None,
) -> Iterator[CaseResult]:
    """Predict ``cases`` one by one into ``out`` (the input gate, preprocessing, the sliding window, inversion to
    each input's grid, the postprocessing ``postprocess`` (a :class:`~medattn.infer.postprocess.Rule`), the
    writers); a case that fails is recorded in its result and the others go on. What ``medattn predict`` and
    :mod:`medattn.api` both run."""
    from medattn.data.transforms import inference_transforms

    transform = inference_transforms(plan, replace_nonfinite=options.replace_nonfinite)
    lut = label_lookup(plan)
    bar = progress_bar(len(cases), desc="predict", unit="case", enabled=options.progress and rank.is_main)
    names = [ch.name for ch in plan.channels]
    modalities = [ch.modality for ch in plan.channels]
    for case, loaded, load_s in _preprocessed(cases, transform, options, names, modalities):
        result = CaseResult(case=case.case_id, inputs=[str(p) for p in case.images], rank=rank.rank)
        result.seconds["read_preprocess"] = round(load_s, 3)
        try:
            if isinstance(loaded, BaseException):
                raise loaded
            data, checked = loaded
            # each warning names its own file: the constant T1 of a FLAIR+T1 case is T1.nii.gz's, not FLAIR's
            files = [p.file or str(case.images[0]) for p in checked.warnings]
            result.warnings = [
                f"[{p.check}] {p.message}" + (f" ({Path(f).name})" if len(case.images) > 1 else "")
                for p, f in zip(checked.warnings, files)
            ]
            suffix = output_suffix(case, options.output_format)
            if any(p.check == "geometry" for p in checked.warnings) and suffix not in (".nii", ".nii.gz"):
                result.warnings.append(
                    f"[geometry] the mask is written as {suffix} with the geometry SimpleITK reads from the input's "
                    "header, which the warning above says not every reader shares: it overlays the image in "
                    "ITK-based viewers, not necessarily in nibabel-based ones (NIfTI output keeps the header "
                    "itself and overlays it in both)"
                )
            files += [str(case.images[0])] * (len(result.warnings) - len(files))  # the geometry note above
            for f, w in zip(files, result.warnings):  # on the console too: a blank scan's mask is no plain "ok"
                log.warning("case %s: %s: %s", case.case_id, f, w)
            result.nonfinite_replaced = int(checked.stats.get("nonfinite", 0)) if options.replace_nonfinite else 0
            _predict_one(
                case, data, transform, lut, predictor, out, options, protected, result, seg_writer, postprocess
            )
            # an earlier run's probability or uncertainty maps of this case would sit beside the new mask
            result.removed_stale = _remove_stale(
                case,
                out,
                options,
                plan,
                protected,
                mask=False,
                probabilities=options.save_probabilities is None,
                uncertainty=not options.save_uncertainty,
            )
        except Exception as e:  # one bad case must not stop the others; the reason is recorded
            result.status = "failed"
            result.file = getattr(e, "path", None) or str(case.images[0])
            problem = getattr(e, "problem", None)  # ours: one line, kept whole (the gate lists every reason)
            result.reason = _first_line(problem, 4000) if problem else _first_line(f"{type(e).__name__}: {e}")
            result.output, result.probabilities = None, []
            result.removed_stale = _remove_stale(case, out, options, plan, protected)
            log.warning("case %s failed: %s: %s", case.case_id, result.file, result.reason)
            log.debug("case %s", case.case_id, exc_info=e)
        bar.set_postfix_str(case.case_id, refresh=False)
        bar.update(1)
        yield result
    bar.close()


def _predict_one(
    case: InputCase,
    data: dict[str, Any],
    transform: Any,
    lut: np.ndarray,
    predictor: Any,
    out: Path,
    options: PredictOptions,
    protected: Sequence[Path],
    result: CaseResult,
    seg_writer: Any = None,
    postprocess: Any = None,
) -> None:
    from medattn.data.transforms import invert_to_input

    header = read_header(case.images[0])
    image = data["image"]
    result.input_shape = [int(s) for s in header.spatial_shape]
    result.preprocessed_shape = [int(s) for s in image.shape[1:]]

    t = time.perf_counter()
    want = options.save_probabilities is not None or options.save_uncertainty
    pred = predictor(image, return_probabilities=want)
    labels, probs, result.windows = pred.labels.cpu(), pred.probabilities, pred.num_windows
    del pred
    maps = _uncertainty(image, predictor, probs, labels) if options.save_uncertainty else None
    result.seconds["inference"] = round(time.perf_counter() - t, 3)

    t = time.perf_counter()
    back = invert_to_input(labels[None], data, transform, nearest=True)
    del labels
    if probs is not None and options.save_probabilities is not None:  # before the mask: a mask implies its maps
        result.probabilities = write_probabilities(
            probs, data, transform, case, header, out, options.save_probabilities, options.output_format, protected, lut
        )
    del probs
    if maps is not None:
        from medattn.infer.outputs import write_uncertainty
        from medattn.infer.uncertainty import summarise

        on_input, result.uncertainty_maps = write_uncertainty(maps, data, transform, case, header, out, protected)
        result.uncertainty = summarise(on_input, np.asarray(back[0]) > 0)
    result.output = str(
        write_mask(back, lut, header, case, out, options.output_format, protected, seg_writer, postprocess)
    )
    del back
    result.seconds["invert_write"] = round(time.perf_counter() - t, 3)


def _uncertainty(image: Any, predictor: Any, probs: Any, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """The uncertainty maps of one prediction on the preprocessed grid (:mod:`medattn.infer.uncertainty`)."""
    from medattn.infer.uncertainty import disagreement_map, entropy_map

    maps = {"entropy": entropy_map(probs.cpu())}
    if getattr(predictor, "mirror_axes", ()):
        maps["disagreement"] = disagreement_map(image, predictor, labels)
    return maps


def _require_series(cases: Sequence[InputCase]) -> None:
    """``--format dicom-seg``: every case must be a DICOM series (a SEG references its source instances).

    Raises:
        ConfigError: naming the inputs that are not DICOM series folders (before the model is loaded).
    """
    from medattn.data.dicom import is_series_folder

    others = [c for c in cases if len(c.images) != 1 or not is_series_folder(c.images[0])]
    if others:
        names = ", ".join(f"{c.case_id} ({c.images[0].name})" for c in others[:5])
        raise ConfigError(
            f"--format dicom-seg needs DICOM series inputs (a DICOM-SEG references its source slices); "
            f"{len(others)} input(s) are not: {names}{' ...' if len(others) > 5 else ''}"
        )


def _seg_writer(members: Sequence[Path], loaded: Any, cases: Sequence[InputCase]) -> Any:
    """The DICOM-SEG writer of a ``--format dicom-seg`` run (:class:`~medattn.infer.dicom_seg.SegWriter`)."""
    from medattn.infer.dicom_seg import SegWriter

    _require_series(cases)
    return SegWriter.for_model(members, loaded.plan.labels, type(loaded.loaded[0].model).__name__)


def _remove_stale(
    case: InputCase,
    out: Path,
    options: PredictOptions,
    plan: Any,
    protected: Sequence[Path],
    *,
    mask: bool = True,
    probabilities: bool = True,
    uncertainty: bool = True,
) -> list[str]:
    """Remove what an earlier run wrote for a case that this one does not write: everything of a case that failed
    now (so no old mask passes for a new one), or the probability or uncertainty maps of a case predicted now
    without them (they would sit beside a mask they no longer match)."""
    stale = [output_path(case, out, options.output_format)] if mask else []
    if probabilities:
        stale += probability_paths(case, out, label_lookup(plan), options.output_format)
    if uncertainty:
        stale += uncertainty_paths(case, out).values()
    keep = {Path(p).resolve() for p in protected}
    removed = []
    for p in stale:
        if p.is_file() and p.resolve() not in keep:
            p.unlink()
            removed.append(str(p))
    if removed:
        log.warning("case %s: removed %d output file(s) of an earlier run: %s", case.case_id, len(removed), removed)
    return removed


def _first_line(text: str, limit: int = 400) -> str:
    """The first line of an error message (MONAI appends every reader's traceback), at most ``limit`` chars."""
    line = str(text).strip().splitlines()[0] if str(text).strip() else "unknown error"
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _preprocessed(
    cases: Sequence[InputCase],
    transform: Any,
    options: PredictOptions,
    names: Sequence[str],
    modalities: Sequence[str | None] | None = None,
) -> Iterator[tuple[InputCase, Any, float]]:
    """(case, (preprocessed dict, gate result) or the exception, seconds), reading up to ``options.workers`` cases
    ahead in threads; ``modalities``: the model's per channel, matched to DICOM series' headers."""
    from medattn.data.gate import check_input_case
    from medattn.data.transforms import apply

    def load(case: InputCase) -> tuple[Any, float]:
        t = time.perf_counter()
        try:
            checked = check_input_case(
                case.case_id,
                case.images,
                names,
                input_channels=case.channels,
                domain=case.domain,
                nonfinite="replace" if options.replace_nonfinite else "error",
                modalities=modalities,
            )
            return (apply(transform, case.transform_input()), checked), time.perf_counter() - t
        except Exception as e:  # reported per case by the caller
            return e, time.perf_counter() - t

    workers = options.workers
    if workers <= 0:
        for case in cases:
            data, s = load(case)
            yield case, data, s
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="medattn-read") as pool:
        pending: list[tuple[InputCase, Future[tuple[Any, float]]]] = []
        it = iter(cases)
        for case in it:
            pending.append((case, pool.submit(load, case)))
            if len(pending) > workers:
                break
        while pending:
            case, fut = pending.pop(0)
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(load, nxt)))
            data, s = fut.result()
            yield case, data, s


# ---- run-level helpers -----------------------------------------------------------------------------------------


def _summary(
    model_path: str | Path | Sequence[str | Path],
    input_spec: str | Path,
    out: Path,
    options: PredictOptions,
    rank: Rank,
    results: list[dict[str, Any]],
    seconds: float,
) -> dict[str, Any]:
    results = sorted(results, key=lambda r: r["case"])
    failed = [{"case": r["case"], "file": r["file"], "reason": r["reason"]} for r in results if r["status"] != "ok"]
    return {
        "format": "medattn-predictions",
        "version": 1,
        "model": str(model_path) if isinstance(model_path, (str, Path)) else [str(p) for p in model_path],
        "input": str(input_spec),
        "output": str(out),
        "options": asdict(options),
        "world_size": rank.world_size,
        "num_cases": len(results),
        "num_written": len(results) - len(failed),
        "num_failed": len(failed),
        "complete": False,
        "seconds": round(seconds, 3),
        "failed": failed,
        "check_first": check_first(results) if options.save_uncertainty else None,
        "cases": results,
    }
