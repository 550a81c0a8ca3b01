"""``medattn synth OUT --from DATA``: every case of a real dataset acquired again by each simulated scanner.

Domain ``D`` of the source gives ``D`` itself (its cases pointing back at the source files) and one domain
``D_<profile>`` per scanner profile, case ids ``<id>_<profile>``, laid out as :mod:`medattn.data.synth` describes.
A case's shift depends only on the seed, its id and the profile; a case that cannot be read is named and left out
of every domain.
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path, PurePosixPath

import numpy as np

from medattn.data.gate import refusal_line
from medattn.data.io import atomic_write_text, read_volume
from medattn.data.manifest import Case, Domain, Manifest
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
from medattn.data.validate import validate_case
from medattn.errors import ConfigError, DataError

log = logging.getLogger(__name__)


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
    is logged, named in ``failures`` and left out of every domain; so is one the input checks refuse
    (:func:`~medattn.data.validate.validate_case`: non-finite voxels, undeclared label values, a label off the
    image grid).
    """
    profiles = list(profiles) if profiles is not None else get_profiles(None)
    if cases is not None and cases < 1:
        raise ConfigError(f"--cases must be >= 1, got {cases}")
    taken = {d.name for d in source.domains} | {c.id for _, c in source.iter_cases()}
    clashes = [f"{d.name}_{p.name}" for d in source.domains for p in profiles if f"{d.name}_{p.name}" in taken]
    if clashes:
        raise ConfigError(f"the source already has domains or cases named {clashes[:3]}; rename them first")
    root = prepare_out(out)
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
            # the input checks first: a source case with NaN voxels or an undeclared label value would become
            # simulated scans that look valid (NaN through the intensity curve is an all-zero image)
            checked = validate_case(source, dom, case, data_root=data_root)
            if not checked.ok:
                failures[case.id] = refusal_line(checked)
                log.error("skipped case %r of domain %r: %s", case.id, dom.name, refusal_line(checked))
                continue
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
                    "metadata": {**case.metadata, **case_metadata(p)},
                    "shift": params,
                }
                derived[p.name].append(
                    write_case(root, new_dom, new_id, stored, lab, aff, record, len(case.images) > 1, protected=inputs)
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
            meta = {**dom.metadata, **domain_metadata(p), "source_domain": dom.name}
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
        "profiles": {p.name: profile_doc(p) for p in profiles},
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
