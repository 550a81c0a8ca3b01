"""MONAI pipelines built from a :class:`~medattn.data.plan.Plan`.

Every pipeline starts with the same deterministic preprocessing, so training, validation and inference see
volumes prepared identically:

    load (nibabel / SimpleITK) -> channel first -> orient to RAS -> resample to the plan's spacing
    -> map label values to 0..K-1 -> normalise per channel -> crop to the body (when planned)

The body is one rule, :func:`medattn.data.body.body_mask`: the voxels that differ from the volume's dominant border
value (the most frequent value on its outer faces, when it fills at least half of them), else the whole volume.
So a background stored as 0, as -3.6 or with a float offset gives the same body, the same z-score inside it and
the same crop. The z-score inside the body uses each channel's own body; the crop uses the union of the channels'
bodies, taken on the resampled image before normalisation, and the planner's fingerprint uses the same union.

Inference uses only invertible spatial steps, so :func:`invert_to_input` puts a prediction back into the input's
exact grid (shape, affine, orientation). Training adds padding, foreground-oversampled patch sampling and
augmentation, including scanner-style artefacts (bias field, Gibbs ringing, k-space spikes, low resolution,
gamma, Rician noise) from MONAI's random transforms.

Dictionary keys: ``image`` (float32, (C, X, Y, Z) after loading, RAS), ``label`` (float32 holding integer class
indices, (1, X, Y, Z)).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import CacheDataset, Dataset, MetaTensor, PersistentDataset
from monai.transforms import (
    Compose,
    CropForegroundd,
    DeleteItemsd,
    EnsureChannelFirstd,
    EnsureTyped,
    Invertd,
    LoadImaged,
    MapLabelValued,
    MapTransform,
    Orientationd,
    RandAdjustContrastd,
    RandAffined,
    RandBiasFieldd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandGibbsNoised,
    RandKSpaceSpikeNoised,
    RandRicianNoised,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandSimulateLowResolutiond,
    Spacingd,
    SpatialPadd,
)

from medattn.data.body import body_mask, union_body_mask
from medattn.data.plan import ChannelNorm, Plan
from medattn.data.readers import make_readers, only_our_readers, quiet_default_readers

IMAGE = "image"
LABEL = "label"
#: Transient key holding the union body mask between :class:`BodyMaskd` and the crop; removed right after.
BODY = "body"


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of the training augmentations (per sample). ``AugmentConfig.none()`` disables all.

    Spatial: flips on each axis, rotation (degrees; in-plane only for anisotropic plans) and scaling. Intensity:
    multiplicative and additive shifts, Gaussian noise and blur, gamma. Scanner-style: bias field (polynomial
    coefficient range), Gibbs ringing (alpha), k-space spikes, simulated low resolution (zoom range), Rician noise
    (std relative to the image's).
    """

    flip_prob: float = 0.5
    rotate_prob: float = 0.2
    rotate_deg: float = 15.0
    scale_prob: float = 0.2
    scale_range: tuple[float, float] = (0.85, 1.25)
    intensity_scale_prob: float = 0.15
    intensity_shift_prob: float = 0.15
    noise_prob: float = 0.1
    blur_prob: float = 0.1
    gamma_prob: float = 0.15
    gamma_range: tuple[float, float] = (0.7, 1.5)
    bias_field_prob: float = 0.1
    bias_coeff: tuple[float, float] = (0.0, 0.2)
    gibbs_prob: float = 0.05
    gibbs_alpha: tuple[float, float] = (0.0, 0.5)
    spike_prob: float = 0.03
    lowres_prob: float = 0.1
    lowres_zoom: tuple[float, float] = (0.5, 1.0)
    rician_prob: float = 0.05
    rician_std: float = 0.05

    @classmethod
    def none(cls) -> AugmentConfig:
        return cls(**{f.name: 0.0 for f in fields(cls) if f.name.endswith("_prob")})  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> AugmentConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(doc) - names
        if unknown:
            from medattn.errors import ConfigError

            raise ConfigError(f"unknown augmentation option(s) {sorted(unknown)}; known: {sorted(names)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in doc.items()})  # type: ignore[arg-type]


class PlanNormalized(MapTransform):
    """Normalise each image channel with its plan entry (CT clip-and-scale or per-volume z-score).

    MONAI's ``NormalizeIntensityd`` applies one scheme to every channel and ``ScaleIntensityRanged`` one range;
    a plan can mix CT and MR channels and needs each channel's own statistics, hence this small transform.
    """

    def __init__(self, keys: Any, channels: Sequence[ChannelNorm]) -> None:
        super().__init__(keys)
        self.channels = tuple(channels)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            if img.shape[0] != len(self.channels):
                from medattn.errors import DataError

                raise DataError(
                    f"image has {img.shape[0]} channels, the plan expects {len(self.channels)} "
                    f"({[c.name for c in self.channels]})",
                    _source_of(img),
                )
            out = img.clone() if isinstance(img, torch.Tensor) else torch.as_tensor(np.array(img))
            for c, norm in enumerate(self.channels):
                out[c] = normalise_channel(out[c], norm)
            d[key] = out
        return d


class BodyMaskd(MapTransform):
    """Store under ``body_key`` the union of the channels' bodies of ``keys`` (C, X, Y, Z): bool tensor (1, X, Y, Z).

    The crop reads this mask (``CropForegroundd(source_key=body_key)``), so its box comes from the image as resampled,
    before normalisation changes the values, by the rule normalisation uses (:mod:`medattn.data.body`).
    """

    def __init__(self, keys: Any, body_key: str = BODY) -> None:
        super().__init__(keys)
        self.body_key = body_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.body_key] = union_body_mask(d[key])[None]
        return d


