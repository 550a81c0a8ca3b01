"""Voxel-wise uncertainty of a prediction (``medattn predict --save-uncertainty``): where to look first.

Two maps, both in [0, 1], computed on the preprocessed grid and written on the input's grid like the probability
maps (linear interpolation, ``OUTPUT/uncertainty/``):

* **entropy**: the softmax entropy of the predicted probabilities divided by log K (1: every class equally
  likely, 0: certain). With ``--tta`` these are the probabilities of the averaged logits, the ones the mask comes
  from.
* **disagreement** (with ``--tta`` only): the share of the single passes (the image as it is and each mirrored
  copy, every pass un-mirrored) whose label differs from the mask's. The TTA mask averages the passes' logits
  and hides where they disagree; this shows it. It runs every pass a second time, one by one (the TTA pass
  averages them window by window and keeps none), so ``--save-uncertainty`` with ``--tta`` about doubles the
  inference time.

The per-case summary in ``predictions.json`` (:func:`summarise`) is what ranks cases for checking: the mean entropy
over the predicted foreground, the number of voxels whose entropy is at least :data:`UNCERTAIN` and that number
against the foreground's size (a thin structure with a blurred border scores high), and with TTA the mean
disagreement over the foreground. ``predictions.json`` lists the cases by foreground entropy, highest first.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch

from medattn.infer.windows import mirror_combinations

#: Normalised entropy from which a voxel counts as uncertain (two classes at about 89% / 11%).
UNCERTAIN = 0.5
UNCERTAINTY_DIR = "uncertainty"


def entropy_map(probabilities: torch.Tensor) -> torch.Tensor:
    """Softmax entropy / log K of ``probabilities`` (K, X, Y, Z): (1, X, Y, Z) float32 in [0, 1]."""
    p = probabilities.float().clamp_min(1e-12)
    k = int(p.shape[0])
    return (-(p * p.log()).sum(0, keepdim=True) / math.log(k)).clamp(0.0, 1.0)


def disagreement_map(image: torch.Tensor, predictor: Any, labels: torch.Tensor) -> torch.Tensor:
    """Share of the single mirrored passes of ``predictor`` (its ``mirror_axes``) whose labels differ from
    ``labels`` (X, Y, Z): (1, X, Y, Z) float32. ``image`` is (C, X, Y, Z), as the predictor takes it."""
    flips = [(), *mirror_combinations(predictor.mirror_axes)]
    single = copy.copy(predictor)
    single.mirror_axes = ()
    differ = torch.zeros(labels.shape, dtype=torch.int16)
    target = labels.cpu()
    for axes in flips:
        dims = [a + 1 for a in axes]
        x = torch.flip(image, dims) if dims else image
        got = single(x).labels.cpu()
        if axes:
            got = torch.flip(got, list(axes))
        differ += (got != target).to(torch.int16)
    return (differ.float() / len(flips))[None]


def summarise(maps: dict[str, np.ndarray], foreground: np.ndarray) -> dict[str, Any]:
    """The per-case summary (see the module docstring) from the maps on the input grid and the predicted
    foreground (boolean, same grid)."""
    entropy = maps["entropy"]
    n_fg = int(foreground.sum())
    uncertain = int((entropy >= UNCERTAIN).sum())
    out: dict[str, Any] = {
        "foreground_voxels": n_fg,
        "entropy_mean_foreground": round(float(entropy[foreground].mean()), 5) if n_fg else None,
        "entropy_max": round(float(entropy.max()), 5),
        "uncertain_voxels": uncertain,
        "uncertain_per_foreground_voxel": round(uncertain / n_fg, 5) if n_fg else None,
    }
    if "disagreement" in maps:
        d = maps["disagreement"]
        out["disagreement_mean_foreground"] = round(float(d[foreground].mean()), 5) if n_fg else None
        out["disagreeing_voxels"] = int((d > 0).sum())
    return out


def check_first(cases: list[dict[str, Any]]) -> list[str]:
    """Case ids with an uncertainty summary, by foreground entropy (highest first; no foreground last)."""
    scored = [c for c in cases if c.get("uncertainty")]
    return [
        c["case"]
        for c in sorted(
            scored,
            key=lambda c: (
                -1.0
                if c["uncertainty"]["entropy_mean_foreground"] is None
                else c["uncertainty"]["entropy_mean_foreground"]
            ),
            reverse=True,
        )
    ]
