"""Per-volume drift features, captured in the same forward pass as sliding-window inference.

:class:`FeatureCollector` wraps the network handed to :func:`~medattn.infer.sliding.sliding_window_predict`: for
every window it records the bottleneck activations (a forward hook, averaged over the window's voxels) and the
mean softmax entropy of the window's logits. A volume's model features are the averages over its windows, so no
second pass over the volume is needed.

Three further groups come from what the pass already has:

* **image statistics** of the raw input (before normalisation): intensity quantiles inside the body, and a noise
  estimate relative to the body's intensity spread (median absolute deviation of the 3D Laplacian);
* **prediction statistics**: the mean softmax entropy and the predicted volume per class in mm³;
* **foreground entropy** (not a test feature: the labelling ranking's uncertainty, :mod:`medattn.drift.ranking`):
  the softmax entropy weighted by the foreground probability, :meth:`FeatureCollector.volume_features`;
* **header metadata**: spacing, shape, orientation and acquisition metadata from the manifest (manufacturer,
  model, field strength). Metadata are reported, not tested: a change of manufacturer is a fact, not a p-value.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from medattn.dice import defined_mean, dice_per_class

log = logging.getLogger(__name__)

IMAGE_QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
#: Acquisition metadata keys reported per volume when the manifest has them.
METADATA_KEYS = ("Manufacturer", "ManufacturersModelName", "MagneticFieldStrength", "InstitutionName", "institution")


def bottleneck_module(model: nn.Module) -> nn.Module:
    """The module whose output is the network's coarsest feature map.

    For :class:`~medattn.models.unet.AttentionGatedUNet` that is the last encoder stage (after its attention
    block); for other networks the last child named like a bottleneck, else the deepest encoder-like child.
    """
    enc_att = getattr(model, "encoder_attention", None)
    if isinstance(enc_att, nn.ModuleList) and len(enc_att):
        return enc_att[-1]
    for name in ("bottleneck", "bottom", "middle"):
        mod = getattr(model, name, None)
        if isinstance(mod, nn.Module):
            return mod
    inner = getattr(model, "net", None) or getattr(model, "model", None)
    if isinstance(inner, nn.Module) and inner is not model:
        return bottleneck_module(inner)
    raise ValueError(f"cannot find the bottleneck of {type(model).__name__}; drift features need one")


class FeatureCollector:
    """A network wrapper that records pooled bottleneck features and softmax entropy of every window it sees.

    Call :meth:`reset` before a volume and :meth:`volume_features` after it. The wrapped network is called
    unchanged; the hook only reads the activations. Per window it keeps a few numbers (the pooled features, the mean
    entropy, two sums for the foreground entropy), never a probability map, so the memory does not grow with the
    volume.

    Example::

        collector = FeatureCollector(model)
        collector.reset()
        result = sliding_window_predict(image, collector, window)
        feats = collector.volume_features()
        # {"bottleneck": (C,), "entropy": float, "foreground_entropy": float, "windows": int}
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._module = bottleneck_module(model)
        self._pooled: list[torch.Tensor] = []
        self._entropy: list[torch.Tensor] = []
        self._fg_entropy_sum = 0.0  # sum over window voxels of (1 - p_background) x entropy
        self._fg_weight_sum = 0.0  # sum over window voxels of (1 - p_background)

    def reset(self) -> None:
        self._pooled.clear()
        self._entropy.clear()
        self._fg_entropy_sum = 0.0
        self._fg_weight_sum = 0.0

    def _hook(self, _module: nn.Module, _inputs: Any, output: Any) -> None:
        out = output[0] if isinstance(output, (list, tuple)) else output
        self._pooled.append(out.detach().float().mean(dim=tuple(range(2, out.ndim))).cpu())

    def __call__(self, x: torch.Tensor) -> Any:
        handle = self._module.register_forward_hook(self._hook)
        try:
            out = self.model(x)
        finally:
            handle.remove()
        logits = out[0] if isinstance(out, (list, tuple)) else out
        p = torch.softmax(logits.detach().float(), dim=1)
        ent = -(p * torch.log(p.clamp_min(1e-12))).sum(dim=1)  # (B, *window)
        self._entropy.append(ent.mean(dim=tuple(range(1, ent.ndim))).cpu())
        fg = 1.0 - p[:, 0]  # (B, *window): probability of any foreground class
        self._fg_entropy_sum += float((fg.double() * ent.double()).sum())
        self._fg_weight_sum += float(fg.double().sum())
        return out

    def volume_features(self) -> dict[str, Any]:
        """Averages over the windows seen since :meth:`reset` (mirrored passes count as windows too).

        Returns:
            ``bottleneck``: (C,) float64, the window means of the bottleneck activations, averaged over windows;
            ``entropy``: the mean softmax entropy (nats) over every window voxel;
            ``foreground_entropy``: the softmax entropy (nats) averaged over window voxels weighted by their
            foreground probability ``1 - p_background``, i.e. ``sum w H / sum w`` pooled over every window (a voxel
            in k overlapping windows counts k times, with each window's own softmax, not the blended one; voxels of
            a window's zero padding count too). It measures the uncertainty where the model sees (or half sees)
            structure, which the volume mean dilutes with confident background; NaN when no voxel has any
            foreground probability (float32 saturation);
            ``windows``: windows seen.
        """
        if not self._pooled:
            raise RuntimeError("no window was seen; call the collector through sliding_window_predict first")
        pooled = torch.cat(self._pooled).mean(dim=0).numpy().astype(np.float64)
        entropy = float(torch.cat(self._entropy).mean())
        fg_entropy = self._fg_entropy_sum / self._fg_weight_sum if self._fg_weight_sum > 0 else float("nan")
        return {
            "bottleneck": pooled,
            "entropy": entropy,
            "foreground_entropy": fg_entropy,
            "windows": sum(len(t) for t in self._entropy),
        }