class ReplaceNonFinited(MapTransform):
    """Replace NaN and Inf voxels of each channel by that channel's lowest finite value (0 when it has none).

    The lowest value is what a scanner writes outside the body, so a replaced voxel reads as background rather
    than as a bright spot. Used only when a user asks for it (``medattn predict --replace-nonfinite``); by default
    the input gate refuses such a case, because one NaN turns a per-volume z-score into NaN everywhere.
    """

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            bad = ~torch.isfinite(torch.as_tensor(img))
            if not bool(bad.any()):
                continue
            out = img.clone() if isinstance(img, torch.Tensor) else torch.as_tensor(np.array(img))
            for c in range(out.shape[0]):
                finite = out[c][~bad[c]]
                out[c][bad[c]] = finite.min() if finite.numel() else 0.0
            d[key] = out
        return d


def normalise_channel(x: torch.Tensor, norm: ChannelNorm) -> torch.Tensor:
    """One channel, tensor (X, Y, Z) of any real dtype: the plan's normalisation (see :class:`ChannelNorm`), float32.

    ``"ct"``: clip, then shift and scale by the dataset statistics. ``"zscore"``: ``(x - mean) / std`` over the
    volume, or with ``use_body_mask`` over the channel's body (:func:`medattn.data.body.body_mask`: the voxels that
    differ from the dominant border value, else the whole volume), with the voxels outside it set to 0. The body
    rule depends only on which voxels are equal, so a constant background offset or a rescale ``a * x + b``
    (``a > 0``) gives the same output, where a non-zero rule z-scored an offset background's whole volume.
    """
    x = x.float()
    if norm.scheme == "ct":
        return (x.clamp(norm.clip_low, norm.clip_high) - norm.mean) / norm.std
    if norm.use_body_mask:
        body = body_mask(x)
        vals = x[body]
        out = torch.zeros_like(x)
        out[body] = (vals - vals.mean()) / torch.clamp(vals.std(unbiased=False), min=1e-8)
        return out
    mean, std = x.mean(), x.std(unbiased=False)
    return (x - mean) / torch.clamp(std, min=1e-8)


def _source_of(img: Any) -> str | None:
    meta = getattr(img, "meta", None)
    if meta is not None:
        src = meta.get("filename_or_obj")
        return str(src) if src is not None else None
    return None


def _load(keys: Sequence[str]) -> list[Any]:
    with quiet_default_readers():
        load = LoadImaged(
            keys=list(keys),
            reader=make_readers(),  # type: ignore[arg-type]  # MONAI accepts a list of reader instances
            image_only=True,
            dtype=np.float32,
        )
    only_our_readers(load._loader)  # LoadImaged keeps its LoadImage there (MONAI 1.x); see only_our_readers
    return [load, EnsureChannelFirstd(keys=list(keys))]


def label_mapping(plan: Plan) -> tuple[list[int], list[int]] | None:
    """(label values on disk, class indices) when the plan's labels are not already 0..K-1."""
    values = sorted(int(v) for v in plan.labels)
    if values == list(range(len(values))):
        return None
    return values, list(range(len(values)))


def preprocess_transforms(plan: Plan, with_label: bool = True, replace_nonfinite: bool = False) -> list[Any]:
    """The deterministic steps shared by every pipeline (see the module docstring).

    ``replace_nonfinite`` replaces NaN/Inf image voxels right after loading (before resampling spreads them), by
    the lowest finite value of their channel (:class:`ReplaceNonFinited`).
    """
    keys = [IMAGE, LABEL] if with_label else [IMAGE]
    modes = ("bilinear", "nearest") if with_label else ("bilinear",)
    steps: list[Any] = [
        *_load(keys),
        *([ReplaceNonFinited(keys=IMAGE)] if replace_nonfinite else []),
        Orientationd(keys=keys, axcodes="RAS", labels=None),
        Spacingd(keys=keys, pixdim=plan.target_spacing, mode=modes),
    ]
    mapping = label_mapping(plan)
    if with_label and mapping is not None:
        steps.append(MapLabelValued(keys=LABEL, orig_labels=mapping[0], target_labels=mapping[1], dtype=np.float32))
    if plan.crop_foreground:  # the body of the resampled image, before normalisation changes its values
        steps.append(BodyMaskd(keys=IMAGE, body_key=BODY))
    steps.append(PlanNormalized(keys=IMAGE, channels=plan.channels))
    if plan.crop_foreground:
        steps.append(CropForegroundd(keys=keys, source_key=BODY, select_fn=_selected, allow_smaller=True))
        steps.append(DeleteItemsd(keys=BODY))
    steps.append(EnsureTyped(keys=keys, dtype=torch.float32, track_meta=True))
    return steps


