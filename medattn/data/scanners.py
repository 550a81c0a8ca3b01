"""Scanner shifts: deterministic transforms, the samplers that draw their parameters, and scanner profiles.

A simulated scanner changes an image the way a different acquisition would: its contrast curve, a smooth
multiplicative bias field, the voxel grid and slice profile, Gibbs ringing, Rician noise, the stored intensity
encoding and the stored axis order. Following TorchIO's ``RandomGamma.get_params`` feeding ``Gamma``, a
:class:`ScannerProfile` only *draws* a JSON-serialisable parameter dict (:meth:`ScannerProfile.get_params`);
:func:`apply_shift` applies such a dict deterministically, so a shift can be saved beside its output, replayed
exactly and compared across domains.

Conventions: images are numpy arrays indexed (x, y, z) or (x, y, z, C) channel-last, as :func:`medattn.data.io.
read_volume` returns them; ``affine`` maps voxel indices to RAS world coordinates in mm; labels are integer arrays
(x, y, z) on the image's grid. Intensity steps work on the image normalised by its ``window`` (``lo`` -> 0,
``hi`` -> 1), so noise levels and curves mean the same for every source encoding.

Example::

    rng = np.random.default_rng(0)
    image, label, affine, params = simulate_scanner(image, label, affine, PROFILES["B"], rng)
    again = apply_shift(source_image, source_label, source_affine, params)   # identical arrays
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
from scipy import ndimage

from medattn.data.io import spacing_from_affine

#: Version of the parameter dict written by :meth:`ScannerProfile.get_params`; :func:`apply_shift` checks it.
SHIFT_FORMAT = 1
#: MONAI Orientation axis labels for RAS world coordinates (passed explicitly: MONAI 1.6 warns on the default).
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))
_FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))
_INT_DTYPES = ("uint8", "int16", "uint16", "int32")
ParamDict = dict[str, Any]
Range = tuple[float, float]


# ---- deterministic transforms ------------------------------------------------------------------------------------


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


def legendre_exponents(degree: int) -> list[tuple[int, int, int]]:
    """Exponents (i, j, k), i + j + k <= degree, in MONAI ``RandBiasField``'s order (constant term first)."""
    return [(i, j, k) for i in range(degree + 1) for j in range(degree + 1 - i) for k in range(degree + 1 - i - j)]


