"""Plan: the preprocessing and patch decisions derived from a dataset fingerprint (nnU-Net style).

The plan is a frozen, versioned dataclass saved as JSON next to every model, so a model file alone says how to
read a new volume. The rules:

* **Target spacing**: the median spacing per axis. When the data are anisotropic (the coarsest median spacing is
  more than 3x the finest), the coarse axis takes the 10th percentile of its spacings instead, so thick-slice
  outliers do not force everything onto a coarse grid (nnU-Net's rule).
* **Patch size**: start from the median shape after resampling, rounded up to what the network can pool, and
  shrink the axis with the largest size in mm until the estimated training activation memory (batch of
  ``batch_size``) fits ``memory_budget_mb``.
* **Network topology hints**: per-stage strides that stop pooling an axis once its feature map would drop below
  4 voxels, and that do not pool a coarse axis until its spacing is within 2x of the finest (nnU-Net).
* **Normalisation**: CT channels are clipped to the 0.5th/99.5th foreground percentiles of the whole dataset,
  then shifted and scaled by the foreground mean and standard deviation; MR and other channels get a per-volume
  z-score, inside the body when the body's bounding box is clearly smaller than the volume (median fraction below
  :data:`CROP_BELOW`), which is also when the transforms crop to the body. The body is
  :func:`medattn.data.body.body_mask`'s: the voxels that differ from the dominant border value, so a dataset stored
  with a constant background of -3.6 (or with an offset) is planned as the same data with a background of 0.
* **Cases**: the fingerprint reads a domain's labelled cases except those of its ``test`` split
  (:data:`medattn.data.manifest.TEST_SPLITS`), so held-out cases shape neither the patch nor the CT statistics,
  whether the plan comes from ``medattn plan`` or from ``medattn train`` without ``--plan``. Validation cases
  (a ``val`` split) are training data and are read; a domain without splits is read whole.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medattn.data.fingerprint import CaseFingerprint, fingerprint_case, summarise
from medattn.data.manifest import Manifest
from medattn.errors import DataError, ManifestError
from medattn.typing import Spacing, Triple

log = logging.getLogger(__name__)

PLAN_VERSION = 1

#: Anisotropy threshold (coarsest / finest median spacing) above which the coarse axis uses its 10th percentile.
ANISOTROPY_THRESHOLD = 3.0
#: Smallest feature-map edge the planner pools down to.
MIN_FEATURE_SIZE = 4
#: Upper bound on pooling stages.
MAX_POOL = 5
#: Reference network for the memory estimate: base width and stored tensors per voxel per channel.
REF_BASE_WIDTH = 32
#: Activations kept for backward per voxel of each feature map, in units of the map's channels: two conv blocks
#: (conv, norm, activation each) in the encoder and in the decoder, plus the skip, the upsampled map and the gate.
#: An estimate by counting, not a measurement; it only has to rank patch sizes against a budget.
REF_TENSORS_PER_LEVEL = 16
BYTES_PER_VALUE = 4
#: Crop to the body, and z-score inside it, when the median body bounding-box fraction is below this.
CROP_BELOW = 0.75


@dataclass(frozen=True)
class ChannelNorm:
    """How one input channel is normalised.

    Attributes:
        name: channel name from the manifest.
        modality: CT, MR, PET, US or OTHER.
        scheme: ``"ct"`` (clip to [clip_low, clip_high], then (x - mean) / std with dataset statistics) or
            ``"zscore"`` (per volume, inside the body mask when ``use_body_mask``).
        clip_low, clip_high, mean, std: dataset foreground statistics (used by ``"ct"``; recorded for all).
        use_body_mask: z-score only over the body (:func:`medattn.data.body.body_mask`: the voxels that differ
            from the volume's dominant border value), leaving the voxels outside it at 0.
    """

    name: str
    modality: str
    scheme: str
    clip_low: float
    clip_high: float
    mean: float
    std: float
    use_body_mask: bool = False


@dataclass(frozen=True)
class Plan:
    """Everything needed to preprocess a volume for a model, and the patch geometry to train it with.

    Spatial tuples are in (X, Y, Z) order on the RAS grid (the order after ``Orientationd("RAS")``), spacing in mm.
    """

    dataset: str
    channels: tuple[ChannelNorm, ...]
    labels: Mapping[int, str]
    target_spacing: Spacing
    anisotropic: bool
    median_shape: Triple
    patch_size: Triple
    batch_size: int
    strides: tuple[Triple, ...]
    kernel_sizes: tuple[Triple, ...]
    crop_foreground: bool
    foreground_ratio: float
    memory_budget_mb: float
    estimated_memory_mb: float
    fingerprint: Mapping[str, Any] = field(default_factory=dict, compare=False)
    version: int = PLAN_VERSION

    @property
    def num_channels(self) -> int:
        return len(self.channels)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def required_multiple(self) -> Triple:
        """Product of the strides per axis: the patch (and padded input) must be a multiple of this."""
        m = np.prod(np.array(self.strides), axis=0) if self.strides else np.ones(3)
        return tuple(int(v) for v in m)  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["labels"] = {str(k): v for k, v in self.labels.items()}
        return {"format": "medattn-plan", **d}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Plan:
        if doc.get("format", "medattn-plan") != "medattn-plan":
            raise ManifestError(f"not a medattn plan (format {doc.get('format')!r})")
        version = int(doc.get("version", PLAN_VERSION))
        if version > PLAN_VERSION:
            raise ManifestError(f"plan version {version} is newer than this medattn understands ({PLAN_VERSION})")
        try:
            return cls(
                dataset=str(doc["dataset"]),
                channels=tuple(ChannelNorm(**c) for c in doc["channels"]),
                labels={int(k): str(v) for k, v in doc["labels"].items()},
                target_spacing=_t3f(doc["target_spacing"]),
                anisotropic=bool(doc["anisotropic"]),
                median_shape=_t3i(doc["median_shape"]),
                patch_size=_t3i(doc["patch_size"]),
                batch_size=int(doc["batch_size"]),
                strides=tuple(_t3i(s) for s in doc["strides"]),
                kernel_sizes=tuple(_t3i(k) for k in doc["kernel_sizes"]),
                crop_foreground=bool(doc["crop_foreground"]),
                foreground_ratio=float(doc["foreground_ratio"]),
                memory_budget_mb=float(doc["memory_budget_mb"]),
                estimated_memory_mb=float(doc["estimated_memory_mb"]),
                fingerprint=dict(doc.get("fingerprint", {})),
                version=version,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ManifestError(f"malformed plan: {type(e).__name__}: {e}") from e

    def save(self, path: str | Path) -> Path:
        from medattn.data.io import atomic_write_text

        return atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        path = Path(path)
        try:
            doc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ManifestError(f"cannot read plan: {e}", path) from e
        return cls.from_dict(doc)


def _t3f(v: Sequence[Any] | np.ndarray) -> Spacing:
    a, b, c = (float(x) for x in v)
    return (a, b, c)


def _t3i(v: Sequence[Any] | np.ndarray) -> Triple:
    a, b, c = (int(x) for x in v)
    return (a, b, c)


# ---- planning rules --------------------------------------------------------------------------------------------


def check_spacing(spacing: Sequence[float]) -> Spacing:
    """Three finite, positive voxel sizes in mm, or a :class:`DataError` naming the value."""
    values = [float(v) for v in spacing]
    if len(values) != 3 or not all(np.isfinite(v) and v > 0 for v in values):
        raise DataError(f"target spacing must be three positive voxel sizes in mm (X, Y, Z), got {list(spacing)}")
    return _t3f(values)


def is_anisotropic(spacing: Sequence[float] | np.ndarray) -> bool:
    """Whether the coarsest axis of ``spacing`` is over ``ANISOTROPY_THRESHOLD`` times the finest."""
    return bool(max(spacing) > ANISOTROPY_THRESHOLD * min(spacing))


def choose_target_spacing(spacings: np.ndarray) -> tuple[Spacing, bool]:
    """Median spacing per axis; on anisotropic data the coarse axis takes its 10th percentile.

    Args:
        spacings: (N, 3) array of per-case spacings in mm (RAS axis order).

    Returns:
        (target spacing, anisotropic flag).
    """
    median = np.median(spacings, axis=0)
    coarse = int(np.argmax(median))
    anisotropic = is_anisotropic(median)
    target = median.copy()
    if anisotropic:
        p10 = float(np.percentile(spacings[:, coarse], 10))
        # Never finer than the finest of the other axes.
        target[coarse] = max(p10, float(np.max(np.delete(median, coarse))))
    return _t3f(np.round(target, 6)), anisotropic


def plan_topology(patch: Sequence[int], spacing: Sequence[float]) -> tuple[tuple[Triple, ...], tuple[Triple, ...]]:
    """Per-stage strides and kernel sizes (stage 0 has stride 1).

    An axis is pooled while its feature map stays >= MIN_FEATURE_SIZE * 2 and its current spacing is at most 2x
    the finest current spacing; a kernel is 1 along an axis whose spacing is still over 2x the finest (nnU-Net).
    """
    size = np.array(patch, dtype=float)
    sp = np.array(spacing, dtype=float)
    strides: list[Triple] = [(1, 1, 1)]
    kernels: list[Triple] = [_kernel(sp)]
    for _ in range(MAX_POOL):
        can = (size >= 2 * MIN_FEATURE_SIZE) & (sp <= 2 * sp.min())
        if not can.any():
            break
        s = np.where(can, 2, 1)
        size = size / s
        sp = sp * s
        strides.append(_t3i(s))
        kernels.append(_kernel(sp))
    return tuple(strides), tuple(kernels)


def _kernel(sp: np.ndarray) -> Triple:
    return _t3i(np.where(sp > 2 * sp.min(), 1, 3))


def estimate_memory_mb(patch: Sequence[int], strides: Sequence[Sequence[int]], batch: int, in_channels: int) -> float:
    """Training activation memory of the reference network on one batch, in MiB.

    Sums over resolution levels: voxels at that level x channels (REF_BASE_WIDTH doubling per level, capped at
    320 like nnU-Net) x REF_TENSORS_PER_LEVEL stored tensors x 4 bytes, plus the input.
    """
    vox = float(np.prod(patch))
    total = vox * in_channels
    scale = 1.0
    width = REF_BASE_WIDTH
    for s in strides:
        scale *= float(np.prod(s))
        total += (vox / scale) * width * REF_TENSORS_PER_LEVEL
        width = min(width * 2, 320)
    return total * batch * BYTES_PER_VALUE / 2**20


def choose_patch(
    median_shape: Sequence[float],
    spacing: Sequence[float],
    budget_mb: float,
    batch: int,
    in_channels: int,
    max_edge: int = 192,
) -> tuple[Triple, tuple[Triple, ...], tuple[Triple, ...], float]:
    """Largest patch, starting from the median shape, whose estimated memory fits the budget."""
    patch = np.minimum(np.maximum(np.ceil(np.asarray(median_shape, float)), MIN_FEATURE_SIZE), max_edge)
    for _ in range(400):
        strides, kernels = plan_topology(patch, spacing)
        mult = np.prod(np.array(strides), axis=0)
        rounded = np.ceil(patch / mult) * mult
        mem = estimate_memory_mb(rounded, strides, batch, in_channels)
        if mem <= budget_mb or np.all(rounded <= mult):
            return _t3i(rounded), strides, kernels, mem
        # Shrink the axis that is largest in physical size (ties: the one with most voxels).
        mm = patch * np.asarray(spacing)
        axis = int(np.argmax(mm + 1e-6 * patch))
        patch[axis] = max(MIN_FEATURE_SIZE, patch[axis] - max(1.0, mult[axis]))
    raise DataError(f"could not fit a patch into a {budget_mb} MiB budget")


#: Most voxels of the median volume on a plan's grid: a 1024^3 volume (4 GiB of float32 per channel).
MAX_RESAMPLED_VOXELS = 1024**3


def _check_resampled_shape(median_shape: np.ndarray, target: Sequence[float], chosen: Sequence[float]) -> None:
    """Refuse a ``--spacing`` that leaves the median volume fewer than :data:`MIN_FEATURE_SIZE` voxels along an
    axis (nothing to segment: the network's first level is that small) or more than :data:`MAX_RESAMPLED_VOXELS`
    (training would try to allocate tens of GB per volume), naming the shape and the fingerprint's own choice."""
    shape = [round(float(v)) for v in median_shape]
    hint = (
        f"the dataset's median volume would be {shape} voxels at {list(target)} mm "
        f"(its own spacing: {[round(float(v), 3) for v in chosen]})"
    )
    if min(median_shape) < MIN_FEATURE_SIZE:
        raise DataError(f"--spacing is too coarse: {hint}, under {MIN_FEATURE_SIZE} voxels along an axis")
    if float(np.prod(median_shape)) > MAX_RESAMPLED_VOXELS:
        raise DataError(f"--spacing is too fine: {hint}, over {MAX_RESAMPLED_VOXELS:,} voxels")


def make_plan(
    manifest: Manifest,
    *,
    data_root: str | Path | None = None,
    memory_budget_mb: float = 2048.0,
    batch_size: int = 2,
    foreground_ratio: float = 0.33,
    max_cases: int | None = None,
    seed: int = 0,
    progress: bool = False,
    checked: bool = False,
    target_spacing: Sequence[float] | None = None,
) -> Plan:
    """Fingerprint ``manifest`` and derive a :class:`Plan`.

    Only labelled cases outside each domain's ``test`` split are fingerprinted (at most ``max_cases`` of them per
    domain, drawn with ``seed``); the number left out is ``fingerprint["test_cases_left_out"]``. Each case passes
    the input gate first (the checks of ``medattn validate``; ``checked=True`` when the caller has already run it,
    as ``medattn train`` does): a refused case, or one that cannot be read, is skipped with a warning naming it and
    its reason and listed in ``fingerprint["skipped_cases"]``; planning fails only when no case is left.

    ``target_spacing`` (mm, RAS axis order) replaces the fingerprint's choice, like nnU-Net's low-resolution
    configuration: coarser voxels make a large field of view (whole brains) fit a CPU budget. The patch, the
    network's topology and the anisotropy flag are then derived from it as from a chosen spacing; the fingerprint
    records both (``spacing_override``).
    """
    from tqdm.auto import tqdm

    from medattn.data.gate import refusal_line
    from medattn.data.validate import validate_case

    rng = np.random.default_rng(seed)
    work: list[tuple[Any, Any]] = []
    left_out = 0
    for d in manifest.domains:
        held_out = d.held_out_ids()
        cases = [c for c in d.cases if c.label is not None and c.id not in held_out]
        left_out += sum(1 for c in d.cases if c.label is not None and c.id in held_out)
        if max_cases is not None and len(cases) > max_cases:
            idx = sorted(rng.choice(len(cases), max_cases, replace=False))
            cases = [cases[i] for i in idx]
        work.extend((d, c) for c in cases)
    if not work:
        raise ManifestError(
            f"{manifest.name}: no labelled case to plan from"
            + (f" ({left_out} labelled case(s) are in a test split, which planning never reads)" if left_out else "")
        )
    fps: list[CaseFingerprint] = []
    skipped: list[str] = []
    for d, c in tqdm(work, desc="fingerprint", disable=not progress, unit="case"):
        if not checked:
            result = validate_case(manifest, d, c, data_root=data_root)
            if not result.ok:
                log.warning("skipping %s", refusal_line(result))
                skipped.append(refusal_line(result))
                continue
        try:
            fps.append(fingerprint_case(manifest, d, c, data_root, rng))
        except DataError as e:
            log.warning("skipping %s", e)
            skipped.append(str(e))
    if not fps:
        raise DataError(f"no case of {manifest.name} could be read; first error: {skipped[0]}")

    names = [ch.name for ch in manifest.channels]
    overall = summarise(fps, names)
    per_domain = {
        d.name: summarise([f for f in fps if f.domain == d.name], names)
        for d in manifest.domains
        if any(f.domain == d.name for f in fps)
    }
    spacings = np.array([f.spacing for f in fps])
    target, aniso = choose_target_spacing(spacings)
    chosen = target
    if target_spacing is not None:
        target = check_spacing(target_spacing)
        aniso = is_anisotropic(target)
    resampled = np.array([np.array(f.shape) * np.array(f.spacing) / np.array(target) for f in fps])
    median_shape = np.median(resampled, axis=0)
    if target_spacing is not None:
        _check_resampled_shape(median_shape, target, chosen)
    patch, strides, kernels, mem = choose_patch(median_shape, target, memory_budget_mb, batch_size, len(names))

    crop = bool(overall["body_bbox_fraction_median"] < CROP_BELOW)
    norms = []
    for ch in manifest.channels:
        st = overall["foreground_intensity"][ch.name]
        scheme = "ct" if ch.modality == "CT" else "zscore"
        norms.append(
            ChannelNorm(
                name=ch.name,
                modality=ch.modality,
                scheme=scheme,
                clip_low=st["p00_5"],
                clip_high=st["p99_5"],
                mean=st["mean"],
                std=max(st["std"], 1e-8),
                use_body_mask=crop and scheme == "zscore",
            )
        )
    fingerprint = {
        "overall": overall,
        "domains": per_domain,
        "skipped_cases": skipped,
        "cases_used": len(fps),
        "test_cases_left_out": left_out,
        "seed": seed,
    }
    if target_spacing is not None:
        fingerprint["spacing_override"] = {"fingerprint_choice": list(chosen), "used": list(target)}
    return Plan(
        dataset=manifest.name,
        channels=tuple(norms),
        labels=dict(manifest.labels),
        target_spacing=target,
        anisotropic=aniso,
        median_shape=_t3i(np.round(median_shape)),
        patch_size=patch,
        batch_size=batch_size,
        strides=strides,
        kernel_sizes=kernels,
        crop_foreground=crop,
        foreground_ratio=foreground_ratio,
        memory_budget_mb=float(memory_budget_mb),
        estimated_memory_mb=round(float(mem), 1),
        fingerprint=fingerprint,
    )


def normalisation_text(ch: ChannelNorm) -> str:
    """How a channel's voxels are normalised, in words: what ``format_plan`` prints and an export records."""
    if ch.scheme == "ct":
        return f"clip [{ch.clip_low:.4g}, {ch.clip_high:.4g}], then (x - {ch.mean:.4g}) / {ch.std:.4g}"
    body = " inside the body (the voxels that differ from the volume's dominant border value)"
    return "per-volume z-score" + (body if ch.use_body_mask else "")


def format_plan(plan: Plan) -> str:
    """Human-readable summary of a plan and its fingerprint."""
    fp = plan.fingerprint.get("overall", {})
    lines = [
        f"plan for {plan.dataset} ({plan.fingerprint.get('cases_used', '?')} cases"
        + (
            f", {len(plan.fingerprint.get('skipped_cases', []))} skipped"
            if plan.fingerprint.get("skipped_cases")
            else ""
        )
        + (
            f", {plan.fingerprint['test_cases_left_out']} test cases left out"
            if plan.fingerprint.get("test_cases_left_out")
            else ""
        )
        + ")",
        f"  median spacing (RAS, mm): {_fmt(fp.get('spacing', {}).get('median', []))}"
        f"   median shape: {_fmt(fp.get('shape', {}).get('median', []), 0)}",
        f"  target spacing (mm):      {_fmt(plan.target_spacing)}" + ("   [anisotropic]" if plan.anisotropic else ""),
        f"  median shape resampled:   {list(plan.median_shape)}",
        f"  patch size:               {list(plan.patch_size)}  (batch {plan.batch_size}, ~"
        f"{plan.estimated_memory_mb:.0f} MiB of {plan.memory_budget_mb:.0f} MiB budget)",
        f"  strides:                  {[list(s) for s in plan.strides]}",
        f"  crop to foreground:       {plan.crop_foreground}",
        "  normalisation:",
    ]
    for ch in plan.channels:
        lines.append(f"    {ch.name} ({ch.modality}): {ch.scheme}: {normalisation_text(ch)}")
    doms = plan.fingerprint.get("domains", {})
    if len(doms) > 1:
        lines.append("  per domain (median spacing | median shape | foreground intensity mean/std of channel 0):")
        for name, d in doms.items():
            st = next(iter(d["foreground_intensity"].values()))
            lines.append(
                f"    {name:<14} {_fmt(d['spacing']['median'])} | {_fmt(d['shape']['median'], 0)} | "
                f"{st['mean']:.4g}/{st['std']:.4g}  ({d['num_cases']} cases)"
            )
    lines.append(f"  labels: {dict(plan.labels)}")
    return "\n".join(lines)


def _fmt(v: Sequence[float], nd: int = 3) -> str:
    return "[" + ", ".join(f"{x:.{nd}f}" if not math.isnan(x) else "nan" for x in v) + "]"
