"""Multi-scanner datasets: the embedded phantom and simulated scanner domains of a real dataset.

``medattn synth OUT`` writes the phantom: per scanner profile of :mod:`medattn.data.scanners` one domain of
independent anatomies, each drawn by :func:`phantom_case` and then acquired by that profile. ``medattn synth OUT
--from DATA`` acquires every source case again with each profile. Either way the output is::

    OUT/manifest.json                   the dataset (source domains, if any, point back at the source files)
    OUT/synth.json                      the settings and the profiles' parameter ranges
    OUT/<domain>/imagesTr/<case>.nii.gz  image as the simulated scanner stores it (dtype, axis order, spacing)
    OUT/<domain>/labelsTr/<case>.nii.gz  uint8 label on the image's grid
    OUT/<domain>/params/<case>.json      the drawn shift (replay with scanners.apply_shift) and its input

The same seed gives identical arrays; a case's parameters depend only on the seed, its id and the profile, so
``--cases 3`` gives the first three cases of the full run.
"""

from __future__ import annotations

import json
import logging
import os
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from scipy import ndimage

from medattn.data.io import atomic_write_text, atomic_write_with, read_volume, write_volume
from medattn.data.manifest import VAL_FRACTION, Case, Channel, Domain, Manifest
from medattn.data.scanners import ScannerProfile, get_profiles, simulate_scanner
from medattn.errors import ConfigError, DataError

log = logging.getLogger(__name__)

DEFAULT_CASES = 8
DEFAULT_SIZE = 48
MIN_SIZE = 24
PHANTOM_SPACING = 1.0
PHANTOM_LABELS = {0: "background", 1: "head", 2: "tail"}
TEST_FRACTION = 0.25
#: The anatomy's knobs: the structure's half-length and radius (fractions of the half-edge), the number of
#: distractors (drawn in [lo, hi)) and the amplitude of the fine voxel-scale texture. Chosen so that the demo's
#: 32^3 phantoms are learnable within its budget: with radius 0.17-0.25 (3 to 4 voxels at 32^3), 4-7 distractors
#: and texture 0.25, 800 steps of ag_unet reached only 0.42 held-out Dice on scanner A (16 cases); with these
#: values 600 steps of ag_unet_fullres reached 0.81 (same seed, 40 cases).
STRUCTURE_LENGTH = (0.55, 0.75)
STRUCTURE_RADIUS = (0.3, 0.38)
DISTRACTORS = (2, 5)
FINE_TEXTURE = 0.1


# ---- the phantom anatomy -----------------------------------------------------------------------------------------


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

    ``image`` is float32 (x, y, z) in [0, 1] (canonical T1-like intensities: air 0, tissue ~0.33, organ ~0.5,
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


# ---- writing -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SynthResult:
    """What a synth run wrote: the manifest, its path and the cases that failed (id -> reason)."""

    manifest: Manifest
    path: Path
    failures: dict[str, str] = field(default_factory=dict)


def _prepare_out(out: str | Path) -> Path:
    out = Path(out).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: output exists and is a file; give a new folder")
    if out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"{out}: output folder exists and is not empty; give a new folder (nothing was written)")
    from medattn.data.guard import prepare_output_dir

    return prepare_output_dir(out, "OUT")


