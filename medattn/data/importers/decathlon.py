"""Medical Segmentation Decathlon and nnU-Net v2 raw dataset folders (both described by a ``dataset.json``)."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medattn.data.importers.common import entry_path, finish, read_dataset_json, slug
from medattn.data.io import strip_suffix
from medattn.data.manifest import Case, Channel, Domain, Manifest, normalise_modality
from medattn.errors import ManifestError


def import_dataset_json(root: Path, modality: str | None = None) -> Manifest:
    doc = read_dataset_json(root / "dataset.json")
    if "channel_names" in doc or "file_ending" in doc:
        return import_nnunet_v2(root, doc)
    return import_msd(root, doc, modality)


def import_msd(root: Path, doc: Mapping[str, Any] | None = None, modality: str | None = None) -> Manifest:
    """Medical Segmentation Decathlon layout. Only ``training`` entries (which have labels) become cases."""
    src = root / "dataset.json"
    doc = read_dataset_json(src) if doc is None else doc
    for key in ("labels", "training"):
        if key not in doc:
            raise ManifestError(f"MSD dataset.json has no {key!r} entry (keys found: {sorted(doc)})", src)
    mod = doc.get("modality", {"0": modality or "MR"})
    if not isinstance(mod, Mapping) or not mod:
        raise ManifestError('\'modality\' must map channel index to a name, e.g. {"0": "MRI"}', src)
    try:
        order = sorted(mod, key=int)
    except ValueError:
        raise ManifestError(f"'modality' keys must be channel indices, found {list(mod)}", src) from None
    chans = tuple(Channel(str(mod[k]), normalise_modality(modality or str(mod[k]))) for k in order)
    labels = _msd_labels(doc["labels"], src)
    training = doc["training"]
    if not isinstance(training, list) or not training:
        raise ManifestError("'training' must be a non-empty list of {image, label}", src)
    cases = []
    for i, entry in enumerate(training):
        if not isinstance(entry, Mapping) or "image" not in entry:
            raise ManifestError(f"training[{i}] must be an object with 'image' (and 'label'), found {entry!r}", src)
        listed = isinstance(entry["image"], list)
        images = entry["image"] if listed else [entry["image"]]
        if not images or not all(isinstance(p, str) for p in images):
            raise ManifestError(f"training[{i}].image must be a path or list of paths", src)
        images = [
            entry_path(p, f"training[{i}].image" + (f"[{j}]" if listed else ""), src) for j, p in enumerate(images)
        ]
        label = entry.get("label")
        if label is not None and not isinstance(label, str):
            raise ManifestError(f"training[{i}].label must be a path", src)
        cases.append(
            Case(
                id=strip_suffix(Path(images[0]).name),
                images=tuple(images),
                label=entry_path(label, f"training[{i}].label", src) if label else None,
            )
        )
    meta = {k: doc[k] for k in ("reference", "licence", "release") if k in doc}
    return _single_domain(root, doc, chans, labels, cases, metadata=meta)


def _msd_labels(raw: Any, src: Path) -> dict[int, str]:
    if not isinstance(raw, Mapping) or not raw:
        raise ManifestError("'labels' must be a non-empty object", src)
    out: dict[int, str] = {}
    for k, v in raw.items():
        if isinstance(v, int) and not isinstance(v, bool):  # nnU-Net style name -> value
            if str(k).lower() == "ignore":  # nnU-Net v2's unannotated voxels: not a class to learn or score
                raise ManifestError(
                    f"label 'ignore' ({v}) marks unannotated voxels (nnU-Net v2's sparse annotation); medattn has no "
                    "ignore label and would learn and score it as a class: remove those voxels' value, or use "
                    "nnU-Net for sparsely annotated data",
                    src,
                )
            out[v] = str(k)
            continue
        if isinstance(v, list):
            raise ManifestError(f"label {k!r} is region-based ({v}); medattn needs one integer value per label", src)
        try:
            out[int(k)] = str(v)
        except ValueError:
            raise ManifestError(f"label key {k!r} is not an integer value", src) from None
    out.setdefault(0, "background")
    return dict(sorted(out.items()))


def import_nnunet_v2(root: Path, doc: Mapping[str, Any] | None = None) -> Manifest:
    """nnU-Net v2 raw dataset folder (``Dataset123_Name``)."""
    src = root / "dataset.json"
    doc = read_dataset_json(src) if doc is None else doc
    for key in ("channel_names", "labels", "file_ending"):
        if key not in doc:
            raise ManifestError(f"nnU-Net v2 dataset.json has no {key!r} entry (keys found: {sorted(doc)})", src)
    cn = doc["channel_names"]
    if not isinstance(cn, Mapping) or not cn:
        raise ManifestError("'channel_names' must map channel index to a name", src)
    try:
        order = sorted(cn, key=int)
    except ValueError:
        raise ManifestError(f"'channel_names' keys must be channel indices, found {list(cn)}", src) from None
    chans = tuple(Channel(str(cn[k]), normalise_modality(str(cn[k]))) for k in order)
    labels = _msd_labels(doc["labels"], src)
    ending = str(doc["file_ending"])
    cases: list[Case] = []
    if isinstance(doc.get("dataset"), Mapping):  # explicit file list (nnU-Net v2 'dataset' key)
        # nnU-Net also accepts absolute paths here; a manifest does not, so those are refused by entry_path.
        for cid, entry in doc["dataset"].items():
            where = f"dataset[{str(cid)!r}]"
            if not isinstance(entry, Mapping) or not isinstance(entry.get("images"), list) or not entry["images"]:
                raise ManifestError(f"{where} must be an object with 'images' (a list of paths) and 'label'", src)
            label = entry.get("label")
            cases.append(
                Case(
                    id=str(cid),
                    images=tuple(entry_path(p, f"{where}.images[{j}]", src) for j, p in enumerate(entry["images"])),
                    label=entry_path(label, f"{where}.label", src) if label else None,
                )
            )
    else:
        images_dir = root / "imagesTr"
        if not images_dir.is_dir():
            raise ManifestError("nnU-Net v2 dataset has no imagesTr folder", root)
        pat = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})" + re.escape(ending) + "$")
        found: dict[str, dict[int, str]] = defaultdict(dict)
        for f in sorted(images_dir.iterdir()):
            m = pat.match(f.name)
            if m:
                found[m["case"]][int(m["ch"])] = f.name
            elif f.name.endswith(ending):
                raise ManifestError(f"image file {f.name!r} is not named {{case}}_{{XXXX}}{ending}", f)
        if not found:
            raise ManifestError(f"no {{case}}_{{XXXX}}{ending} files in imagesTr", images_dir)
        for cid, chs in sorted(found.items()):
            # A missing channel keeps its expected path, so `medattn validate` names it as a missing file.
            imgs = tuple(f"imagesTr/{cid}_{i:04d}{ending}" for i in range(len(chans)))
            extra = set(chs) - set(range(len(chans)))
            if extra:
                raise ManifestError(f"case {cid!r} has channel files {sorted(extra)} beyond channel_names", images_dir)
            cases.append(Case(id=cid, images=imgs, label=f"labelsTr/{cid}{ending}"))
    return _single_domain(root, doc, chans, labels, cases, splits=_nnunet_splits(root, {c.id for c in cases}))


def _single_domain(
    root: Path,
    doc: Mapping[str, Any],
    channels: tuple[Channel, ...],
    labels: dict[int, str],
    cases: list[Case],
    metadata: Mapping[str, Any] | None = None,
    splits: Mapping[str, tuple[str, ...]] | None = None,
) -> Manifest:
    """A one-domain manifest named after the dataset, validated through the manifest schema."""
    name = str(doc.get("name", root.name))
    domain = Domain(name=slug(name), cases=tuple(cases), metadata=dict(metadata or {}), splits=dict(splits or {}))
    manifest = Manifest(
        name=name,
        channels=channels,
        labels=labels,
        domains=(domain,),
        base_dir=root.resolve(),
        description=str(doc.get("description", "")),
    )
    return finish(manifest, root / "dataset.json")


def _nnunet_splits(root: Path, ids: set[str]) -> dict[str, tuple[str, ...]]:
    path = root / "splits_final.json"
    if not path.is_file():
        return {}
    folds = _read_dataset_json_list(path)
    splits: dict[str, tuple[str, ...]] = {}
    for k, fold in enumerate(folds):
        for part in ("train", "val"):
            sel = tuple(c for c in fold.get(part, []) if c in ids)
            splits[f"fold{k}_{part}"] = sel
    return splits


def _read_dataset_json_list(path: Path) -> list[dict[str, Any]]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ManifestError(f"cannot read splits: {e}", path) from e
    if not isinstance(doc, list):
        raise ManifestError("expected a list of {train, val} folds", path)
    return doc
