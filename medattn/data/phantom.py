"""The phantom anatomy: one body with an organ, a labelled two-part structure and distractors, per seed.

:func:`phantom_case` draws one anatomy on a cubic grid of ``size`` voxels a side (1 mm) before any scanner: a bent,
tapering structure split into touching head (1) and tail (2) inside an organ, with distractors of the labels'
intensities, all smoothly deformed. The same (seed, domain, index) gives identical arrays; a case depends on
nothing else, so ``--cases 3`` gives the first three cases of the full run. :mod:`medattn.data.synth` acquires
each anatomy with a scanner profile and writes the dataset.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
from scipy import ndimage

DEFAULT_SIZE = 48
MIN_SIZE = 24
PHANTOM_SPACING = 1.0
PHANTOM_LABELS = {0: "background", 1: "head", 2: "tail"}
#: The anatomy's knobs: the structure's half-length and radius (fractions of the half-edge), the number of
#: distractors (drawn in [lo, hi)) and the amplitude of the fine voxel-scale texture. Chosen so that the demo's
#: 32^3 phantoms are learnable within its budget: with radius 0.17-0.25 (3 to 4 voxels at 32^3), 4-7 distractors
#: and texture 0.25, 800 steps of ag_unet reached only 0.42 held-out Dice on scanner A (16 cases); with these
#: values 600 steps of ag_unet_fullres reached 0.81 (same seed, 40 cases).
STRUCTURE_LENGTH = (0.55, 0.75)
STRUCTURE_RADIUS = (0.3, 0.38)
DISTRACTORS = (2, 5)
FINE_TEXTURE = 0.1


def _field(rng: np.random.Generator, n: int, scale: float) -> np.ndarray:
    """Smooth random field, zero mean and unit std, correlation length ``scale`` (fraction of the volume edge).

    Drawn on a grid four times coarser and interpolated linearly: the field is smooth at that scale anyway, and
    filtering at full resolution was most of the phantom's generation time.
    """
    nc = max(4, -(-n // 4))
    coarse = ndimage.gaussian_filter(rng.standard_normal((nc,) * 3, dtype=np.float32), scale * nc, mode="reflect")
    f = ndimage.zoom(coarse, n / nc, order=1, mode="nearest", grid_mode=True)
    return (f - f.mean()) / (f.std() + 1e-12)


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _local(grid: np.ndarray, centre: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """Coordinates of ``grid`` (3, n, n, n) in a frame at ``centre`` with axes the columns of ``rot``."""
    f32 = np.float32
    return np.einsum("ji,j...->i...", rot.astype(f32), grid - centre.astype(f32)[:, None, None, None])


def _ellipsoid(grid: np.ndarray, centre: np.ndarray, radii: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """Level function, < 1 inside the ellipsoid."""
    loc = _local(grid, centre, rot)
    return np.sum((loc / radii.astype(np.float32)[:, None, None, None]) ** 2, axis=0)


def _segment_distance(grid: np.ndarray, p0: np.ndarray, p1: np.ndarray) -> np.ndarray:
    d = (p1 - p0).astype(np.float32)
    rel = grid - p0.astype(np.float32)[:, None, None, None]
    t = np.clip(np.einsum("i,i...->...", d, rel) / float(d @ d), 0.0, 1.0)
    return np.sqrt(np.sum((rel - t * d[:, None, None, None]) ** 2, axis=0))


def _draw_anatomy(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Body (tissue, fat rim), organ, labelled structure and distractors on an n^3 grid, all smoothly deformed."""
    ax = ((np.arange(n) - (n - 1) / 2) / (n / 2)).astype(np.float32)  # voxel centres on [-1, 1]
    grid = np.stack(np.meshgrid(ax, ax, ax, indexing="ij"))
    warp = grid + 0.05 * np.stack([_field(rng, n, 0.14) for _ in range(3)])  # per-case smooth deformation

    body_r = rng.uniform([0.95, 0.85, 0.95], [1.15, 1.0, 1.15])  # the field of view crops the body
    body_f = _ellipsoid(warp, rng.uniform(-0.04, 0.04, 3), body_r, _rotation(rng) if rng.random() < 0.3 else np.eye(3))
    body_f = body_f * (1 + 0.08 * _field(rng, n, 0.2))
    organ_c = rng.uniform(-0.18, 0.18, 3)
    organ_r = rng.uniform(0.42, 0.6, 3)
    organ_f = _ellipsoid(warp, organ_c, organ_r, _rotation(rng)) * (1 + 0.12 * _field(rng, n, 0.12))

    # The labelled structure: a bent, tapering "bean" split across its long axis into head (1) and tail (2).
    bean_c = organ_c + rng.uniform(-0.08, 0.08, 3)
    length, r0 = rng.uniform(*STRUCTURE_LENGTH), rng.uniform(*STRUCTURE_RADIUS)
    taper, bend, flat = rng.uniform(0.2, 0.6), rng.uniform(-1.0, 1.0), rng.uniform(0.65, 1.0)
    split = rng.uniform(-0.35, 0.35)
    u, v, w = _local(warp, bean_c, _rotation(rng))
    radius = r0 * (1 - taper * np.clip((u / length + 1) / 2, 0, 1))
    bean_f = (u / length) ** 2 + ((v - bend * u**2) / radius) ** 2 + (w / (radius * flat)) ** 2
    bean_f = bean_f * (1 + 0.1 * _field(rng, n, 0.08))
    bean = bean_f < 1
    head = bean & (u < split * length + 0.04 * _field(rng, n, 0.1))

    i1 = rng.uniform(0.64, 0.70)
    i2 = i1 + rng.uniform(0.08, 0.14)
    tissue = 0.33 + rng.uniform(-0.03, 0.03)
    organ_i = 0.5 + rng.uniform(-0.03, 0.03)
    fine = ndimage.gaussian_filter(rng.standard_normal((n, n, n), dtype=np.float32), 0.8)
    texture = 1 + 0.06 * _field(rng, n, 0.08) + FINE_TEXTURE * fine
    image = np.zeros((n, n, n), np.float32)
    body = body_f < 1
    image[body] = tissue
    image[body & (body_f > 0.8)] = 0.88  # subcutaneous fat: bright, like the labels
    image[body & (organ_f < 1)] = organ_i

    # Distractors with the labels' intensities, away from the labelled structure: not thresholdable.
    clear = body & (bean_f > 2.0)
    blobs = []
    for _ in range(int(rng.integers(*DISTRACTORS))):
        c, r = rng.uniform(-0.6, 0.6, 3), rng.uniform(0.07, 0.18, 3)
        value = (i1 if rng.random() < 0.5 else i2) + rng.uniform(-0.03, 0.03)
        image[clear & (_ellipsoid(warp, c, r, _rotation(rng)) < 1)] = value
        blobs.append({"centre": c.tolist(), "radii": r.tolist(), "intensity": value})
    p0, p1 = rng.uniform(-0.7, 0.7, 3), rng.uniform(-0.7, 0.7, 3)
    vessel_r, vessel_i = rng.uniform(0.03, 0.06), rng.uniform(0.84, 0.94)
    image[clear & (_segment_distance(warp, p0, p1) < vessel_r)] = vessel_i
    image[head] = i1
    image[bean & ~head] = i2

    image = ndimage.gaussian_filter(image * texture, 0.6)  # partial volume
    label = np.zeros((n, n, n), np.uint8)
    label[bean] = 2
    label[head] = 1
    anatomy = {
        "body_radii": body_r.tolist(),
        "organ": {"centre": organ_c.tolist(), "radii": organ_r.tolist(), "intensity": organ_i},
        "structure": {
            "centre": bean_c.tolist(),
            "length": length,
            "radius": r0,
            "taper": taper,
            "bend": bend,
            "flatness": flat,
            "split": split,
            "intensity": [i1, i2],
        },
        "tissue_intensity": tissue,
        "distractors": blobs,
        "vessel": {"from": p0.tolist(), "to": p1.tolist(), "radius": vessel_r, "intensity": vessel_i},
    }
    return np.clip(image, 0.0, 1.0).astype(np.float32), label, anatomy


