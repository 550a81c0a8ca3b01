"""Importers: turn the dataset layouts people actually have into a :class:`~medattn.data.manifest.Manifest`.

Supported layouts (``load_dataset`` picks one by looking at the folder):

* a medattn manifest JSON (or a folder holding ``manifest.json``);
* Medical Segmentation Decathlon: ``dataset.json`` with ``modality``, ``labels`` and ``training`` entries;
* nnU-Net v2: ``dataset.json`` with ``channel_names``, ``labels`` (name -> value) and ``file_ending``, images named
  ``{case}_{XXXX}{file_ending}`` in ``imagesTr`` and labels ``{case}{file_ending}`` in ``labelsTr``;
* BIDS: ``sub-*/[ses-*/]<datatype>/*.nii.gz`` with JSON sidecars, labels under ``derivatives/*/`` (the
  spine-generic ``_seg-manual`` / ``_dseg`` / ``_label-*`` conventions); sidecar keys or filename entities name the
  domains (``domain_from="Manufacturer"``, ``"suffix"``, ``"ses"``);
* folders of DICOM series, anywhere under the root: each series folder is a case, domains from a header attribute
  (``domain_from="Manufacturer"``) or the first folder level;
* a root with one sub-folder per domain, each holding one folder per case (several channel files and a mask, as in
  BraTS), an MSD/nnU-Net dataset, ``imagesTr``/``labelsTr`` folders, or flat ``image`` + ``image_seg`` pairs.

MONAI reads decathlon datalists but has no importer for nnU-Net v2 folders, BIDS derivatives or per-site folders,
and no notion of domains; that is what this module adds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from medattn.data.importers.bids import import_bids, is_bids, parse_bids_name
from medattn.data.importers.common import (
    DEFAULT_LABELS,
    SIDECAR_KEYS,
    as_list,
    finish,
    is_label_stem,
    read_sidecar,
)
from medattn.data.importers.decathlon import import_dataset_json, import_msd, import_nnunet_v2
from medattn.data.importers.dicom import has_series, import_dicom
from medattn.data.importers.folders import import_domain_folders
from medattn.data.manifest import Manifest
from medattn.errors import ManifestError

#: The folders of the MSD / nnU-Net layout, which a ``dataset.json`` describes.
MSD_FOLDERS = ("imagesTr", "imagesTs", "labelsTr", "labelsTs")

__all__ = [
    "DEFAULT_LABELS",
    "SIDECAR_KEYS",
    "import_bids",
    "import_dicom",
    "import_domain_folders",
    "import_folder",
    "import_msd",
    "import_nnunet_v2",
    "is_bids",
    "is_label_stem",
    "load_dataset",
    "parse_bids_name",
    "read_sidecar",
    "split_spec",
]


def load_dataset(
    spec: str | Path,
    *,
    domain_from: str | None = None,
    channels: str | Sequence[str] | None = None,
    label_name: str | None = None,
    modality: str | None = None,
    labels: str | Mapping[int, str] | None = None,
) -> Manifest:
    """Load a manifest or import a dataset folder; ``PATH:DOMAIN[,DOMAIN...]`` selects and orders domains.

    Args:
        spec: manifest JSON, dataset folder, or either with a ``:DOMAIN`` suffix.
        domain_from: BIDS: sidecar key or filename entity that names the domain of each image; DICOM series: a
            header attribute (``Manufacturer``...).
        channels: folder/BIDS layouts: channel file stems (or BIDS suffixes) in network order, e.g. ``"FLAIR,T1"``.
        label_name: folder layouts: stem (or stem ending) of the label file, e.g. ``"GT_W"``.
        modality: modality of every channel when the layout does not say (``"MR"``, ``"CT"``).
        labels: layouts that declare no labels (folders, BIDS, DICOM; they default to 0 background and 1
            foreground): the label values and names, ``"1=edema,2=core"`` (0 is background unless named) or a
            mapping. A manifest or ``dataset.json`` declares its own, and giving other ones is refused.

    Raises:
        ManifestError: naming the file or folder that could not be understood.
    """
    path, domains = split_spec(spec)
    chans = as_list(channels)
    declared = path.is_file() or (path / "manifest.json").is_file() or (path / "dataset.json").is_file()
    if path.is_file():
        if path.name == "dataset.json":
            manifest = import_dataset_json(path.parent, modality)
        else:
            manifest = Manifest.load(path)
    elif path.is_dir():
        manifest = import_folder(
            path, domain_from=domain_from, channels=chans, label_name=label_name, modality=modality
        )
    else:
        raise ManifestError("no such file or folder", path)
    if labels is not None:
        wanted = parse_labels(labels, path)
        if declared and wanted != dict(manifest.labels):
            raise ManifestError(
                f"--labels: the dataset declares its own labels {dict(manifest.labels)}; change them there", path
            )
        manifest = finish(replace(manifest, labels=wanted), path)
    if domains:
        manifest = manifest.select(domains)
    return manifest


def parse_labels(labels: str | Mapping[int, str], where: Path | None = None) -> dict[int, str]:
    """``"1=edema,2=core"`` (or a mapping) as ``{0: "background", 1: "edema", 2: "core"}``; 0 is background unless
    named. Raises ManifestError naming the entry that is not ``VALUE=NAME`` with a whole VALUE >= 0."""
    if isinstance(labels, Mapping):
        items = [(str(k), str(v)) for k, v in labels.items()]
    else:
        items = []
        for entry in (e.strip() for e in str(labels).split(",") if e.strip()):
            value, sep, name = entry.partition("=")
            if not sep or not name.strip():
                raise ManifestError(f"--labels: {entry!r} is not VALUE=NAME (e.g. 1=edema,2=core)", where)
            items.append((value.strip(), name.strip()))
    out: dict[int, str] = {}
    for value, name in items:
        if not value.isdigit():
            raise ManifestError(f"--labels: label value {value!r} is not a whole number >= 0", where)
        if int(value) in out:
            raise ManifestError(f"--labels: label value {value} is named twice", where)
        out[int(value)] = name
    out.setdefault(0, "background")
    return dict(sorted(out.items()))


def split_spec(spec: str | Path) -> tuple[Path, list[str]]:
    """``"data/x:siteA,siteB"`` -> (Path("data/x"), ["siteA", "siteB"]); a plain existing path has no domains."""
    s = str(spec)
    if Path(s).exists() or ":" not in s:
        return Path(s), []
    head, _, tail = s.rpartition(":")
    return Path(head), [d for d in tail.split(",") if d]


def import_folder(
    root: Path,
    *,
    domain_from: str | None = None,
    channels: list[str] | None = None,
    label_name: str | None = None,
    modality: str | None = None,
) -> Manifest:
    """Recognise the layout of ``root`` and import it (see the module docstring)."""
    root = Path(root)
    if (root / "manifest.json").is_file():
        return Manifest.load(root / "manifest.json")
    if (root / "dataset.json").is_file():
        return import_dataset_json(root, modality)
    if is_bids(root):
        return import_bids(root, domain_from=domain_from, channels=channels, modality=modality, label_name=label_name)
    if has_series(root):
        return import_dicom(root, domain_from=domain_from, modality=modality)
    msd = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name in MSD_FOLDERS)
    if any(name.startswith("labels") for name in msd):
        # an MSD / nnU-Net layout without its description: as per-domain folders, "labelsTr" would be a domain and
        # its label maps segmented or trained on as images
        raise ManifestError(
            f"has {', '.join(f'{n}/' for n in msd)} (the MSD / nnU-Net layout) but no dataset.json that says which "
            "files are images and which labels; add the dataset.json, or give the images folder alone (e.g. "
            f"{root / 'imagesTr'})",
            root,
        )
    return import_domain_folders(root, channels=channels, label_name=label_name, modality=modality)
