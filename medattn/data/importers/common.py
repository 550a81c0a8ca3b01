"""Pieces every importer shares: label-file detection, sidecar metadata, path and name helpers.

Paths are listed as found in the dataset folder: a case file or folder that is a symbolic link (data assembled from
shared storage) keeps the link's own path in the manifest and is read through the link.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medattn.data.io import strip_suffix
from medattn.data.manifest import Manifest, relative_path_problem
from medattn.errors import ManifestError

log = logging.getLogger(__name__)


#: Filename tokens (split on _ - .) that mark a file as a label map rather than an image channel; any token
#: containing "seg" counts too (seg, dseg, gmseg, segmentation).
LABEL_TOKENS = frozenset({"label", "labels", "mask", "masks", "gt", "manual", "goldstandard", "truth", "annotation"})


def is_label_stem(stem: str) -> bool:
    """True for names like ``GT_W``, ``t2_seg-manual``, ``mt1_gmseg_goldstandard``, ``sub-01_T1w_dseg``."""
    tokens = [t.lower() for t in re.split(r"[_\-.]", stem) if t]
    return any("seg" in t or t in LABEL_TOKENS for t in tokens)


#: Sidecar keys copied into case metadata (BIDS names; what drift reports and domain splits use).
SIDECAR_KEYS = (
    "Modality",
    "Manufacturer",
    "ManufacturersModelName",
    "MagneticFieldStrength",
    "InstitutionName",
    "StationName",
    "DeviceSerialNumber",
    "SoftwareVersions",
    "SeriesDescription",
    "ProtocolName",
    "MRAcquisitionType",
    "SliceThickness",
    "EchoTime",
    "RepetitionTime",
    "FlipAngle",
    "BodyPartExamined",
)

DEFAULT_LABELS = {0: "background", 1: "foreground"}


def read_dataset_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except OSError as e:
        raise ManifestError(f"cannot read: {e.strerror}", path) from e
    except UnicodeDecodeError:
        raise ManifestError("not valid JSON: the file is binary, not text", path) from None
    except json.JSONDecodeError as e:
        raise ManifestError(f"not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})", path) from e
    if not isinstance(doc, dict):
        raise ManifestError(f"expected a JSON object, found {type(doc).__name__}", path)
    return doc


def read_sidecar(image: Path) -> dict[str, Any]:
    """The JSON sidecar beside an image (``x.nii.gz`` -> ``x.json``), or {} when there is none or it is invalid."""
    side = image.with_name(strip_suffix(image.name) + ".json")
    if not side.is_file():
        return {}
    try:
        doc = json.loads(side.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        log.warning("%s: ignoring unreadable sidecar (%s)", side, e)
        return {}
    return doc if isinstance(doc, dict) else {}


def sidecar_meta(image: Path) -> dict[str, Any]:
    side = read_sidecar(image)
    return {k: side[k] for k in SIDECAR_KEYS if k in side}


def finish(manifest: Manifest, src: Path) -> Manifest:
    """Re-validate through the JSON schema so an importer can never produce a manifest that ``load`` rejects."""
    return Manifest.from_dict(manifest.to_dict(), base_dir=manifest.base_dir, source=str(src))


def clean_rel(p: str) -> str:
    return p[2:] if p.startswith("./") else p


def entry_path(p: Any, entry: str, src: Path) -> str:
    """A path entry of a dataset.json, cleaned (``./imagesTr/x`` -> ``imagesTr/x``) and checked to stay inside.

    Args:
        p: the value found in the file.
        entry: where it was found, as the user would look it up (``training[3].image``).
        src: the dataset.json, named in the error.

    Raises:
        ManifestError: ``p`` is not a string, is absolute or climbs out of the dataset folder with ``..``.
    """
    problem = relative_path_problem(p, root_name="the dataset folder")
    if problem is not None:
        raise ManifestError(f"{entry}: {problem}", src)
    return clean_rel(p)


def rel(p: Path, root: Path) -> str:
    """``p`` relative to ``root`` as a POSIX path, as found in the folder: symbolic links are not followed.

    ``p`` must have been found under ``root`` (``root / ...``, ``root.iterdir()``), so a case file or folder that
    is a link to shared storage is listed by the link's own path, and the root itself may be reached through a link.

    Raises:
        ManifestError: ``p`` is not under ``root``.
    """
    try:
        return p.absolute().relative_to(root.absolute()).as_posix()
    except ValueError:
        raise ManifestError(f"{p} is not inside the dataset folder", root) from None


def is_listed_file(p: Path) -> bool:
    """A file, or a dangling symbolic link (kept so that ``medattn validate`` reports it as missing)."""
    return p.is_file() or (p.is_symlink() and not p.exists())


def walk_files(folder: Path) -> list[Path]:
    """Every file under ``folder`` (sorted, as ``folder / ...`` paths), descending into linked folders too.

    ``Path.glob("**")`` skips folders that are symbolic links; this does not, and stops at a link back to a folder
    it is already inside (a cycle). Dangling links are listed, see :func:`is_listed_file`.
    """
    out: list[Path] = []

    def visit(d: Path, inside: frozenset[str]) -> None:
        try:
            entries = sorted(d.iterdir())
        except OSError as e:
            log.warning("%s: folder skipped (%s)", d, e.strerror or e)
            return
        for p in entries:
            if p.is_dir():
                real = os.path.realpath(p)
                if real in inside:
                    log.warning("%s: link back to an enclosing folder, not followed", p)
                    continue
                visit(p, inside | {real})
            elif is_listed_file(p):
                out.append(p)

    if folder.is_dir():
        visit(folder, frozenset({os.path.realpath(folder)}))
    return out


def slug(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_.\-]+", "_", str(name).strip()).strip("_")
    return s or "default"


def guess_modality(suffix: str, path: Path) -> str:
    parts = {p.lower() for p in path.parts}
    if "ct" in parts or suffix.lower() == "ct":
        return "CT"
    return "MR"


def as_list(v: str | Sequence[str] | None) -> list[str] | None:
    if v is None:
        return None
    if isinstance(v, str):
        return [s.strip() for s in v.split(",") if s.strip()]
    return list(v)
