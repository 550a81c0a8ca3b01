"""Scanner physics as deterministic transforms, and :func:`apply_shift`, which replays a whole drawn shift.

A simulated scanner changes an image the way a different acquisition would: its contrast curve, a smooth
multiplicative bias field, the voxel grid and slice profile, Gibbs ringing, Rician noise, the stored intensity
encoding and the stored axis order. Each step here is a pure function of explicit parameters; the random draw of
those parameters is :class:`medattn.data.scanners.ScannerProfile`'s (following TorchIO's ``RandomGamma.get_params``
feeding ``Gamma``), so a shift can be saved beside its output, replayed exactly and compared across domains.

Conventions: images are numpy arrays indexed (X, Y, Z) or (X, Y, Z, C) channel-last, as :func:`medattn.data.io.
read_volume` returns them; ``affine`` maps voxel indices to RAS world coordinates in mm; labels are integer arrays
(X, Y, Z) on the image's grid. Intensity steps work on the image normalised by its ``window`` (``lo`` -> 0,
``hi`` -> 1), so noise levels and curves mean the same for every source encoding.

Example::

    params = json.loads(Path("OUT/B/params/B_000.json").read_text())["shift"]
    image, label, affine = apply_shift(source_image, source_label, source_affine, params)  # the stored case again
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import numpy as np
from scipy import ndimage

from medattn.data.io import spacing_from_affine
from medattn.typing import Range, Triple

#: Version of the parameter dict written by :meth:`~medattn.data.scanners.ScannerProfile.get_params`;
#: :func:`apply_shift` checks it.
SHIFT_FORMAT = 1
#: MONAI Orientation axis labels for RAS world coordinates (passed explicitly: MONAI 1.6 warns on the default).
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))
_FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


def intensity_window(image: np.ndarray, percentiles: Range = (0.5, 99.5)) -> tuple[float, float]:
    """Robust intensity range (lo, hi) of one channel; hi > lo even for a constant image."""
    lo, hi = (float(v) for v in np.percentile(np.asarray(image, dtype=np.float64), percentiles))
    return lo, hi if hi > lo else lo + 1.0


def contrast_curve(
    x: np.ndarray, gamma: float, knots: Sequence[float], positions: Sequence[float] | None = None
) -> np.ndarray:
    """Map a normalised image through ``t ** gamma`` and then a piecewise-linear curve.

    ``knots`` are the curve's values at ``positions`` (increasing from 0 to 1; default equally spaced); ``(0, 1)``
    is the identity and a decreasing sequence after the first knot inverts tissue contrast while air stays dark
    (real T1 -> T2 contrast is not monotonic: air and CSF are both dark in T1, only CSF is bright in T2). Input is
    clipped to
    [0, 1] (what lies outside the window saturates). MONAI's ``AdjustContrast`` is not used: it normalises by each
    image's own min and max, so the curve would depend on outliers and the grid rather than on explicit parameters.

    Args:
        x: float array, any shape, intensities normalised to the window (0 = ``lo``, 1 = ``hi``).
        gamma: exponent > 0.
        knots: at least two curve values.
        positions: where the knots sit on [0, 1], as many as ``knots``.

    Returns:
        float32 array of the same shape.
    """
    xp = np.linspace(0.0, 1.0, len(knots)) if positions is None else np.asarray(positions, dtype=np.float64)
    if xp.shape != (len(knots),) or np.any(np.diff(xp) <= 0):
        raise ValueError(f"knot positions {list(xp)} must increase and match the {len(knots)} knots")
    t = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0) ** float(gamma)
    return np.interp(t, xp, np.asarray(knots, dtype=np.float64)).astype(np.float32)


def legendre_exponents(degree: int) -> list[Triple]:
    """Exponents (i, j, k), i + j + k <= degree, in MONAI ``RandBiasField``'s order (constant term first)."""
    return [(i, j, k) for i in range(degree + 1) for j in range(degree + 1 - i) for k in range(degree + 1 - i - j)]


def bias_field(shape: Sequence[int], coeffs: Sequence[float], degree: int) -> np.ndarray:
    """Multiplicative bias field ``exp(sum c_ijk P_i(x) P_j(y) P_k(z))`` on [-1, 1]^3 (Legendre polynomials).

    The same field as MONAI ``RandBiasField`` for the same coefficients; written here because MONAI only has the
    random transform, whose coefficients are private state instead of a parameter.

    Args:
        shape: spatial shape (X, Y, Z) in voxels.
        coeffs: one coefficient per entry of :func:`legendre_exponents` (``degree``).
        degree: total polynomial degree >= 1.

    Returns:
        float32 array of ``shape``, strictly positive.
    """
    exps = legendre_exponents(degree)
    if len(coeffs) != len(exps):
        raise ValueError(f"degree {degree} needs {len(exps)} bias coefficients, got {len(coeffs)}")
    mat = np.zeros((degree + 1,) * 3)
    for (i, j, k), c in zip(exps, coeffs):
        mat[i, j, k] = c
    x, y, z = (np.linspace(-1.0, 1.0, int(n), dtype=np.float32) for n in shape)
    return np.exp(np.polynomial.legendre.leggrid3d(x, y, z, mat)).astype(np.float32)


