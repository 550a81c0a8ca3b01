"""The body of a volume: the voxels that differ from its background, one rule for every user of "inside the body".

Three places need the body, and all three call :func:`body_mask` (one channel) or :func:`union_body_mask`
(several channels):

* the per-volume z-score inside the body (:func:`medattn.data.transforms.normalise_channel`, through
  ``PlanNormalized``), per channel: voxels outside a channel's body become 0;
* the crop to the body (``preprocess_transforms``), on the union of the channels' bodies, since one crop box has to
  serve every channel;
* the planner's fingerprint (:func:`medattn.data.fingerprint.fingerprint_case`), whose body bounding-box fraction
  decides ``crop_foreground`` and ``use_body_mask``, on the same union.

The rule:

1. The *background* is the volume's dominant border value: the most frequent value among the voxels of its six outer
   faces (the border shell), provided at least :data:`BORDER_MAJORITY` (half) of the border voxels lie within the
   tolerance of it. The tolerance (:func:`background_value`) is a millionth of the volume's value range, or
   :data:`FLOAT_STEPS` float steps of the value when that is larger: it absorbs the last-bit rounding that a
   float32 resampling leaves on a constant, and it is far below one step of any integer encoding, so integer data
   are compared exactly in effect.
2. The *body* is every voxel farther than the tolerance from the background.
3. When no value dominates the border (noisy MR whose background is noise, a tight crop whose tissue reaches the
   faces), or the rule leaves no voxel (a constant volume), the body is the whole volume.

Why: the number a background is stored as is a choice of the scanner, the converter or an earlier
pre-normalisation step (0, -3.6 after a z-score, an offset added to a float32 volume, -1024 padding), while the
fact that one value fills the field of view's border is not. A "non-zero" body depends on that number: a
skull-stripped brain stored with a background of -3.6 had the whole volume as its body, so it was z-scored over
mostly air and never cropped, and a FLAIR model lost about half its Dice on such a site. The border rule depends
only on which voxels are equal, so a constant background offset or a rescale ``a * x + b`` (``a > 0``) leaves the
body unchanged (up to float32 rounding, which the tolerance covers). The whole-volume fallback is equally
unchanged by such a rescale, where a non-zero fallback would not be (a shift changes which voxels are exactly 0).
A dataset that provides brain masks is not read for this: the rule recovers the mask of skull-stripped data.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

#: Fraction of the border voxels that must lie within the tolerance of the most frequent border value for it to
#: be the background. Skull-stripped brains and padded scans fill nearly all their border with one value (BraTS:
#: over 99%); in a noisy background the most frequent value holds a few voxels.
BORDER_MAJORITY = 0.5
#: Tolerance around the background value as a fraction of the volume's value range (max - min): a shift leaves it
#: unchanged and a rescale scales it, as it does the data.
RELATIVE_TOLERANCE = 1e-6
#: ... or this many float steps (machine epsilon of the dtype) of the background value, when that is larger:
#: resampling a constant in float32 can move it by a few such steps.
FLOAT_STEPS = 16


def border_shell(x: torch.Tensor) -> torch.Tensor:
    """The values of the voxels on the six outer faces of ``x`` (X, Y, Z), each voxel once, as a 1-D tensor.

    A volume with an axis of 1 or 2 voxels has no interior: every voxel is on the border.
    """
    inner = torch.ones(x.shape, dtype=torch.bool, device=x.device)
    inner[(slice(1, -1),) * x.ndim] = False
    return x[inner]


def background_value(x: torch.Tensor) -> tuple[float, float] | None:
    """The dominant border value of one channel (X, Y, Z) and its tolerance, or None when no value dominates.

    Both are in the units of ``x``. The tolerance is ``max(RELATIVE_TOLERANCE * (max - min), FLOAT_STEPS * eps *
    |value|)`` with ``eps`` the machine epsilon of ``x``'s float dtype (float64 for integer data); the value
    dominates when at least ``BORDER_MAJORITY`` of the border voxels lie within it (module docstring: why).
    """
    t = _plain(x)
    t = t if t.is_floating_point() else t.double()
    shell = border_shell(t)
    if shell.numel() == 0:
        return None
    values, counts = torch.unique(shell, return_counts=True)
    value = float(values[int(torch.argmax(counts))])
    eps = torch.finfo(t.dtype).eps
    tol = max(RELATIVE_TOLERANCE * float(t.max() - t.min()), FLOAT_STEPS * eps * abs(value))
    if not np.isfinite(value) or not np.isfinite(tol):
        return None
    near = int(((shell - value).abs() <= tol).sum())
    if near < BORDER_MAJORITY * shell.numel():
        return None
    return value, tol


def body_mask(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Boolean (X, Y, Z) mask of the body of one channel ``x`` (X, Y, Z), any real dtype, on ``x``'s device.

    The voxels farther than the tolerance from the dominant border value; the whole volume when no value dominates
    the border or when nothing differs from it (module docstring: the rule and why).

    Example:
        >>> x = torch.full((8, 8, 8), -3.6)
        >>> x[2:6, 2:6, 2:6] = torch.rand(4, 4, 4) + 1.0
        >>> int(body_mask(x).sum())
        64
    """
    t = _as_tensor(x)
    bg = background_value(t)
    if bg is None:
        return torch.ones(t.shape, dtype=torch.bool, device=t.device)
    value, tol = bg
    t = t if t.is_floating_point() else t.double()
    body = (t - value).abs() > tol
    if not bool(body.any()):
        return torch.ones(t.shape, dtype=torch.bool, device=t.device)
    return body


def union_body_mask(channels: torch.Tensor | np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
    """Boolean (X, Y, Z) union of the channels' bodies: ``channels`` is (C, X, Y, Z), or a list of (X, Y, Z) arrays.

    Used for the crop and the fingerprint, where one region has to serve every channel.
    """
    items = list(channels)
    if not items:
        raise ValueError("union_body_mask needs at least one channel")
    out = body_mask(items[0])
    for c in items[1:]:
        out |= body_mask(c)
    return out


def _as_tensor(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """A tensor view of ``x`` (numpy arrays are copied only when not contiguous or not writable)."""
    if isinstance(x, np.ndarray):
        if not (x.flags.c_contiguous and x.flags.writeable):
            x = np.array(x, order="C")
        return torch.from_numpy(x)
    return _plain(x)


def _plain(x: torch.Tensor) -> torch.Tensor:
    """``x`` as a plain tensor (a MONAI MetaTensor would carry its metadata through every operation)."""
    return x.as_subclass(torch.Tensor)
