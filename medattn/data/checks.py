"""The validation checks by name, their selection, and the geometry tolerances they apply.

The checks themselves, what each one looks at and its severity, are listed in :mod:`medattn.data.validate`;
:class:`~medattn.data.case_checker.CaseChecker` runs them.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from medattn.errors import ConfigError
from medattn.typing import Range

#: Every check, in the order they run. "exists" and "header" always run (everything else depends on them).
CHECKS: tuple[str, ...] = (
    "exists",
    "header",
    "voxels",
    "dims",
    "spacing",
    "geometry",
    "shape",
    "affine",
    "finite",
    "intensity",
    "labels",
)
ALWAYS_RUN = frozenset({"exists", "header"})
VOXEL_CHECKS = frozenset({"voxels", "finite", "intensity", "labels"})


@dataclass(frozen=True)
class Tolerances:
    """Thresholds of the geometry checks (all lengths in mm).

    Two affines agree when, for each voxel axis ``j``, every entry of column ``j`` of their 3x3 linear parts
    (direction x voxel size) differs by at most ``affine_rtol`` times that axis's voxel size, and their origins
    differ by at most ``origin_atol_mm``. The defaults (0.1 % of a voxel; 0.01 mm) absorb the float32 rounding of
    NIfTI headers and of qform/sform conversions, and flag any shift, flip or resampling a user could see.

    Attributes:
        affine_rtol: tolerance on the linear part, relative to the voxel size along that axis.
        origin_atol_mm: tolerance on the origin (translation), in mm.
        plausible_spacing_mm: (low, high) voxel size range outside which the header is an error (wrong units).
        usual_spacing_mm: (low, high) range outside which a voxel size is reported as a warning.
    """

    affine_rtol: float = 1e-3
    origin_atol_mm: float = 1e-2
    plausible_spacing_mm: Range = (0.01, 50.0)
    usual_spacing_mm: Range = (0.1, 10.0)


DEFAULT_TOLERANCES = Tolerances()


def select_checks(checks: Collection[str] | None) -> frozenset[str]:
    """Normalise a selection of check names (None: all); "exists" and "header" are always included."""
    if checks is None:
        return frozenset(CHECKS)
    if isinstance(checks, str):
        checks = [checks]
    unknown = sorted(set(checks) - set(CHECKS))
    if unknown:
        raise ConfigError(f"unknown validation check(s) {unknown}; known checks: {', '.join(CHECKS)}")
    return frozenset(checks) | ALWAYS_RUN