def bias_field(shape: Sequence[int], coeffs: Sequence[float], degree: int) -> np.ndarray:
    """Multiplicative bias field ``exp(sum c_ijk P_i(x) P_j(y) P_k(z))`` on [-1, 1]^3 (Legendre polynomials).

    The same field as MONAI ``RandBiasField`` for the same coefficients; written here because MONAI only has the
    random transform, whose coefficients are private state instead of a parameter.

    Args:
        shape: spatial shape (x, y, z) in voxels.
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
        image: float array (x, y, z) or (x, y, z, C).
        label: integer array (x, y, z) on the image grid, or None.
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
    """MONAI ``GibbsNoise`` (k-space truncation; alpha in [0, 1], 0 = identity) on an (x, y, z) float image."""
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


# ---- the whole shift ---------------------------------------------------------------------------------------------


def apply_shift(
    image: np.ndarray, label: np.ndarray | None, affine: np.ndarray, params: Mapping[str, Any]
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Apply a parameter dict from :meth:`ScannerProfile.get_params` (with ``window`` set). Deterministic.

    Order follows the acquisition: contrast curve, bias field, resolution and slice profile, Gibbs ringing,
    Rician noise, intensity encoding, storage orientation.

    Args:
        image: (x, y, z) or (x, y, z, C), any real dtype, as stored by the source scanner.
        label: integer (x, y, z) on the image grid, or None.
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


def simulate_scanner(
    image: np.ndarray,
    label: np.ndarray | None,
    affine: np.ndarray,
    profile: ScannerProfile,
    rng: np.random.Generator,
    window: Sequence[Sequence[float]] | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, ParamDict]:
    """Draw a shift from ``profile`` and apply it; returns (image, label, affine, params) with params replayable.

    ``window`` (one [lo, hi] per channel) defaults to the 0.5th and 99.5th intensity percentiles of each channel.
    """
    params = profile.get_params(rng, spacing_from_affine(affine))
    if window is None:
        chans = [image] if image.ndim == 3 else [image[..., c] for c in range(image.shape[3])]
        window = [intensity_window(c) for c in chans]
    params["window"] = [[float(lo), float(hi)] for lo, hi in window]
    return (*apply_shift(image, label, affine, params), params)


# ---- profiles and samplers ---------------------------------------------------------------------------------------


def _uniform(rng: np.random.Generator, r: Range) -> float:
    return float(rng.uniform(r[0], r[1])) if r[1] > r[0] else float(r[0])


def _log_uniform(rng: np.random.Generator, r: Range) -> float:
    return float(np.exp(rng.uniform(np.log(r[0]), np.log(r[1])))) if r[1] > r[0] else float(r[0])


@dataclass(frozen=True)
class ScannerProfile:
    """Parameter ranges of one simulated scanner; :meth:`get_params` draws one shift from them.

    Attributes:
        name: short name used on the command line and as the domain suffix.
        description: what the profile simulates, one line.
        metadata: DICOM/BIDS-style acquisition metadata written to the manifest (Manufacturer, ...).
        gamma: log-uniform range of the contrast exponent.
        knots: contrast curve values at normalised intensities ``knot_positions`` (see :func:`contrast_curve`).
        knot_positions: where the knots sit on [0, 1]; None = equally spaced.
        knot_jitter: each knot after the first moves by U(-j, j).
        bias_degree: Legendre degree of the bias field.
        bias_coeff: bias coefficients are drawn from U(-c, c).
        inplane_factor: range of the voxel-size factor (output / source spacing) on the two in-plane axes.
        slice_factor: range of the factor on ``slice_axis`` (thick slices).
        slice_axis: source axis (0, 1, 2) of the slice direction.
        thickness_ratio: slice-profile FWHM / slice spacing on the slice axis (>1 overlapping, <1 gapped).
        gibbs_alpha: range of MONAI GibbsNoise alpha.
        noise_sigma: range of the Rician sigma as a fraction of the intensity window.
        dtype: stored dtype ("float32", "int16", "uint8", ...).
        scale, offset: ranges of the physical encoding ``x * scale + offset`` (x normalised).
        slope: range of the NIfTI scl_slope of integer storage (1 = none).
        orientations: storage axis codes, one drawn per case.
    """

    name: str
    description: str
    metadata: Mapping[str, Any] = field(default_factory=dict)
    gamma: Range = (1.0, 1.0)
    knots: tuple[float, ...] = (0.0, 1.0)
    knot_positions: tuple[float, ...] | None = None
    knot_jitter: float = 0.0
    bias_degree: int = 3
    bias_coeff: float = 0.0
    inplane_factor: Range = (1.0, 1.0)
    slice_factor: Range = (1.0, 1.0)
    slice_axis: int = 2
    thickness_ratio: Range = (1.0, 1.0)
    gibbs_alpha: Range = (0.0, 0.0)
    noise_sigma: Range = (0.0, 0.0)
    dtype: str = "float32"
    scale: Range = (1.0, 1.0)
    offset: Range = (0.0, 0.0)
    slope: Range = (1.0, 1.0)
    orientations: tuple[str, ...] = ("RAS",)

    def __post_init__(self) -> None:
        if len(self.knots) < 2:
            raise ValueError(f"profile {self.name!r}: knots needs at least two values")
        pos = self.knot_positions
        if pos is not None and (
            len(pos) != len(self.knots) or pos[0] != 0 or pos[-1] != 1 or sorted(set(pos)) != list(pos)
        ):
            raise ValueError(f"profile {self.name!r}: knot_positions must rise from 0 to 1, one per knot; got {pos}")
        if self.slice_axis not in (0, 1, 2):
            raise ValueError(f"profile {self.name!r}: slice_axis must be 0, 1 or 2, got {self.slice_axis}")
        if self.gamma[0] <= 0 or self.inplane_factor[0] <= 0 or self.slice_factor[0] <= 0:
            raise ValueError(f"profile {self.name!r}: gamma and resolution factors must be positive")
        if not 0 <= self.gibbs_alpha[0] <= self.gibbs_alpha[1] <= 1:
            raise ValueError(f"profile {self.name!r}: gibbs_alpha must lie in [0, 1], got {self.gibbs_alpha}")
        if self.dtype != "float32" and self.dtype not in _INT_DTYPES:
            raise ValueError(f"profile {self.name!r}: dtype {self.dtype!r} not in {('float32', *_INT_DTYPES)}")

    def get_params(self, rng: np.random.Generator, spacing: Sequence[float] | np.ndarray) -> ParamDict:
        """Draw one shift for a source with voxel size ``spacing`` (mm); ``window`` is left for the caller.

        The draw order is fixed, so the same generator state gives the same dict.
        """
        knots = [float(self.knots[0])] + [
            float(np.clip(k + rng.uniform(-self.knot_jitter, self.knot_jitter), 0.0, 1.0)) for k in self.knots[1:]
        ]
        positions = np.linspace(0, 1, len(knots)) if self.knot_positions is None else self.knot_positions
        contrast = {"gamma": _log_uniform(rng, self.gamma), "knots": knots, "positions": [float(v) for v in positions]}
        n_coeff = len(legendre_exponents(self.bias_degree))
        coeffs = [float(c) for c in rng.uniform(-self.bias_coeff, self.bias_coeff, n_coeff)]
        inplane = _uniform(rng, self.inplane_factor)
        factors = [inplane] * 3
        factors[self.slice_axis] = _uniform(rng, self.slice_factor)
        new_spacing = [float(s) * f for s, f in zip(spacing, factors)]
        thickness = list(new_spacing)
        thickness[self.slice_axis] *= _uniform(rng, self.thickness_ratio)
        return {
            "format": SHIFT_FORMAT,
            "profile": self.name,
            "contrast": contrast,
            "bias": {"degree": self.bias_degree, "coeffs": coeffs},
            "resolution": {"spacing": new_spacing, "thickness": thickness},
            "gibbs": {"alpha": _uniform(rng, self.gibbs_alpha)},
            "noise": {"sigma": _uniform(rng, self.noise_sigma), "seed": int(rng.integers(0, 2**31 - 1))},
            "encoding": {
                "dtype": self.dtype,
                "scale": _uniform(rng, self.scale),
                "offset": _uniform(rng, self.offset),
                "slope": _uniform(rng, self.slope),
                "inter": 0.0,
            },
            "orientation": {"axcodes": self.orientations[int(rng.integers(len(self.orientations)))]},
        }

    def ranges(self) -> dict[str, Any]:
        """The parameter ranges as a JSON-serialisable dict (for ``--list-profiles`` and the manifest)."""
        skip = {"name", "description", "metadata"}
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(self).items() if k not in skip}


#: The built-in scanner profiles, in domain order. Metadata name plausible scanners; all are simulated.
PROFILES: dict[str, ScannerProfile] = {
    p.name: p
    for p in (
        ScannerProfile(
            "A",
            "3 T reference: near-identity T1-like contrast, 1 mm isotropic, low noise, float32",
            {"Manufacturer": "Siemens", "ManufacturersModelName": "Prisma", "MagneticFieldStrength": 3.0},
            gamma=(0.9, 1.1),
            knots=(0.0, 0.25, 0.5, 0.75, 1.0),
            knot_jitter=0.02,
            bias_coeff=0.04,
            noise_sigma=(0.015, 0.03),
            scale=(900.0, 1100.0),
        ),
        ScannerProfile(
            "B",
            "3 T, inverted T2-like tissue contrast (air stays dark), int16 with NIfTI scl_slope, LPS storage",
            {"Manufacturer": "Philips", "ManufacturersModelName": "Ingenia", "MagneticFieldStrength": 3.0},
            gamma=(0.8, 1.25),
            knots=(0.0, 0.9, 0.85, 0.6, 0.4, 0.25),
            knot_positions=(0.0, 0.06, 0.25, 0.5, 0.75, 1.0),
            knot_jitter=0.04,
            bias_coeff=0.08,
            gibbs_alpha=(0.0, 0.1),
            noise_sigma=(0.02, 0.04),
            dtype="int16",
            scale=(2000.0, 3000.0),
            slope=(0.4, 0.8),
            orientations=("LPS",),
        ),
        ScannerProfile(
            "C",
            "1.5 T, thick slices (2.5-3.5x along z) with coarser in-plane voxels, strong bias field, "
            "Gibbs ringing, float32 with an offset, axes permuted",
            {"Manufacturer": "GE", "ManufacturersModelName": "Signa HDxt", "MagneticFieldStrength": 1.5},
            gamma=(0.7, 1.4),
            knots=(0.0, 0.25, 0.5, 0.75, 1.0),
            knot_jitter=0.05,
            bias_coeff=0.3,
            inplane_factor=(1.1, 1.4),
            slice_factor=(2.5, 3.5),
            thickness_ratio=(1.0, 1.25),
            gibbs_alpha=(0.2, 0.35),
            noise_sigma=(0.02, 0.04),
            scale=(300.0, 500.0),
            offset=(200.0, 400.0),
            orientations=("RSP", "PSR"),
        ),
        ScannerProfile(
            "D",
            "low field (0.55 T): heavy Rician noise, compressed contrast, ~1.3 mm voxels, uint8 rescaled and "
            "saturated, radiological (LAS) storage",
            {"Manufacturer": "Siemens", "ManufacturersModelName": "MAGNETOM Free.Max", "MagneticFieldStrength": 0.55},
            gamma=(0.5, 0.7),
            knots=(0.0, 0.25, 0.5, 0.75, 1.0),
            knot_jitter=0.05,
            bias_coeff=0.12,
            inplane_factor=(1.2, 1.4),
            slice_factor=(1.2, 1.4),
            gibbs_alpha=(0.05, 0.15),
            noise_sigma=(0.07, 0.1),
            dtype="uint8",
            scale=(170.0, 230.0),
            offset=(0.0, 8.0),
            orientations=("LAS",),
        ),
    )
}


def get_profiles(names: str | Sequence[str] | None) -> list[ScannerProfile]:
    """Profiles by name (comma-separated string or list); None gives all. Unknown names raise ValueError."""
    if names is None:
        return list(PROFILES.values())
    wanted = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
    wanted = [n for n in wanted if n]
    unknown = [n for n in wanted if n not in PROFILES]
    if unknown or not wanted:
        raise ValueError(f"unknown scanner profile(s) {unknown or names!r}; choose from {', '.join(PROFILES)}")
    return [PROFILES[n] for n in dict.fromkeys(wanted)]


def format_profiles(profiles: Sequence[ScannerProfile] | None = None) -> str:
    """Human-readable list of profiles with metadata and parameter ranges."""
    lines = []
    for p in profiles or PROFILES.values():
        meta = ", ".join(f"{k}={v}" for k, v in p.metadata.items())
        lines.append(f"{p.name}: {p.description}")
        lines.append(f"    {meta}")
        for k, v in p.ranges().items():
            lines.append(f"    {k:16s} {v}")
    return "\n".join(lines)
