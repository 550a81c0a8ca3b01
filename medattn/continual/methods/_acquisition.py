"""A new scanner's acquisition, measured on its unlabelled images and imitated on stored labelled patches.

A label-free domain has images and no labels; the replay memory has labels and the old scanners' images. Three
properties of an acquisition can be measured without a label and imitated on a labelled patch, so the model sees the
old anatomy with its ground truth the way the new scanner shows it:

* **resolution**: each unlabelled volume's native voxel size (from its header, on the RAS grid the pipeline uses)
  over the plan spacing, per axis. A thick-slice scan resampled to the plan spacing is blurred along its slices;
  a stored patch is averaged down to that grid (``area`` pooling, a box slice profile) and interpolated back.
* **intensity curve**: the quantiles of the normalised body intensities, pooled over the unlabelled volumes and
  over the stored patches (after the resolution step); a patch's body voxels are mapped through the monotone
  curve that takes the second onto the first (histogram matching, per channel). It carries a contrast compressed or
  bent by another sequence or field strength. Where the model's pseudo-labels came through the inverted contrast
  (:func:`translate` with a decreasing curve, see :mod:`~medattn.continual.methods.selftrain`), the curve is
  decreasing: the patches' darkest body voxels take the target's brightest intensities.
* **noise**: the robust standard deviation of the six-neighbour Laplacian residual inside the body (a MAD
  estimate, scaled so that white noise of standard deviation s gives s), on the unlabelled volumes and on the
  styled patches before noise; white Gaussian noise makes up the difference when the new scanner is noisier.

What it does not imitate: bias fields and artefacts that vary by volume (the augmentation draws those anyway), and
anything a label would be needed to see. MONAI has the generic pieces (``RandSimulateLowResolution``,
``HistogramNormalize``) but not measured, anisotropic, per-scanner versions: its low-resolution simulation zooms all
axes by one random factor and its histogram transform equalises to a uniform distribution, not to another
scanner's intensities.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medattn.data.body import body_mask

#: Quantile levels of the intensity curve (0.5% to 99.5%: the extremes are single voxels).
LEVELS = np.linspace(0.005, 0.995, 100)
#: Voxels sampled per volume or patch for the quantiles and the noise estimate.
SAMPLE = 200_000
#: MAD of a standard normal (the robust standard deviation is MAD / this).
_MAD_NORMAL = 0.6744897501960817
#: A six-neighbour Laplacian residual x - mean(neighbours) of white noise of sd s has sd s * sqrt(7/6).
_RESIDUAL_GAIN = math.sqrt(7.0 / 6.0)


def _plain(x: Any) -> torch.Tensor:
    return torch.as_tensor(x.as_tensor() if hasattr(x, "as_tensor") else x).float()


def _sample(values: torch.Tensor, rng: np.random.Generator) -> np.ndarray:
    v = values.flatten().numpy()
    if v.size > SAMPLE:
        v = v[rng.choice(v.size, SAMPLE, replace=False)]
    return v


def residual_sd(x: torch.Tensor, mask: torch.Tensor) -> float:
    """Robust noise level of one channel (X, Y, Z): the MAD of the six-neighbour Laplacian residual inside ``mask``
    (its interior voxels), as the standard deviation of the white noise that would give it."""
    if min(x.shape) < 3:
        return 0.0
    c = x[1:-1, 1:-1, 1:-1]
    neighbours = (x[2:, 1:-1, 1:-1] + x[:-2, 1:-1, 1:-1] + x[1:-1, 2:, 1:-1] + x[1:-1, :-2, 1:-1]) + (
        x[1:-1, 1:-1, 2:] + x[1:-1, 1:-1, :-2]
    )
    r = (c - neighbours / 6.0)[mask[1:-1, 1:-1, 1:-1]]
    if r.numel() < 100:
        return 0.0
    r = r - r.median()
    return float(r.abs().median()) / _MAD_NORMAL / _RESIDUAL_GAIN


def degrade(image: torch.Tensor, factors: Sequence[float]) -> torch.Tensor:
    """``image`` (C, X, Y, Z) averaged down by ``factors`` per axis (area pooling) and interpolated back."""
    shape = image.shape[1:]
    if all(f <= 1.0 + 1e-3 for f in factors):
        return image
    coarse = [max(1, round(s / max(1.0, f))) for s, f in zip(shape, factors)]
    down = F.interpolate(image[None].float(), size=coarse, mode="area")
    return F.interpolate(down, size=tuple(shape), mode="trilinear", align_corners=False)[0]


@dataclass
class Acquisition:
    """What :func:`measure` found: per target volume its resolution factors, per channel the two intensity curves,
    and per channel the noise to add."""

    factors: list[tuple[float, float, float]]
    target_quantiles: np.ndarray  # (C, len(LEVELS))
    source_quantiles: np.ndarray  # (C, len(LEVELS))
    noise: list[float]
    target_noise: list[float]
    source_noise: list[float]
    direction: int = 1  # -1: the curve decreases (an inverted contrast)

    def record(self) -> dict[str, Any]:
        f = np.asarray(self.factors, dtype=float)
        return {
            "resolution_factor_median": [round(float(v), 3) for v in np.median(f, axis=0)],
            "resolution_factor_max": [round(float(v), 3) for v in f.max(axis=0)],
            "target_noise": [round(v, 4) for v in self.target_noise],
            "source_noise": [round(v, 4) for v in self.source_noise],
            "added_noise": [round(v, 4) for v in self.noise],
            "contrast": "inverted" if self.direction < 0 else "kept",
            "target_quartiles": [
                [round(float(q), 3) for q in np.interp([0.25, 0.5, 0.75], LEVELS, t[:: self.direction])]
                for t in self.target_quantiles
            ],
            "source_quartiles": [
                [round(float(q), 3) for q in np.interp([0.25, 0.5, 0.75], LEVELS, s)] for s in self.source_quantiles
            ],
        }


def _match(x: torch.Tensor, source_q: np.ndarray, target_q: np.ndarray) -> torch.Tensor:
    """Map ``x`` through the piecewise-linear curve from source to target quantiles (constant beyond the ends'
    slope: the first and last segments are extended)."""
    src = np.maximum.accumulate(source_q)  # quantiles are monotone; ties from a coarse encoding made strictly so
    src = src + np.arange(src.size) * 1e-6
    xs = x.numpy().astype(np.float64)
    y = np.interp(xs, src, target_q)
    lo_slope = (target_q[1] - target_q[0]) / max(src[1] - src[0], 1e-6)
    hi_slope = (target_q[-1] - target_q[-2]) / max(src[-1] - src[-2], 1e-6)
    y = np.where(xs < src[0], target_q[0] + (xs - src[0]) * lo_slope, y)
    y = np.where(xs > src[-1], target_q[-1] + (xs - src[-1]) * hi_slope, y)
    return torch.from_numpy(y.astype(np.float32))


def body_quantiles(image: torch.Tensor, rng: np.random.Generator) -> np.ndarray:
    """Per channel, the quantiles at :data:`LEVELS` of one volume's body intensities: (C, len(LEVELS))."""
    image = _plain(image)
    return np.stack([np.quantile(_sample(image[c][body_mask(image[c])], rng), LEVELS) for c in range(image.shape[0])])


