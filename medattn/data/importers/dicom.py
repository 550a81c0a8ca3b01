"""Folders of DICOM series: every folder under the root that holds one series is a case.

A PACS export or a scanner's disk lays series out in many ways (``patient/study/series/``, ``site/series/``, one
folder per series); what they share is that each series' files sit in a folder of their own, which is the unit
medattn reads (:mod:`medattn.data.dicom`). So the importer walks the root, takes each series folder as one
single-channel case (its id the folder's path under the root), and reads the series' headers for the case's
metadata. A label, when there is one, is an image file beside the series folder named after it with a label
word: ``<series>_seg.nii.gz``, ``<series>_label.nrrd`` (never a file inside the series folder, which holds only
DICOM).

Domains: ``domain_from`` names a metadata key (``Manufacturer``, ``ManufacturersModelName``, ``InstitutionName``,
``MagneticFieldStrength``...), so series from several scanners split by the scanner that made them, or is
``folder``: the first folder level under the root (``root/siteA/...``). Without it every series is in one domain
named after the root (a ``patient/series`` layout must not make a domain of each patient).
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from pathlib import Path

from medattn.data.dicom import is_series_folder
from medattn.data.importers.common import DEFAULT_LABELS, finish, is_label_stem, rel, slug
from medattn.data.io import IMAGE_SUFFIXES, has_suffix, series_info, strip_suffix
from medattn.data.manifest import Case, Channel, Domain, Manifest, normalise_modality
from medattn.errors import DataError, ManifestError

log = logging.getLogger(__name__)


def find_series_folders(root: Path, limit: int | None = None) -> list[Path]:
    """The folders under ``root`` (``root`` included) that hold DICOM files, sorted, as ``root / ...`` paths;
    hidden folders are skipped and linked folders followed (once: a link back up is not walked again)."""
    found: list[Path] = []
    seen: set[Path] = set()
    for here, dirs, _files in os.walk(root, followlinks=True):
        real = Path(here).resolve()
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if is_series_folder(here):
            found.append(Path(here))
            if limit is not None and len(found) >= limit:
                break
    return sorted(found)


def has_series(root: Path) -> bool:
    """Whether ``root`` holds at least one DICOM series folder (its own files, or a folder below)."""
    return bool(find_series_folders(root, limit=1))


def import_dicom(root: Path, *, domain_from: str | None = None, modality: str | None = None) -> Manifest:
    """A manifest of the series folders under ``root`` (see the module docstring).

    A series folder that is not one regular volume is listed all the same (with no metadata, its domain from the
    folder layout), so that every command's case check refuses it by name and the other cases still run.

    Raises:
        ManifestError: no series folder, or ``domain_from`` names a key that a series' headers lack (naming it).

    A folder whose slices (SOPInstanceUIDs) are those of an earlier folder, a copy, is left out with a warning.
    """
    root = Path(root)
    folders = find_series_folders(root)
    if not folders:
        raise ManifestError("no folder holding DICOM files under the root", root)
    by_domain: dict[str, list[Case]] = defaultdict(list)
    modalities: set[str] = set()
    where: dict[str, Path] = {}  # SOPInstanceUID -> the first folder holding that slice
    for folder in folders:
        under = folder.relative_to(root).parts if folder != root else ()
        try:
            info = series_info(folder)
            meta = dict(info.metadata)
        except DataError as e:  # listed all the same: the case gate refuses it by name, the others still run
            log.warning("%s", e)
            meta = {}
        else:
            # a copy (a DICOMDIR export beside the series) shares its slices' SOPInstanceUIDs; the folders of one
            # series split by echo or phase share only the SeriesInstanceUID, and are cases of their own
            first = next((where[u] for u in info.instance_uids if u in where), None)
            if first is not None:
                log.warning(
                    "%s: left out, it holds slices of the series in %s (the same SOPInstanceUIDs): one scan would"
                    " be two cases, free to land in training and test; remove the copy",
                    folder,
                    rel(first, root),
                )
                continue
            where.update(dict.fromkeys(info.instance_uids, folder))
        if "Modality" in meta:
            modalities.add(str(meta["Modality"]))
        if domain_from == "folder" or (domain_from and not meta):
            domain = under[0] if len(under) > 1 else root.name
        elif domain_from:
            if domain_from not in meta:
                raise ManifestError(
                    f"--domain-from {domain_from!r}: the series' headers have no such attribute (they have "
                    f"{', '.join(sorted(meta))})",
                    folder,
                )
            domain = str(meta[domain_from])
        else:
            domain = root.name
        case_id = slug("_".join(under) if under else folder.name)
        # A root that is itself the series has no label inside the root: one beside it would leave the data root.
        label = _label_beside(folder)
        if label is not None and folder == root:
            log.warning("%s: left out, it lies outside the data root; import the folder above to use it", label)
            label = None
        by_domain[slug(domain)].append(
            Case(case_id, (rel(folder, root),), rel(label, root) if label is not None else None, meta)
        )
    if modality is None and len(modalities) > 1:
        raise ManifestError(
            f"the series have several modalities ({', '.join(sorted(modalities))}); import one modality at a time",
            root,
        )
    if modality is not None:
        stored = {normalise_modality(m) for m in modalities} - {normalise_modality(modality)}
        if stored:  # the series' own header says otherwise: a CT read as MR would be normalised as MR
            raise ManifestError(
                f"--modality {modality} but the series' headers say {', '.join(sorted(stored))}; DICOM carries its "
                "modality, so leave --modality out (or import the series of one modality)",
                root,
            )
    channel = Channel("image", normalise_modality(modality or (modalities.pop() if modalities else "MR")))
    domains = tuple(Domain(name, tuple(cases)) for name, cases in sorted(by_domain.items()))
    labelled = sum(c.label is not None for d in domains for c in d.cases)
    log.info("%s: %d DICOM series in %d domain(s), %d with a label", root, len(folders), len(domains), labelled)
    manifest = Manifest(
        name=root.name, channels=(channel,), labels=dict(DEFAULT_LABELS), domains=domains, base_dir=root.resolve()
    )
    return finish(manifest, root)


def _label_beside(folder: Path) -> Path | None:
    """``<folder>_<label word>.<image suffix>`` next to ``folder`` (the shortest such name), if any."""
    parent = folder.parent
    if folder.name == "" or not parent.is_dir():
        return None
    cands = [
        p
        for p in parent.iterdir()
        if p.is_file()
        and has_suffix(p, IMAGE_SUFFIXES)
        and strip_suffix(p.name).startswith(folder.name + "_")
        and is_label_stem(strip_suffix(p.name)[len(folder.name) + 1 :])
    ]
    return min(cands, key=lambda p: len(p.name)) if cands else None