def _selected(mask: Any) -> Any:
    return mask.bool()


def augment_transforms(plan: Plan, aug: AugmentConfig) -> list[Any]:
    """Random augmentations applied to patches (image and label together for spatial ones)."""
    keys = [IMAGE, LABEL]
    t: list[Any] = []
    if aug.rotate_prob > 0 or aug.scale_prob > 0:
        rad = math.radians(aug.rotate_deg)
        rot = [rad, rad, rad]
        if plan.anisotropic:  # rotate in-plane only: about the coarse axis
            coarse = int(np.argmax(plan.target_spacing))
            rot = [rad if i == coarse else 0.0 for i in range(3)]
        lo, hi = aug.scale_range
        t.append(
            RandAffined(
                keys=keys,
                prob=max(aug.rotate_prob, aug.scale_prob),
                rotate_range=rot,
                scale_range=[(lo - 1.0, hi - 1.0)] * 3,
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            )
        )
    if aug.flip_prob > 0:
        t.extend(RandFlipd(keys=keys, prob=aug.flip_prob, spatial_axis=ax) for ax in range(3))
    # Scanner-style artefacts (image only).
    if aug.lowres_prob > 0:
        t.append(RandSimulateLowResolutiond(keys=IMAGE, prob=aug.lowres_prob, zoom_range=aug.lowres_zoom))
    if aug.bias_field_prob > 0:
        t.append(RandBiasFieldd(keys=IMAGE, prob=aug.bias_field_prob, coeff_range=aug.bias_coeff))
    if aug.gibbs_prob > 0:
        t.append(RandGibbsNoised(keys=IMAGE, prob=aug.gibbs_prob, alpha=aug.gibbs_alpha))
    if aug.spike_prob > 0:
        t.append(RandKSpaceSpikeNoised(keys=IMAGE, prob=aug.spike_prob))
    if aug.rician_prob > 0:
        t.append(
            RandRicianNoised(keys=IMAGE, prob=aug.rician_prob, std=aug.rician_std, relative=True, channel_wise=True)
        )
    if aug.gamma_prob > 0:
        t.append(RandAdjustContrastd(keys=IMAGE, prob=aug.gamma_prob, gamma=aug.gamma_range))
    # Generic intensity augmentation.
    if aug.noise_prob > 0:
        t.append(RandGaussianNoised(keys=IMAGE, prob=aug.noise_prob, std=0.1))
    if aug.blur_prob > 0:
        t.append(
            RandGaussianSmoothd(
                keys=IMAGE, prob=aug.blur_prob, sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0)
            )
        )
    if aug.intensity_scale_prob > 0:
        t.append(RandScaleIntensityd(keys=IMAGE, prob=aug.intensity_scale_prob, factors=0.25))
    if aug.intensity_shift_prob > 0:
        t.append(RandShiftIntensityd(keys=IMAGE, prob=aug.intensity_shift_prob, offsets=0.1))
    return t


def train_transforms(plan: Plan, augment: AugmentConfig | None = None, samples_per_volume: int = 2) -> Compose:
    """Preprocess, pad to the patch, sample ``samples_per_volume`` patches with the plan's foreground ratio, augment.

    Each output item is a dict with ``image`` (C, *patch) and ``label`` (1, *patch).
    """
    aug = AugmentConfig() if augment is None else augment
    keys = [IMAGE, LABEL]
    pos = plan.foreground_ratio
    steps = [
        *preprocess_transforms(plan, with_label=True),
        SpatialPadd(keys=keys, spatial_size=plan.patch_size, mode="constant"),
        RandCropByPosNegLabeld(
            keys=keys,
            label_key=LABEL,
            spatial_size=plan.patch_size,
            pos=pos,
            neg=1.0 - pos,
            num_samples=samples_per_volume,
            image_key=None,
            allow_smaller=False,
        ),
        *augment_transforms(plan, aug),
        EnsureTyped(keys=keys, dtype=torch.float32, track_meta=False),
    ]
    return Compose(steps)