def _folder(name: str) -> str:
    """A domain name as a safe folder name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "domain"


def _write_image(
    path: Path, stored: np.ndarray, affine: np.ndarray, encoding: dict[str, Any], protected: Sequence[str | Path]
) -> None:
    slope, inter = float(encoding["slope"]), float(encoding["inter"])
    if (slope, inter) == (1.0, 0.0) or not np.issubdtype(stored.dtype, np.integer):
        write_volume(stored, affine, path, protected=protected)
        return
    import nibabel as nib

    img = nib.Nifti1Image(stored, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_slope_inter(slope, inter)  # readers return stored * slope + inter
    atomic_write_with(path, lambda tmp: nib.save(img, str(tmp)), protected)


def _write_case(
    out: Path,
    domain: str,
    case_id: str,
    stored: np.ndarray,
    label: np.ndarray | None,
    affine: np.ndarray,
    record: dict[str, Any],
    split_channels: bool,
    protected: Sequence[str | Path] = (),
) -> Case:
    enc = record["shift"]["encoding"]
    domain = _folder(domain)
    images = []
    if split_channels and stored.ndim == 4:
        for c in range(stored.shape[3]):
            images.append(f"{domain}/imagesTr/{case_id}_{c:04d}.nii.gz")
            _write_image(out / images[-1], np.ascontiguousarray(stored[..., c]), affine, enc, protected)
    else:
        images.append(f"{domain}/imagesTr/{case_id}.nii.gz")
        _write_image(out / images[-1], stored, affine, enc, protected)
    label_rel = None
    if label is not None:
        label_rel = f"{domain}/labelsTr/{case_id}.nii.gz"
        write_volume(label, affine, out / label_rel, dtype=np.uint8, protected=protected)
    atomic_write_text(out / domain / "params" / f"{case_id}.json", json.dumps(record, indent=2) + "\n")
    return Case(id=case_id, images=tuple(images), label=label_rel, metadata=dict(record.get("metadata", {})))


def default_splits(ids: Sequence[str], test_fraction: float = TEST_FRACTION) -> dict[str, tuple[str, ...]]:
    """Fixed train/val/test split of ``ids``, in their order.

    The last ``round(test_fraction * n)`` cases (at least one when n >= 2) are the test set; of the cases before
    them, the last ``round(VAL_FRACTION * m)`` (:data:`medattn.data.manifest.VAL_FRACTION`; at least one when
    m >= 2) validate and the rest train. Validation thus never draws on the test set, and ``test`` is the same as
    a plain train/test split of the same ids. Example: 40 ids give 24 train, 6 val and 10 test.
    """
    n_test = 0 if len(ids) < 2 else max(1, round(test_fraction * len(ids)))
    m = len(ids) - n_test
    n_val = 0 if m < 2 else max(1, round(VAL_FRACTION * m))
    return {
        "train": tuple(ids[: m - n_val]),
        "val": tuple(ids[m - n_val : m]),
        "test": tuple(ids[m:]),
    }


def _profile_doc(p: ScannerProfile) -> dict[str, Any]:
    return {"description": p.description, "metadata": dict(p.metadata), "ranges": p.ranges()}


def _case_meta(p: ScannerProfile) -> dict[str, Any]:
    return {**p.metadata, "simulated": True, "scanner_profile": p.name}


def _domain_meta(p: ScannerProfile) -> dict[str, Any]:
    return {**_case_meta(p), "description": p.description}


def synth_phantom(
    out: str | Path,
    *,
    seed: int = 0,
    cases: int = DEFAULT_CASES,
    size: int = DEFAULT_SIZE,
    profiles: Sequence[ScannerProfile] | None = None,
    progress: bool = False,
) -> SynthResult:
    """Write the phantom dataset: one domain per profile (named after it), ``cases`` anatomies each."""
    profiles = list(profiles) if profiles is not None else get_profiles(None)
    if cases < 1 or size < MIN_SIZE:
        raise ConfigError(f"need --cases >= 1 and --size >= {MIN_SIZE}, got {cases} and {size}")
    root = _prepare_out(out)
    from tqdm import tqdm

    domains = []
    bar = tqdm(total=cases * len(profiles), desc="phantom", unit="case", disable=not progress)
    for p in profiles:
        written = []
        for i in range(cases):
            image, label, affine, anatomy, rng = phantom_case(seed, p.name, i, size)
            stored, new_label, new_affine, params = simulate_scanner(image, label, affine, p, rng, [(0.0, 1.0)])
            case_id = f"{p.name}_{i:03d}"
            record: dict[str, Any] = {
                "case": case_id,
                "domain": p.name,
                "profile": p.name,
                "generator": {"seed": seed, "domain": p.name, "index": i, "size": size},
                "metadata": _case_meta(p),
                "anatomy": anatomy,
                "shift": params,
            }
            written.append(_write_case(root, p.name, case_id, stored, new_label, new_affine, record, False))
            bar.update()
        ids = [c.id for c in written]
        domains.append(Domain(p.name, tuple(written), _domain_meta(p), default_splits(ids)))
    bar.close()
    manifest = Manifest(
        name="medattn-phantom",
        channels=(Channel("MR", "MR"),),
        labels=dict(PHANTOM_LABELS),
        domains=tuple(domains),
        base_dir=root,
        description="Synthetic multi-scanner phantom: a bent structure split into touching head (1) and tail (2) "
        "inside an organ, with distractors of the same intensities; one simulated scanner per domain.",
    )
    settings = {
        "kind": "phantom",
        "seed": seed,
        "cases": cases,
        "size": size,
        "profiles": {p.name: _profile_doc(p) for p in profiles},
    }
    atomic_write_text(root / "synth.json", json.dumps(settings, indent=2) + "\n")
    return SynthResult(manifest, manifest.save(root / "manifest.json"))


def _read_case(
    source: Manifest, case: Case, data_root: str | Path | None
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, list[Path]]:
    paths = [source.resolve(p, data_root) for p in case.images]
    arrays, headers = zip(*(read_volume(p) for p in paths))
    shapes = {a.shape[:3] for a in arrays}
    if len(shapes) > 1:
        raise DataError(f"channel files differ in shape {sorted(shapes)}", paths[0], case.id)
    image = arrays[0] if len(arrays) == 1 else np.stack(arrays, axis=-1)
    affine = headers[0].affine
    label = None
    if case.label is not None:
        lpath = source.resolve(case.label, data_root)
        paths.append(lpath)
        raw, lhead = read_volume(lpath, dtype=None)
        if raw.shape[:3] != image.shape[:3] or not np.allclose(lhead.affine, affine, atol=1e-3):
            raise DataError(f"label grid {raw.shape} does not match image grid {image.shape[:3]}", lpath, case.id)
        label = np.rint(raw).astype(np.int64)
        if label.min() < 0 or label.max() > 255:
            raise DataError(f"label values {label.min()}..{label.max()} outside 0..255", lpath, case.id)
        label = label.astype(np.uint8)
    return image, label, affine, paths


def synth_from(
    source: Manifest,
    out: str | Path,
    *,
    profiles: Sequence[ScannerProfile] | None = None,
    seed: int = 0,
    cases: int | None = None,
    data_root: str | Path | None = None,
    progress: bool = False,
) -> SynthResult:
    """Acquire every source case (or the first ``cases`` of each domain) again with each profile.

    Domain ``D`` gives ``D`` (pointing at the source files) and one domain ``D_<profile>`` per profile, with case
    ids ``<id>_<profile>`` and the source domain's splits (or :func:`default_splits`). A case that cannot be read
    is logged, named in ``failures`` and left out of every domain.
    """
    profiles = list(profiles) if profiles is not None else get_profiles(None)
    if cases is not None and cases < 1:
        raise ConfigError(f"--cases must be >= 1, got {cases}")
    taken = {d.name for d in source.domains} | {c.id for _, c in source.iter_cases()}
    clashes = [f"{d.name}_{p.name}" for d in source.domains for p in profiles if f"{d.name}_{p.name}" in taken]
    if clashes:
        raise ConfigError(f"the source already has domains or cases named {clashes[:3]}; rename them first")
    root = _prepare_out(out)
    from tqdm import tqdm

    failures: dict[str, str] = {}
    domains: list[Domain] = []
    todo = [(d, list(d.cases[:cases] if cases else d.cases)) for d in source.domains]
    bar = tqdm(total=sum(len(c) for _, c in todo), desc="synth", unit="case", disable=not progress)
    for dom, dom_cases in todo:
        kept: list[Case] = []
        derived: dict[str, list[Case]] = {p.name: [] for p in profiles}
        for case in dom_cases:
            bar.update()
            try:
                image, label, affine, inputs = _read_case(source, case, data_root)
                rels = [PurePosixPath(Path(os.path.relpath(p, root))).as_posix() for p in inputs]
                shifted = []  # every profile first, so a case that fails leaves no files behind
                for p in profiles:
                    ss = np.random.SeedSequence([seed, zlib.crc32(case.id.encode()), zlib.crc32(p.name.encode())])
                    shifted.append(simulate_scanner(image, label, affine, p, np.random.default_rng(ss)))
            except (DataError, ValueError, OSError) as e:
                failures[case.id] = str(e)
                log.error("skipped case %r of domain %r: %s", case.id, dom.name, e)
                continue
            for p, (stored, lab, aff, params) in zip(profiles, shifted):
                new_id, new_dom = f"{case.id}_{p.name}", f"{dom.name}_{p.name}"
                record = {
                    "case": new_id,
                    "domain": new_dom,
                    "profile": p.name,
                    "seed": seed,
                    "source": {"domain": dom.name, "case": case.id, "files": rels},
                    "metadata": {**case.metadata, **_case_meta(p)},
                    "shift": params,
                }
                derived[p.name].append(
                    _write_case(root, new_dom, new_id, stored, lab, aff, record, len(case.images) > 1, protected=inputs)
                )
            n_img = len(case.images)
            kept.append(replace(case, images=tuple(rels[:n_img]), label=rels[n_img] if case.label else None))
        if not kept:
            continue
        ids = [c.id for c in kept]
        splits = {k: tuple(i for i in v if i in ids) for k, v in dom.splits.items()} or default_splits(ids)
        domains.append(Domain(dom.name, tuple(kept), dom.metadata, splits))
        for p in profiles:
            new_splits = {k: tuple(f"{i}_{p.name}" for i in v) for k, v in splits.items()}
            meta = {**dom.metadata, **_domain_meta(p), "source_domain": dom.name}
            domains.append(Domain(f"{dom.name}_{p.name}", tuple(derived[p.name]), meta, new_splits))
    bar.close()
    if not domains:
        raise DataError(f"no source case could be read ({len(failures)} failed); see the errors above")
    domains, data_root = _common_root(domains, root)
    manifest = Manifest(
        name=f"{source.name}-scanners",
        channels=source.channels,
        labels=dict(source.labels),
        domains=tuple(domains),
        root=data_root,
        base_dir=root,
        description=f"{source.name} with simulated scanner domains {', '.join(p.name for p in profiles)}.",
    )
    settings = {
        "kind": "from",
        "seed": seed,
        "cases": cases,
        "source": source.name,
        "profiles": {p.name: _profile_doc(p) for p in profiles},
        "failures": failures,
    }
    atomic_write_text(root / "synth.json", json.dumps(settings, indent=2) + "\n")
    return SynthResult(manifest, manifest.save(root / "manifest.json"), failures)


def _common_root(domains: Sequence[Domain], out: Path) -> tuple[list[Domain], str | None]:
    """Rebase case paths (relative to ``out``) onto the folder that holds both ``out`` and the source files.

    The source domain's cases point at the source files, usually outside ``out``; a manifest's case paths may not
    climb out of its data root with ``..`` (medattn.data.manifest), while its ``root`` may. So the data root becomes
    the deepest folder above every file, written relative to ``out``.
    """
    files = [out / p for d in domains for c in d.cases for p in (*c.images, *([c.label] if c.label else []))]
    if not any(".." in PurePosixPath(p.relative_to(out)).parts for p in files):
        return list(domains), None
    base = Path(os.path.commonpath([os.path.normpath(out), *(os.path.normpath(f) for f in files)]))

    def rebase(p: str) -> str:
        return PurePosixPath(Path(os.path.relpath(os.path.normpath(out / p), base))).as_posix()

    rebased = [
        replace(
            d,
            cases=tuple(
                replace(c, images=tuple(rebase(p) for p in c.images), label=rebase(c.label) if c.label else None)
                for c in d.cases
            ),
        )
        for d in domains
    ]
    return rebased, PurePosixPath(Path(os.path.relpath(base, out))).as_posix()
