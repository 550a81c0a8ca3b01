"""BIDS folders: images under ``sub-*/``, labels under ``derivatives/``, JSON sidecars as metadata and domains."""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from medattn.data.importers.common import (
    DEFAULT_LABELS,
    SIDECAR_KEYS,
    finish,
    guess_modality,
    is_label_stem,
    read_sidecar,
    rel,
    slug,
    walk_files,
)
from medattn.data.io import IMAGE_SUFFIXES, has_suffix, strip_suffix
from medattn.data.manifest import Case, Channel, Domain, Manifest, normalise_modality
from medattn.errors import ManifestError

log = logging.getLogger(__name__)

_ENTITY = re.compile(r"^(?P<key>[a-zA-Z0-9]+)-(?P<value>[a-zA-Z0-9]+)$")


def is_bids(root: Path) -> bool:
    return (root / "dataset_description.json").is_file() or any(
        p.is_dir() and p.name.startswith("sub-") for p in root.iterdir()
    )


def parse_bids_name(name: str) -> tuple[dict[str, str], str]:
    """``sub-01_ses-2_T1w.nii.gz`` -> ({"sub": "01", "ses": "2"}, "T1w")."""
    parts = strip_suffix(name).split("_")
    entities: dict[str, str] = {}
    suffix = ""
    for i, part in enumerate(parts):
        m = _ENTITY.match(part)
        if m and i < len(parts) - 1:
            entities[m["key"]] = m["value"]
        else:
            suffix = "_".join(parts[i:])
            break
    return entities, suffix


