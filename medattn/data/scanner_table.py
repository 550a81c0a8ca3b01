"""The built-in scanner profiles A to D, as data: :data:`PROFILES`, looked up by :func:`get_profiles`.

Each is a :class:`~medattn.data.scanners.ScannerProfile` (parameter ranges and acquisition metadata); a new
profile is a new entry here. Their metadata name plausible scanners; every one is simulated.
"""

from __future__ import annotations

from collections.abc import Sequence

from medattn.data.scanners import ScannerProfile

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