def body_mask(image: np.ndarray) -> np.ndarray:
    """Voxels inside the body: above the Otsu threshold of the volume, or non-zero when that is empty."""
    from skimage.filters import threshold_otsu

    finite = image[np.isfinite(image)]
    if finite.size == 0 or finite.min() == finite.max():
        return np.ones(image.shape, bool)
    mask = image > threshold_otsu(finite)
    return mask if mask.sum() >= 0.01 * image.size else image != 0


def image_statistics(image: np.ndarray) -> dict[str, float]:
    """Raw-intensity statistics of one channel (X, Y, Z): body quantiles, relative noise, body fraction.

    The noise estimate is the median absolute deviation of the 6-neighbour Laplacian inside the body, scaled to a
    standard deviation for white Gaussian noise (divide by sqrt(42), the kernel's norm) and then by the volume's
    dynamic range (99th minus 1st percentile), so it is comparable across intensity encodings.
    """
    img = np.asarray(image, dtype=np.float32)
    mask = body_mask(img)
    vals = img[mask]
    q = np.quantile(vals, IMAGE_QUANTILES) if vals.size else np.full(len(IMAGE_QUANTILES), np.nan)
    lo, hi = np.quantile(img[np.isfinite(img)], [0.01, 0.99]) if np.isfinite(img).any() else (0.0, 0.0)
    span = float(hi - lo)
    lap = ndimage.laplace(img, mode="nearest")[mask]
    mad = float(np.median(np.abs(lap - np.median(lap)))) if lap.size else float("nan")
    sigma = 1.4826 * mad / np.sqrt(42.0)
    stats = {f"q{round(p * 100):02d}": float(v) for p, v in zip(IMAGE_QUANTILES, q, strict=True)}
    stats["noise_rel"] = float(sigma / span) if span > 0 else float("nan")
    stats["body_fraction"] = float(mask.mean())
    return stats


