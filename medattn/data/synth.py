"""``medattn synth OUT``: the multi-scanner phantom dataset, :func:`synth_phantom`.

Per scanner profile (:mod:`medattn.data.scanner_table`) one domain of independent anatomies, each drawn by
:func:`~medattn.data.phantom.phantom_case` and then acquired by that profile. ``medattn synth OUT --from DATA``
(:mod:`medattn.data.synth_from`) acquires every case of a real dataset again with each profile instead. Either way
the output is::

    OUT/manifest.json                   the dataset (source domains, if any, point back at the source files)
    OUT/synth.json                      the settings and the profiles' parameter ranges
    OUT/<domain>/imagesTr/<case>.nii.gz  image as the simulated scanner stores it (dtype, axis order, spacing)
    OUT/<domain>/labelsTr/<case>.nii.gz  uint8 label on the image's grid
    OUT/<domain>/params/<case>.json      the drawn shift (replay with acquisition.apply_shift) and its input

The same seed gives identical arrays; a case's parameters depend only on the seed, its id and the profile, so
``--cases 3`` gives the first three cases of the full run.

The anatomy is :mod:`medattn.data.phantom`, the scanners :mod:`medattn.data.scanners` (their physics
:mod:`medattn.data.acquisition`), the files :mod:`medattn.data.synth_writer`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medattn.data.io import atomic_write_text
from medattn.data.manifest import Channel, Domain, Manifest
from medattn.data.phantom import DEFAULT_SIZE, MIN_SIZE, PHANTOM_LABELS, phantom_case
from medattn.data.scanner_table import get_profiles
from medattn.data.scanners import ScannerProfile, simulate_scanner
from medattn.data.synth_writer import (
    SynthResult,
    case_metadata,
    default_splits,
    domain_metadata,
    prepare_out,
    profile_doc,
    write_case,
)
from medattn.errors import ConfigError

DEFAULT_CASES = 8


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
    root = prepare_out(out)
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
                "metadata": case_metadata(p),
                "anatomy": anatomy,
                "shift": params,
            }
            written.append(write_case(root, p.name, case_id, stored, new_label, new_affine, record, False))
            bar.update()
        ids = [c.id for c in written]
        domains.append(Domain(p.name, tuple(written), domain_metadata(p), default_splits(ids)))
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
        "profiles": {p.name: profile_doc(p) for p in profiles},
    }
    atomic_write_text(root / "synth.json", json.dumps(settings, indent=2) + "\n")
    return SynthResult(manifest, manifest.save(root / "manifest.json"))