def eval_transforms(plan: Plan) -> Compose:
    """Whole preprocessed volumes with labels (validation by sliding window)."""
    return Compose(preprocess_transforms(plan, with_label=True))


def inference_transforms(plan: Plan, replace_nonfinite: bool = False) -> Compose:
    """Whole preprocessed image volumes, invertible back to the input grid with :func:`invert_to_input`.

    ``replace_nonfinite``: see :func:`preprocess_transforms` (``medattn predict --replace-nonfinite``).
    """
    return Compose(preprocess_transforms(plan, with_label=False, replace_nonfinite=replace_nonfinite))


def invert_to_input(pred: torch.Tensor, data: Mapping[str, Any], transform: Compose, nearest: bool = True) -> Any:
    """Map a prediction made on ``data[IMAGE]``'s preprocessed grid back to the input file's grid.

    Args:
        pred: (C, X, Y, Z) tensor on the preprocessed grid (labels or probabilities).
        data: the dict the inference transform returned (its ``image`` carries the applied-transform trace).
        transform: the inference Compose that produced ``data``.
        nearest: nearest-neighbour resampling (for labels); False interpolates (for probabilities).

    Returns:
        MetaTensor (C, *input spatial shape) whose ``affine`` equals the input file's affine.
    """
    image = data[IMAGE]
    pred_mt = MetaTensor(pred, meta=dict(image.meta)) if not isinstance(pred, MetaTensor) else pred
    inv = Invertd(keys="pred", transform=transform, orig_keys=IMAGE, nearest_interp=nearest, to_tensor=True)
    out = inv({"pred": pred_mt, IMAGE: image})
    return out["pred"]


def make_dataset(
    data: Sequence[Mapping[str, Any]],
    transform: Compose,
    cache: str = "memory",
    cache_dir: str | Path | None = None,
    num_workers: int = 0,
    progress: bool = False,
) -> Dataset:
    """A MONAI dataset that caches the deterministic preprocessing.

    Args:
        data: MONAI-style dicts (``image`` path or list of channel paths, ``label`` path).
        transform: a pipeline from this module.
        cache: ``"memory"`` (``CacheDataset``), ``"disk"`` (``PersistentDataset`` in ``cache_dir``) or ``"none"``.
        cache_dir: folder for ``"disk"``.
        num_workers: threads used to fill the memory cache.
    """
    items = [dict(d) for d in data]
    for d in items:
        if isinstance(d.get(IMAGE), (list, tuple)) and len(d[IMAGE]) == 1:
            d[IMAGE] = d[IMAGE][0]
    if cache == "memory":
        return CacheDataset(items, transform, num_workers=num_workers or None, progress=progress)
    if cache == "disk":
        if cache_dir is None:
            from medattn.errors import ConfigError

            raise ConfigError("cache='disk' needs a cache_dir")
        return PersistentDataset(items, transform, cache_dir=str(cache_dir), hash_func=_file_state_key)
    if cache == "none":
        return Dataset(items, transform)
    from medattn.errors import ConfigError

    raise ConfigError(f"cache must be 'memory', 'disk' or 'none', not {cache!r}")


def _file_state_key(item: Mapping[str, Any]) -> bytes:
    """The disk cache's key of an item: MONAI's hash of the item (its paths) and of each file's size and
    modification time. MONAI keys on the paths alone, so a file edited or replaced in place (a label corrected,
    then ``adapt --resume`` or a re-run into the same folder) would be read back stale from the cache."""
    from monai.data.utils import pickle_hashing

    stats: list[tuple[str, int | None, int | None]] = []
    for key in (IMAGE, LABEL):
        value = item.get(key)
        for path in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(path, (str, Path)):
                try:
                    st = Path(path).stat()
                    stats.append((str(path), st.st_size, st.st_mtime_ns))
                except OSError:
                    stats.append((str(path), None, None))
    return pickle_hashing({**dict(item), "_file_state": stats})


def apply(transform: Compose, data: Mapping[str, Any]) -> Any:
    """Run a pipeline on one item, turning MONAI's wrapped errors into a DataError that names the input file.

    MONAI re-raises any failure inside a Compose as ``RuntimeError("applying transform <...>")``, which hides the
    cause; users need the file and the reason.
    """
    from medattn.errors import DataError, MedattnError

    try:
        return transform(dict(data))
    except Exception as e:
        cause: BaseException = e
        while cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, MedattnError):
            if isinstance(cause, DataError) and cause.path is None:
                raise DataError(cause.problem, _first_path(data), cause.case) from e
            raise cause from e
        raise DataError(f"preprocessing failed ({type(cause).__name__}: {cause})", _first_path(data)) from e


def _first_path(data: Mapping[str, Any]) -> str | None:
    img = data.get(IMAGE)
    if isinstance(img, (list, tuple)):
        img = img[0] if img else None
    return str(img) if isinstance(img, (str, Path)) else None
