"""A root with one sub-folder per domain (scanner or site), each holding case folders, a dataset or image pairs.

Any of these (the root, a domain or case folder, a file) may be a symbolic link; paths are listed as found.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from medattn.data.importers.common import (
    DEFAULT_LABELS,
    finish,
    is_label_stem,
    is_listed_file,
    rel,
    sidecar_meta,
    slug,
)
from medattn.data.importers.decathlon import import_dataset_json
from medattn.data.io import IMAGE_SUFFIXES, has_suffix, strip_suffix
from medattn.data.manifest import Case, Channel, Domain, Manifest, normalise_modality
from medattn.errors import ManifestError

log = logging.getLogger(__name__)


def import_domain_folders(
    root: Path,
    *,
    channels: list[str] | None = None,
    label_name: str | None = None,
    modality: str | None = None,
) -> Manifest:
    """A root with one sub-folder per domain (scanner/site); see the module docstring for what a domain holds."""
    root = Path(root)
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subdirs:
        raise ManifestError(
            "not a dataset: no manifest.json, dataset.json, BIDS sub-* folders or per-domain sub-folders", root
        )
    domains: list[Domain] = []
    chan_names: list[str] | None = None
    labels: dict[int, str] = dict(DEFAULT_LABELS)
    for dom in subdirs:
        if (dom / "dataset.json").is_file():
            sub = import_dataset_json(dom, modality)
            if chan_names is None:
                chan_names = [c.name for c in sub.channels]
                labels = dict(sub.labels)
            sub_cases = tuple(
                Case(
                    c.id,
                    tuple(f"{dom.name}/{p}" for p in c.images),
                    f"{dom.name}/{c.label}" if c.label else None,
                    c.metadata,
                )
                for c in sub.domains[0].cases
            )
            domains.append(Domain(slug(dom.name), sub_cases))
            continue
        cases, names = _import_domain_dir(dom, root, channels, label_name)
        if not cases:
            log.warning("%s: no cases found, folder skipped", dom)
            continue
        if chan_names is None:
            chan_names = names
        elif names != chan_names:
            raise ManifestError(f"domain has channels {names}, but earlier domains have {chan_names}", dom)
        domains.append(Domain(slug(dom.name), tuple(cases)))
    if not domains or chan_names is None:
        raise ManifestError("no domain folder holds any case", root)
    chans = tuple(Channel(n, normalise_modality(modality or n)) for n in chan_names)
    return finish(
        Manifest(name=root.name, channels=chans, labels=labels, domains=tuple(domains), base_dir=root.resolve()), root
    )


def _import_domain_dir(
    dom: Path, root: Path, channels: list[str] | None, label_name: str | None
) -> tuple[list[Case], list[str]]:
    """Cases of one domain folder: case sub-folders, imagesTr/labelsTr, or flat image + label pairs."""
    if (dom / "imagesTr").is_dir():
        cases = []
        for img in sorted((dom / "imagesTr").iterdir()):
            if not has_suffix(img, IMAGE_SUFFIXES):
                continue
            lab = dom / "labelsTr" / img.name
            cases.append(
                Case(strip_suffix(img.name), (rel(img, root),), rel(lab, root) if is_listed_file(lab) else None)
            )
        return cases, [channels[0] if channels else "image"]
    case_dirs = sorted(p for p in dom.iterdir() if p.is_dir() and not p.name.startswith("."))
    if case_dirs:
        cases = []
        names: list[str] | None = None
        for cdir in case_dirs:
            files = {strip_suffix(f.name): f for f in sorted(cdir.iterdir()) if has_suffix(f, IMAGE_SUFFIXES)}
            if not files:
                continue
            label = _pick_label(files, label_name, cdir)
            chan_files = {k: v for k, v in files.items() if k != label}
            if channels:
                missing = [c for c in channels if c not in chan_files]
                if missing:
                    raise ManifestError(f"case folder lacks channel file(s) {missing}; has {sorted(chan_files)}", cdir)
                order = list(channels)
            else:
                order = sorted(chan_files)
            if names is None:
                names = order
            elif order != names:
                raise ManifestError(f"case folder has channels {order}, other cases have {names}", cdir)
            cases.append(
                Case(
                    cdir.name,
                    tuple(rel(chan_files[c], root) for c in order),
                    rel(files[label], root) if label else None,
                    sidecar_meta(chan_files[order[0]]),
                )
            )
        return cases, names or []
    # Flat files: every non-label image is a single-channel case; its label is the shortest "<stem>_<label word>".
    files = {
        strip_suffix(f.name): f for f in sorted(dom.iterdir()) if is_listed_file(f) and has_suffix(f, IMAGE_SUFFIXES)
    }
    label_stems = {s for s in files if is_label_stem(s)}
    image_stems = sorted(s for s in files if s not in label_stems)
    cases = []
    for stem in image_stems:
        # A label belongs to the longest image stem it starts with (t2s_uncropped_gmseg -> t2s_uncropped).
        cands = [
            lab
            for lab in label_stems
            if lab.startswith(stem + "_") and max((s for s in image_stems if lab.startswith(s + "_")), key=len) == stem
        ]
        if label_name:
            cands = [c for c in cands if c == label_name or c.endswith(label_name)] or cands
        lab_stem = min(cands, key=len) if cands else None
        cases.append(
            Case(
                f"{dom.name}_{stem}",
                (rel(files[stem], root),),
                rel(files[lab_stem], root) if lab_stem else None,
                sidecar_meta(files[stem]),
            )
        )
    return cases, [channels[0] if channels else "image"]


def _pick_label(files: Mapping[str, Path], label_name: str | None, where: Path) -> str | None:
    if label_name:
        if label_name in files:
            return label_name
        raise ManifestError(f"no label file named {label_name!r}; files: {sorted(files)}", where)
    cands = [s for s in files if is_label_stem(s)]
    if len(cands) > 1:
        raise ManifestError(f"several files look like labels {sorted(cands)}; choose one with --label-name", where)
    return cands[0] if cands else None