def translate(image: Any, reference_q: np.ndarray, direction: int, rng: np.random.Generator) -> torch.Tensor:
    """``image`` (C, X, Y, Z) with each channel's body intensities mapped onto ``reference_q`` (C, len(LEVELS)):
    through the curve from the volume's own quantiles to the reference's, increasing (``direction`` 1: histogram
    matching) or decreasing (-1: the volume's brightest voxels take the reference's darkest intensities, which undoes
    a contrast inversion). The background is left as it is."""
    out = _plain(image).clone()
    for c in range(out.shape[0]):
        mask = body_mask(out[c])
        values = out[c][mask]
        own = np.quantile(_sample(values, rng), LEVELS)
        ref = reference_q[c] if direction > 0 else reference_q[c][::-1]
        out[c][mask] = _match(values, own, ref)
    return out


def measure(
    target_volumes: Any,
    target_spacing: Sequence[Sequence[float]],
    plan_spacing: Sequence[float],
    patches: torch.Tensor,
    seed: int = 0,
    direction: int = 1,
) -> Acquisition:
    """Measure the target acquisition (see the module docstring).

    Args:
        target_volumes: the unlabelled volumes (dicts with a preprocessed ``image`` (C, X, Y, Z)).
        target_spacing: each volume's native voxel size on the RAS grid
            (:func:`medattn.data.fingerprint.native_spacing`).
        plan_spacing: the plan's spacing.
        patches: the stored labelled patches, (N, C, X, Y, Z).
        seed: seed of the voxel samples and of the resolution factors drawn for the source curve.
        direction: 1, the intensity curve increases (the patches' darkest voxels stay darkest); -1, it decreases
            (a contrast inversion, when the target's pseudo-labels came through :func:`translate` with -1).
    """
    rng = np.random.default_rng(seed)
    factors = [tuple(max(1.0, float(s) / float(p)) for s, p in zip(sp, plan_spacing)) for sp in target_spacing] or [
        (1.0, 1.0, 1.0)
    ]
    channels = int(patches.shape[1])
    t_vals: list[list[np.ndarray]] = [[] for _ in range(channels)]
    t_noise: list[list[float]] = [[] for _ in range(channels)]
    for i in range(len(target_volumes)):
        image = _plain(target_volumes[i]["image"])
        for c in range(channels):
            mask = body_mask(image[c])
            t_vals[c].append(_sample(image[c][mask], rng))
            t_noise[c].append(residual_sd(image[c], mask))
    styled = [degrade(_plain(p), factors[int(rng.integers(len(factors)))]) for p in patches]
    s_vals: list[list[np.ndarray]] = [[] for _ in range(channels)]
    for p in styled:
        for c in range(channels):
            s_vals[c].append(_sample(p[c][body_mask(p[c])], rng))
    target_q = np.stack([np.quantile(np.concatenate(v), LEVELS) for v in t_vals])
    if direction < 0:
        target_q = target_q[:, ::-1].copy()  # source level l maps to the target's level 1 - l
    source_q = np.stack([np.quantile(np.concatenate(v), LEVELS) for v in s_vals])
    s_noise: list[list[float]] = [[] for _ in range(channels)]
    for p in styled:
        for c in range(channels):
            mask = body_mask(p[c])
            matched = p[c].clone()
            matched[mask] = _match(p[c][mask], source_q[c], target_q[c])
            s_noise[c].append(residual_sd(matched, mask))
    tn = [float(np.median(v)) for v in t_noise]
    sn = [float(np.median(v)) for v in s_noise]
    add = [math.sqrt(max(0.0, t * t - s * s)) for t, s in zip(tn, sn)]
    return Acquisition(factors, target_q, source_q, add, tn, sn, 1 if direction > 0 else -1)  # type: ignore[arg-type]


class TargetStyle:
    """A random transform: a stored patch dict as the measured target scanner would show it (resolution of a
    randomly drawn target volume, intensity curve, noise); the label is left as it is."""

    def __init__(self, acquisition: Acquisition, seed: int = 0) -> None:
        self.acq = acquisition
        self.rng = np.random.default_rng(seed)

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        image = _plain(item["image"])
        f = self.acq.factors[int(self.rng.integers(len(self.acq.factors)))]
        out = degrade(image, f).clone()
        for c in range(out.shape[0]):
            mask = body_mask(out[c])
            ch = out[c]
            ch[mask] = _match(ch[mask], self.acq.source_quantiles[c], self.acq.target_quantiles[c])
            if self.acq.noise[c] > 0:
                noise = torch.from_numpy(self.rng.standard_normal(int(mask.sum())).astype(np.float32))
                ch[mask] = ch[mask] + noise * self.acq.noise[c]
        return {**item, "image": out}