def phantom_affine(size: int, spacing: float = PHANTOM_SPACING) -> np.ndarray:
    """Voxel-to-RAS affine of a phantom: RAS axes, ``spacing`` mm, centred on the world origin."""
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = -(size - 1) / 2 * spacing
    return affine


def phantom_case(
    seed: int, domain: str, index: int, size: int = DEFAULT_SIZE
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any], np.random.Generator]:
    """One phantom anatomy before any scanner: (image, label, affine, anatomy, scanner rng).

    ``image`` is float32 (X, Y, Z) in [0, 1] (canonical T1-like intensities: air 0, tissue ~0.33, organ ~0.5,
    head ~0.67, tail ~0.78, fat 0.88); ``label`` uint8 with 1 = head and 2 = tail, which touch; ``affine`` from
    :func:`phantom_affine`. The returned generator is the case's independent stream for its scanner shift.
    """
    if size < MIN_SIZE:
        raise ValueError(f"phantom size must be at least {MIN_SIZE} voxels, got {size}")
    anatomy_ss, scanner_ss = np.random.SeedSequence([seed, zlib.crc32(domain.encode()), index]).spawn(2)
    rng = np.random.default_rng(anatomy_ss)
    min_voxels = max(8, int(100 * (size / 48) ** 3))
    for _ in range(20):  # redraw the rare anatomy whose head or tail is too small
        image, label, anatomy = _draw_anatomy(rng, size)
        if min(int(np.sum(label == 1)), int(np.sum(label == 2))) >= min_voxels:
            break
    return image, label, phantom_affine(size), anatomy, np.random.default_rng(scanner_ss)