@dataclass
class VolumeFeatures:
    """Everything recorded for one volume.

    Attributes:
        case_id, domain: identification.
        model: bottleneck features (C,) float64.
        prediction: mean softmax entropy and predicted volume per foreground class in mm³.
        image: raw-intensity statistics of the first channel (see :func:`image_statistics`).
        metadata: spacing (mm, as stored), shape, orientation code, and acquisition metadata when known.
        dice: per foreground class Dice against the label on the preprocessed grid, when a label exists
            (:func:`class_dice`: NaN where the class is absent from both prediction and label).
        extra: further facts, not features.
        source: the image file read (the first channel's), when known.
        foreground_entropy: foreground-weighted softmax entropy in nats (see
            :meth:`FeatureCollector.volume_features`); NaN when unknown (features read from an older cache).
    """

    case_id: str
    domain: str | None
    model: np.ndarray
    prediction: dict[str, float]
    image: dict[str, float]
    metadata: dict[str, Any]
    dice: dict[str, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    source: str | None = None
    foreground_entropy: float = float("nan")

    @property
    def mean_dice(self) -> float | None:
        """Mean foreground Dice of this volume over the classes where it is defined; None without a label, or when
        every class is absent from both prediction and label (then it is left out of set means, see
        :func:`mean_dice`, and counted by :func:`count_undefined_dice`)."""
        if not self.dice:
            return None
        mean, _ = defined_mean(list(self.dice.values()))
        return None if np.isnan(mean) else mean

    def vector(self, groups: Sequence[str] = ("model", "prediction")) -> np.ndarray:
        """The numeric feature vector of the chosen groups (``model``, ``prediction``, ``image``)."""
        parts: list[np.ndarray] = []
        for g in groups:
            if g == "model":
                parts.append(self.model)
            elif g == "prediction":
                parts.append(np.array([self.prediction[k] for k in sorted(self.prediction)], dtype=np.float64))
            elif g == "image":
                parts.append(np.array([self.image[k] for k in sorted(self.image)], dtype=np.float64))
            else:
                raise ValueError(f"unknown feature group {g!r}; use model, prediction or image")
        return np.concatenate(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "case_id": self.case_id,
            "domain": self.domain,
            "prediction": self.prediction,
            "image": self.image,
            "metadata": self.metadata,
            "dice": None if self.dice is None else {k: None if np.isnan(v) else v for k, v in self.dice.items()},
            "source": self.source,
            "foreground_entropy": None if np.isnan(self.foreground_entropy) else self.foreground_entropy,
            "model_features": self.model.tolist(),
        }


def prediction_statistics(
    labels: np.ndarray, entropy: float, spacing: Sequence[float], class_names: Mapping[int, str]
) -> dict[str, float]:
    """Mean entropy and predicted volume (mm³) per foreground class from class-index labels (X, Y, Z)."""
    voxel = float(np.prod(spacing))
    counts = np.bincount(labels.ravel().astype(np.int64), minlength=max(class_names) + 1 if class_names else 1)
    stats = {"entropy": float(entropy)}
    for k, name in class_names.items():
        if k == 0:
            continue
        stats[f"volume_{name}"] = float(counts[k] * voxel) if k < len(counts) else 0.0
    return stats


def class_dice(pred: np.ndarray, label: np.ndarray, class_names: Mapping[int, str]) -> dict[str, float]:
    """Class name -> Dice of each foreground class of class-index maps (X, Y, Z), by
    :func:`medattn.dice.dice_per_class`: NaN where the class is absent from both prediction and label."""
    fg = {k: name for k, name in class_names.items() if k != 0}
    return {name: float(d) for name, d in zip(fg.values(), dice_per_class(pred, label, list(fg)), strict=True)}


def header_metadata(meta: Mapping[str, Any], case_metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """Spacing, shape and orientation from a MONAI image's metadata, plus acquisition metadata from the manifest."""
    import nibabel as nib

    affine = np.asarray(meta.get("original_affine", meta.get("affine", np.eye(4))), dtype=float)
    shape = [int(s) for s in np.asarray(meta.get("spatial_shape", []))]
    out: dict[str, Any] = {
        "spacing": [round(float(s), 4) for s in np.linalg.norm(affine[:3, :3], axis=0)],
        "shape": shape,
        "orientation": "".join(nib.orientations.aff2axcodes(affine)),
    }
    found = dict(_series_metadata(meta.get("filename_or_obj")))
    found.update(case_metadata or {})
    for k in METADATA_KEYS:
        if k in found:
            out[k] = found[k]
    return out


def _series_metadata(source: Any) -> Mapping[str, Any]:
    """The acquisition attributes of a DICOM series folder's headers (:mod:`medattn.data.dicom`); {} for a file."""
    from pathlib import Path

    if not isinstance(source, str) or not Path(source).is_dir():
        return {}
    from medattn.data.io import series_info

    return series_info(source).metadata


def mean_dice(features: Sequence[VolumeFeatures]) -> float | None:
    """Mean over volumes of each volume's mean foreground Dice; None when no volume has a defined one (volumes
    without a label, or with every class absent from both prediction and label, are left out)."""
    vals = [f.mean_dice for f in features if f.mean_dice is not None]
    return float(np.mean(vals)) if vals else None


def count_undefined_dice(features: Sequence[VolumeFeatures]) -> int:
    """Volumes with a label whose mean Dice is undefined (every class absent from both prediction and label)."""
    return sum(1 for f in features if f.dice is not None and f.mean_dice is None)