def import_bids(
    root: Path,
    *,
    domain_from: str | None = None,
    channels: list[str] | None = None,
    modality: str | None = None,
    label_name: str | None = None,
) -> Manifest:
    """Import a BIDS folder: each image with a label under ``derivatives/`` becomes a case.

    With ``channels`` (BIDS suffixes, e.g. ``["T1w", "T2w"]``) images of one subject/session are grouped into
    multi-channel cases. ``domain_from`` names each case's domain from a sidecar key (e.g. ``Manufacturer``) or
    a filename entity (``suffix``, ``ses``, ``acq``, ``sub``); without it there is a single domain. Of several
    label files of an image, ``label_name`` (the ending of their stem, e.g. ``desc-lesion_dseg``) chooses; without
    it a segmentation is taken over a ``_mask`` (a binary mask of the scan, e.g. the brain), and the shortest name
    among the rest, with a warning naming them.
    """
    root = Path(root)
    subjects = [d for d in sorted(root.iterdir()) if d.name.startswith("sub-") and d.is_dir()]
    images = [
        p
        for p in sorted(f for d in subjects for f in walk_files(d))
        if has_suffix(p, IMAGE_SUFFIXES) and not is_label_stem(parse_bids_name(p.name)[1])
    ]
    if not images:
        raise ManifestError("BIDS folder has no sub-*/…/*.nii(.gz) images", root)
    label_files = [p for p in walk_files(root / "derivatives") if has_suffix(p, IMAGE_SUFFIXES)]

    def find_label(img: Path) -> Path | None:
        stem = strip_suffix(img.name)
        cands = [
            p
            for p in label_files
            if strip_suffix(p.name).startswith(stem + "_") and is_label_stem(strip_suffix(p.name)[len(stem) :])
        ]
        if label_name:
            cands = [p for p in cands if strip_suffix(p.name).endswith(label_name)]
        if len(cands) > 1:
            # a BIDS "_mask" is a binary mask of the scan (the brain, say), not what is segmented
            segs = [p for p in cands if not strip_suffix(p.name).lower().endswith("_mask")]
            cands = segs or cands
        # Prefer whole-structure masks ("_seg-manual", "_dseg") over sub-structure ones ("_gmseg"): shortest name.
        chosen = min(cands, key=lambda p: len(p.name)) if cands else None
        if len(cands) > 1 and chosen is not None:
            log.warning(
                "%s: several label files %s; took %s (the shortest); choose another with --label-name",
                img.name,
                sorted(p.name for p in cands),
                chosen.name,
            )
        return chosen

    groups: dict[tuple[Any, ...], dict[str, Path]] = defaultdict(dict)
    for img in images:
        ent, suffix = parse_bids_name(img.name)
        if channels:
            if suffix not in channels:
                continue
            key = tuple(sorted((k, v) for k, v in ent.items()))
            groups[key][suffix] = img
        else:
            groups[(strip_suffix(img.name),)][suffix] = img

    cases_by_domain: dict[str, list[Case]] = defaultdict(list)
    domain_meta: dict[str, dict[str, Any]] = {}
    unlabelled = 0
    no_domain: list[str] = []
    modalities: dict[str, str] = {}
    for _key, by_suffix in sorted(groups.items()):
        order = channels or list(by_suffix)
        if channels and set(by_suffix) != set(channels):
            log.warning("skipping %s: has %s, needs channels %s", _key, sorted(by_suffix), channels)
            continue
        paths = [by_suffix[s] for s in order]
        label = next((lab for lab in (find_label(p) for p in paths) if lab is not None), None)
        if label is None:
            unlabelled += 1
            continue
        side = read_sidecar(paths[0])
        meta = {k: side[k] for k in SIDECAR_KEYS if k in side}
        ent, suffix = parse_bids_name(paths[0].name)
        meta["bids_suffix"] = suffix
        for s, p in zip(order, paths, strict=True):
            sc = read_sidecar(p)
            modalities.setdefault(s, modality or str(sc.get("Modality", guess_modality(s, p))))
        if domain_from:
            if domain_from in ("suffix", *ent.keys()):
                dname = suffix if domain_from == "suffix" else ent[domain_from]
            elif domain_from in side:
                dname = str(side[domain_from])
            else:  # this image alone lacks it (a subject without a session, say): left out, named
                no_domain.append(
                    f"{paths[0].name}: neither a filename entity nor a key of its sidecar (keys: {sorted(side)[:12]})"
                )
                continue
        else:
            dname = slug(root.name)
        dname = slug(dname)
        cid = strip_suffix(paths[0].name) if not channels else "_".join(f"{k}-{v}" for k, v in sorted(ent.items()))
        cases_by_domain[dname].append(
            Case(id=cid, images=tuple(rel(p, root) for p in paths), label=rel(label, root), metadata=meta)
        )
        if domain_from and domain_from in side:
            domain_meta.setdefault(dname, {domain_from: side[domain_from]})
    if unlabelled:
        log.info("%s: %d image(s) without a label under derivatives/ were left out", root, unlabelled)
    if no_domain and not cases_by_domain:
        raise ManifestError(f"--domain-from {domain_from!r}: {no_domain[0]}", root)
    for why in no_domain:
        log.warning("%s: case left out, --domain-from %r names no domain for it: %s", root, domain_from, why)
    if not cases_by_domain:
        raise ManifestError("BIDS folder has no image with a label under derivatives/", root)
    if channels:
        chans = tuple(Channel(s, normalise_modality(modalities[s])) for s in channels)
    else:
        mods = {normalise_modality(m) for m in modalities.values()}
        single = sorted(modalities)[0] if len(modalities) == 1 else "image"
        chans = (Channel(single, mods.pop() if len(mods) == 1 else "MR"),)
    domains = tuple(
        Domain(name=d, cases=tuple(cs), metadata=domain_meta.get(d, {})) for d, cs in sorted(cases_by_domain.items())
    )
    name = _bids_name(root)
    return finish(
        Manifest(name=name, channels=chans, labels=dict(DEFAULT_LABELS), domains=domains, base_dir=root.resolve()), root
    )


def _bids_name(root: Path) -> str:
    desc = root / "dataset_description.json"
    if desc.is_file():
        try:
            return str(json.loads(desc.read_text()).get("Name", root.name))
        except (OSError, json.JSONDecodeError):
            pass
    return root.name
