"""Simulated scanners: a :class:`ScannerProfile` holds the parameter ranges of one scanner and draws a shift.

The profile only *draws* a JSON-serialisable parameter dict (:meth:`ScannerProfile.get_params`), and
:func:`medattn.data.acquisition.apply_shift` applies it deterministically; :func:`simulate_scanner` does both and
returns the parameters with the result, so the shift can be replayed. The built-in profiles (A to D) are the data
table :mod:`medattn.data.scanner_table`.

Example::

    rng = np.random.default_rng(0)
    image, label, affine, params = simulate_scanner(image, label, affine, PROFILES["B"], rng)  # scanner_table
    again = apply_shift(source_image, source_label, source_affine, params)   # identical arrays
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medattn.data.acquisition import SHIFT_FORMAT, apply_shift, intensity_window, legendre_exponents
from medattn.data.io import spacing_from_affine
from medattn.typing import Range, ShiftParams

_INT_DTYPES = ("uint8", "int16", "uint16", "int32")


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
        knots: contrast curve values at normalised intensities ``knot_positions``
            (see :func:`~medattn.data.acquisition.contrast_curve`).
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

    def get_params(self, rng: np.random.Generator, spacing: Sequence[float] | np.ndarray) -> ShiftParams:
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


def simulate_scanner(
    image: np.ndarray,
    label: np.ndarray | None,
    affine: np.ndarray,
    profile: ScannerProfile,
    rng: np.random.Generator,
    window: Sequence[Sequence[float]] | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, ShiftParams]:
    """Draw a shift from ``profile`` and apply it; returns (image, label, affine, params) with params replayable.

    ``window`` (one [lo, hi] per channel) defaults to the 0.5th and 99.5th intensity percentiles of each channel.
    """
    params = profile.get_params(rng, spacing_from_affine(affine))
    if window is None:
        chans = [image] if image.ndim == 3 else [image[..., c] for c in range(image.shape[3])]
        window = [intensity_window(c) for c in chans]
    params["window"] = [[float(lo), float(hi)] for lo, hi in window]
    return (*apply_shift(image, label, affine, params), params)