def resample_grid(
    shape: Sequence[int], affine: np.ndarray, spacing: Sequence[float]
) -> tuple[tuple[int, ...], np.ndarray, np.ndarray, np.ndarray]:
    """A grid with voxel size ``spacing`` (mm) centred on the same field of view as (``shape``, ``affine``).

    Returns:
        (new shape, new affine, zoom, offset) where source index = ``zoom * new index + offset`` per axis.
    """
    src = spacing_from_affine(affine)
    zoom = np.asarray(spacing, dtype=np.float64) / src
    n = np.asarray(shape, dtype=np.float64)
    n_out = np.maximum(1, np.round(n / zoom)).astype(int)
    offset = (n - 1) / 2 - (n_out - 1) / 2 * zoom
    step = np.eye(4)
    step[:3, :3] = np.diag(zoom)
    step[:3, 3] = offset
    return tuple(int(v) for v in n_out), np.asarray(affine, dtype=np.float64) @ step, zoom, offset


def change_resolution(
    image: np.ndarray,
    label: np.ndarray | None,
    affine: np.ndarray,
    spacing: Sequence[float],
    thickness: Sequence[float],
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Acquire the image on a coarser grid with a Gaussian slice profile; the label follows by nearest neighbour.

    Each axis is blurred so its point-spread function has FWHM ``thickness`` (mm; the source voxel is taken as
    FWHM = its spacing), then sampled with linear interpolation at the centres of the grid of
    :func:`resample_grid`. MONAI's ``RandSimulateLowResolution`` is not used: it resamples back onto the input grid,
    while a scanner writes the coarse grid, and it has no slice profile.

    Args:
        image: float array (X, Y, Z) or (X, Y, Z, C).
        label: integer array (X, Y, Z) on the image grid, or None.
        affine: 4x4 voxel-to-RAS (mm).
        spacing: output voxel size (mm) per axis.
        thickness: point-spread FWHM (mm) per axis, usually >= spacing.

    Returns:
        (image float32, label of the label's dtype or None, new affine), image and label on the same grid.
    """
    shape = image.shape[:3]
    src = spacing_from_affine(affine)
    out_shape, new_affine, zoom, offset = resample_grid(shape, affine, spacing)
    extra = np.sqrt(np.maximum(np.asarray(thickness, dtype=np.float64) ** 2 - src**2, 0.0))
    sigma = extra / _FWHM_PER_SIGMA / src

    def one(channel: np.ndarray) -> np.ndarray:
        blurred = ndimage.gaussian_filter(channel.astype(np.float32), sigma, mode="nearest")
        return ndimage.affine_transform(blurred, zoom, offset, output_shape=out_shape, order=1, mode="nearest")

    if image.ndim == 3:
        new_image = one(image)
    else:
        new_image = np.stack([one(image[..., c]) for c in range(image.shape[3])], axis=-1)
    new_label = None
    if label is not None:
        new_label = ndimage.affine_transform(label, zoom, offset, output_shape=out_shape, order=0, mode="nearest")
    return new_image.astype(np.float32), new_label, new_affine


def gibbs_ringing(x: np.ndarray, alpha: float) -> np.ndarray:
    """MONAI ``GibbsNoise`` (k-space truncation; alpha in [0, 1], 0 = identity) on an (X, Y, Z) float image."""
    if alpha <= 0:
        return x
    from monai.transforms import GibbsNoise

    out = GibbsNoise(alpha=float(alpha))(np.asarray(x, dtype=np.float32)[None])
    return np.asarray(out, dtype=np.float32)[0]


def rician_noise(x: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """``sqrt((x + n1)^2 + n2^2)`` with n1, n2 ~ N(0, sigma^2) drawn from ``default_rng(seed)``.

    A magnitude image of complex Gaussian noise (Gudbjartsson and Patz 1995). MONAI's ``RandRicianNoise`` is not
    used: its noise depends on the transform's internal random state and draw order rather than on a seed that
    can be saved with the output.

    Args:
        x: non-negative float array (normalised intensities).
        sigma: noise standard deviation of each Gaussian component, in the same units.
        seed: noise seed.
    """
    if sigma <= 0:
        return x.astype(np.float32)
    rng = np.random.default_rng(int(seed))
    n1 = rng.normal(0.0, sigma, size=x.shape)
    n2 = rng.normal(0.0, sigma, size=x.shape)
    return np.sqrt((x + n1) ** 2 + n2**2).astype(np.float32)


def encode_intensity(
    x: np.ndarray, dtype: str, scale: float, offset: float, slope: float = 1.0, inter: float = 0.0
) -> np.ndarray:
    """Store normalised intensities the way a scanner would.

    The physical value is ``x * scale + offset``; the stored value is ``(physical - inter) / slope``, rounded and
    clipped (saturated) for integer dtypes. A reader that applies NIfTI ``scl_slope``/``scl_inter`` = (slope,
    inter) gets the physical value back (see :func:`decode_intensity`).

    Returns:
        array of ``dtype``.
    """
    stored = (np.asarray(x, dtype=np.float64) * scale + offset - inter) / slope
    dt = np.dtype(dtype)
    if np.issubdtype(dt, np.integer):
        info = np.iinfo(dt)
        return np.clip(np.rint(stored), info.min, info.max).astype(dt)
    return stored.astype(dt)


def decode_intensity(stored: np.ndarray, slope: float = 1.0, inter: float = 0.0) -> np.ndarray:
    """Physical intensities of a stored array (what a NIfTI reader applying scl_slope/scl_inter returns)."""
    return (np.asarray(stored, dtype=np.float64) * slope + inter).astype(np.float32)


def reorient(
    image: np.ndarray, label: np.ndarray | None, affine: np.ndarray, axcodes: str
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Store the same anatomy with axes ``axcodes`` (e.g. ``"LPS"``): MONAI ``Orientation``, affine updated.

    World coordinates of every voxel's content are unchanged; only the axis order and directions change.
    """
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Orientation

    orient = Orientation(axcodes=axcodes, labels=RAS_LABELS)
    aff = torch.as_tensor(np.asarray(affine, dtype=np.float64))

    def one(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = cast(MetaTensor, orient(MetaTensor(torch.as_tensor(np.ascontiguousarray(arr)), affine=aff)))
        return np.ascontiguousarray(np.asarray(out.array)), np.asarray(out.affine, dtype=np.float64)

    chan_first = image[None] if image.ndim == 3 else np.moveaxis(image, -1, 0)
    out_image, new_affine = one(chan_first)
    out_image = out_image[0] if image.ndim == 3 else np.ascontiguousarray(np.moveaxis(out_image, 0, -1))
    new_label = None if label is None else one(label[None])[0][0]
    return out_image.astype(image.dtype), new_label, new_affine


def apply_shift(
    image: np.ndarray, label: np.ndarray | None, affine: np.ndarray, params: Mapping[str, Any]
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Apply a drawn shift: ``params`` from :meth:`~medattn.data.scanners.ScannerProfile.get_params`, ``window`` set.

    Deterministic: the same arguments give the same arrays. Order follows the acquisition: contrast curve, bias
    field, resolution and slice profile, Gibbs ringing, Rician noise, intensity encoding, storage orientation.

    Args:
        image: (X, Y, Z) or (X, Y, Z, C), any real dtype, as stored by the source scanner.
        label: integer (X, Y, Z) on the image grid, or None.
        affine: 4x4 voxel-to-RAS (mm).
        params: the shift; ``params["window"]`` holds one [lo, hi] per channel.

    Returns:
        (stored image of ``params["encoding"]["dtype"]``, label or None, affine), image and label on one grid.
    """
    if params.get("format") != SHIFT_FORMAT:
        raise ValueError(f"scanner-shift parameters of format {params.get('format')!r}; expected {SHIFT_FORMAT}")
    img = np.asarray(image)
    channels = [img] if img.ndim == 3 else [img[..., c] for c in range(img.shape[3])]
    windows = params["window"]
    if len(windows) != len(channels):
        raise ValueError(f"params hold {len(windows)} intensity windows for an image of {len(channels)} channels")
    con, bias, noise = params["contrast"], params["bias"], params["noise"]
    field_ = bias_field(img.shape[:3], bias["coeffs"], int(bias["degree"]))
    shifted = []
    for (lo, hi), ch in zip(windows, channels):
        x = (np.asarray(ch, dtype=np.float32) - np.float32(lo)) / np.float32(hi - lo)
        shifted.append(contrast_curve(x, con["gamma"], con["knots"], con["positions"]) * field_)
    x = shifted[0] if img.ndim == 3 else np.stack(shifted, axis=-1)
    res = params["resolution"]
    x, new_label, new_affine = change_resolution(x, label, affine, res["spacing"], res["thickness"])
    outs = []
    for c in range(1 if x.ndim == 3 else x.shape[3]):
        xc = x if x.ndim == 3 else x[..., c]
        xc = gibbs_ringing(xc, float(params["gibbs"]["alpha"]))
        xc = rician_noise(np.maximum(xc, 0.0), float(noise["sigma"]), int(noise["seed"]) + c)
        enc = params["encoding"]
        outs.append(encode_intensity(xc, enc["dtype"], enc["scale"], enc["offset"], enc["slope"], enc["inter"]))
    stored = outs[0] if x.ndim == 3 else np.stack(outs, axis=-1)
    return reorient(stored, new_label, new_affine, params["orientation"]["axcodes"])
