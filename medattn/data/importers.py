"""Importers: turn the dataset layouts people actually have into a :class:`~medattn.data.manifest.Manifest`.

Supported layouts (``load_dataset`` picks one by looking at the folder):

* a medattn manifest JSON (or a folder holding ``manifest.json``);
* Medical Segmentation Decathlon: ``dataset.json`` with ``modality``, ``labels`` and ``training`` entries;
* nnU-Net v2: ``dataset.json`` with ``channel_names``, ``labels`` (name -> value) and ``file_ending``, images named
  ``{case}_{XXXX}{file_ending}`` in ``imagesTr`` and labels ``{case}{file_ending}`` in ``labelsTr``;
* BIDS: ``sub-*/[ses-*/]<datatype>/*.nii.gz`` with JSON sidecars, labels under ``derivatives/*/`` (the
  spine-generic ``_seg-manual`` / ``_dseg`` / ``_label-*`` conventions); sidecar keys or filename entities name the
  domains (``domain_from="Manufacturer"``, ``"suffix"``, ``"ses"``);
* a root with one sub-folder per domain, each holding one folder per case (several channel files and a mask, as in
  BraTS), an MSD/nnU-Net dataset, ``imagesTr``/``labelsTr`` folders, or flat ``image`` + ``image_seg`` pairs.

MONAI reads decathlon datalists but has no importer for nnU-Net v2 folders, BIDS derivatives or per-site folders,
and no notion of domains; that is what this module adds.
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medattn.data.io import IMAGE_SUFFIXES, has_suffix, strip_suffix
from medattn.data.manifest import Case, Channel, Domain, Manifest, normalise_modality
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


def load_dataset(
    spec: str | Path,
    *,
    domain_from: str | None = None,
    channels: str | Sequence[str] | None = None,
    label_name: str | None = None,
    modality: str | None = None,
) -> Manifest:
    """Load a manifest or import a dataset folder; ``PATH:DOMAIN[,DOMAIN...]`` selects and orders domains.

    Args:
        spec: manifest JSON, dataset folder, or either with a ``:DOMAIN`` suffix.
        domain_from: BIDS only: sidecar key or filename entity that names the domain of each image.
        channels: folder/BIDS layouts: channel file stems (or BIDS suffixes) in network order, e.g. ``"FLAIR,T1"``.
        label_name: folder layouts: stem (or stem ending) of the label file, e.g. ``"GT_W"``.
        modality: modality of every channel when the layout does not say (``"MR"``, ``"CT"``).

    Raises:
        ManifestError: naming the file or folder that could not be understood.
    """
    path, domains = split_spec(spec)
    chans = _as_list(channels)
    if path.is_file():
        if path.name == "dataset.json":
            manifest = _import_dataset_json(path.parent, modality)
        else:
            manifest = Manifest.load(path)
    elif path.is_dir():
        manifest = import_folder(
            path, domain_from=domain_from, channels=chans, label_name=label_name, modality=modality
        )
    else:
        raise ManifestError("no such file or folder", path)
    if domains:
        manifest = manifest.select(domains)
    return manifest


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
        return _import_dataset_json(root, modality)
    if is_bids(root):
        return import_bids(root, domain_from=domain_from, channels=channels, modality=modality)
    return import_domain_folders(root, channels=channels, label_name=label_name, modality=modality)


# ---- MSD and nnU-Net v2 ----------------------------------------------------------------------------------------


def _read_dataset_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except OSError as e:
        raise ManifestError(f"cannot read: {e.strerror}", path) from e
    except json.JSONDecodeError as e:
        raise ManifestError(f"not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})", path) from e
    if not isinstance(doc, dict):
        raise ManifestError(f"expected a JSON object, found {type(doc).__name__}", path)
    return doc


def _import_dataset_json(root: Path, modality: str | None = None) -> Manifest:
    doc = _read_dataset_json(root / "dataset.json")
    if "channel_names" in doc or "file_ending" in doc:
        return import_nnunet_v2(root, doc)
    return import_msd(root, doc, modality)


def import_msd(root: Path, doc: Mapping[str, Any] | None = None, modality: str | None = None) -> Manifest:
    """Medical Segmentation Decathlon layout. Only ``training`` entries (which have labels) become cases."""
    src = root / "dataset.json"
    doc = _read_dataset_json(src) if doc is None else doc
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
        images = entry["image"] if isinstance(entry["image"], list) else [entry["image"]]
        if not all(isinstance(p, str) for p in images):
            raise ManifestError(f"training[{i}].image must be a path or list of paths", src)
        images = [_clean_rel(p) for p in images]
        label = entry.get("label")
        if label is not None and not isinstance(label, str):
            raise ManifestError(f"training[{i}].label must be a path", src)
        cases.append(
            Case(
                id=strip_suffix(Path(images[0]).name), images=tuple(images), label=_clean_rel(label) if label else None
            )
        )
    name = str(doc.get("name", root.name))
    meta = {k: doc[k] for k in ("reference", "licence", "release") if k in doc}
    domain = Domain(name=_slug(name), cases=tuple(cases), metadata=meta)
    return _finish(
        Manifest(
            name=name,
            channels=chans,
            labels=labels,
            domains=(domain,),
            base_dir=root.resolve(),
            description=str(doc.get("description", "")),
        ),
        src,
    )


def _msd_labels(raw: Any, src: Path) -> dict[int, str]:
    if not isinstance(raw, Mapping) or not raw:
        raise ManifestError("'labels' must be a non-empty object", src)
    out: dict[int, str] = {}
    for k, v in raw.items():
        if isinstance(v, int) and not isinstance(v, bool):  # nnU-Net style name -> value
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
    doc = _read_dataset_json(src) if doc is None else doc
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
        for cid, entry in doc["dataset"].items():
            cases.append(
                Case(
                    id=str(cid),
                    images=tuple(_clean_rel(p) for p in entry["images"]),
                    label=_clean_rel(entry["label"]) if entry.get("label") else None,
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
    name = str(doc.get("name", root.name))
    domain = Domain(name=_slug(name), cases=tuple(cases), splits=_nnunet_splits(root, {c.id for c in cases}))
    return _finish(
        Manifest(
            name=name,
            channels=chans,
            labels=labels,
            domains=(domain,),
            base_dir=root.resolve(),
            description=str(doc.get("description", "")),
        ),
        src,
    )


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


# ---- BIDS ------------------------------------------------------------------------------------------------------

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


def read_sidecar(image: Path) -> dict[str, Any]:
    """The JSON sidecar beside an image (``x.nii.gz`` -> ``x.json``), or {} when there is none or it is invalid."""
    side = image.with_name(strip_suffix(image.name) + ".json")
    if not side.is_file():
        return {}
    try:
        doc = json.loads(side.read_text())
    except (OSError, json.JSONDecodeError) as e:
        log.warning("%s: ignoring unreadable sidecar (%s)", side, e)
        return {}
    return doc if isinstance(doc, dict) else {}


def import_bids(
    root: Path,
    *,
    domain_from: str | None = None,
    channels: list[str] | None = None,
    modality: str | None = None,
) -> Manifest:
    """Import a BIDS folder: each image with a label under ``derivatives/`` becomes a case.

    With ``channels`` (BIDS suffixes, e.g. ``["T1w", "T2w"]``) images of one subject/session are grouped into
    multi-channel cases. ``domain_from`` names each case's domain from a sidecar key (e.g. ``Manufacturer``) or
    a filename entity (``suffix``, ``ses``, ``acq``, ``sub``); without it there is a single domain.
    """
    root = Path(root)
    images = [
        p
        for p in sorted(root.glob("sub-*/**/*"))
        if p.is_file() and has_suffix(p, IMAGE_SUFFIXES) and not is_label_stem(parse_bids_name(p.name)[1])
    ]
    if not images:
        raise ManifestError("BIDS folder has no sub-*/…/*.nii(.gz) images", root)
    label_files = [
        p for p in sorted((root / "derivatives").glob("**/*")) if p.is_file() and has_suffix(p, IMAGE_SUFFIXES)
    ]

    def find_label(img: Path) -> Path | None:
        stem = strip_suffix(img.name)
        cands = [
            p
            for p in label_files
            if strip_suffix(p.name).startswith(stem + "_") and is_label_stem(strip_suffix(p.name)[len(stem) :])
        ]
        # Prefer whole-structure masks ("_seg-manual", "_dseg") over sub-structure ones ("_gmseg"): shortest name.
        return min(cands, key=lambda p: len(p.name)) if cands else None

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
            modalities.setdefault(s, modality or str(sc.get("Modality", _guess_modality(s, p))))
        if domain_from:
            if domain_from in ("suffix", *ent.keys()):
                dname = suffix if domain_from == "suffix" else ent[domain_from]
            elif domain_from in side:
                dname = str(side[domain_from])
            else:
                raise ManifestError(
                    f"--domain-from {domain_from!r}: neither a filename entity nor a key of the sidecar of "
                    f"{paths[0].name} (keys: {sorted(side)[:12]}...)",
                    paths[0],
                )
        else:
            dname = _slug(root.name)
        dname = _slug(dname)
        cid = strip_suffix(paths[0].name) if not channels else "_".join(f"{k}-{v}" for k, v in sorted(ent.items()))
        cases_by_domain[dname].append(
            Case(id=cid, images=tuple(_rel(p, root) for p in paths), label=_rel(label, root), metadata=meta)
        )
        if domain_from and domain_from in side:
            domain_meta.setdefault(dname, {domain_from: side[domain_from]})
    if unlabelled:
        log.info("%s: %d image(s) without a label under derivatives/ were left out", root, unlabelled)
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
    return _finish(
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


# ---- one folder per domain -------------------------------------------------------------------------------------


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
            sub = _import_dataset_json(dom, modality)
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
            domains.append(Domain(_slug(dom.name), sub_cases))
            continue
        cases, names = _import_domain_dir(dom, root, channels, label_name)
        if not cases:
            log.warning("%s: no cases found, folder skipped", dom)
            continue
        if chan_names is None:
            chan_names = names
        elif names != chan_names:
            raise ManifestError(f"domain has channels {names}, but earlier domains have {chan_names}", dom)
        domains.append(Domain(_slug(dom.name), tuple(cases)))
    if not domains or chan_names is None:
        raise ManifestError("no domain folder holds any case", root)
    chans = tuple(Channel(n, normalise_modality(modality or n)) for n in chan_names)
    return _finish(
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
            cases.append(Case(strip_suffix(img.name), (_rel(img, root),), _rel(lab, root) if lab.exists() else None))
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
                    tuple(_rel(chan_files[c], root) for c in order),
                    _rel(files[label], root) if label else None,
                    _sidecar_meta(chan_files[order[0]]),
                )
            )
        return cases, names or []
    # Flat files: every non-label image is a single-channel case; its label is the shortest "<stem>_<label word>".
    files = {strip_suffix(f.name): f for f in sorted(dom.iterdir()) if f.is_file() and has_suffix(f, IMAGE_SUFFIXES)}
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
                (_rel(files[stem], root),),
                _rel(files[lab_stem], root) if lab_stem else None,
                _sidecar_meta(files[stem]),
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


def _sidecar_meta(image: Path) -> dict[str, Any]:
    side = read_sidecar(image)
    return {k: side[k] for k in SIDECAR_KEYS if k in side}


# ---- helpers ---------------------------------------------------------------------------------------------------


def _finish(manifest: Manifest, src: Path) -> Manifest:
    """Re-validate through the JSON schema so an importer can never produce a manifest that ``load`` rejects."""
    return Manifest.from_dict(manifest.to_dict(), base_dir=manifest.base_dir, source=str(src))


def _clean_rel(p: str) -> str:
    return p[2:] if p.startswith("./") else p


def _rel(p: Path, root: Path) -> str:
    return p.resolve().relative_to(root.resolve()).as_posix()


def _slug(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_.\-]+", "_", str(name).strip()).strip("_")
    return s or "default"


def _guess_modality(suffix: str, path: Path) -> str:
    parts = {p.lower() for p in path.parts}
    if "ct" in parts or suffix.lower() == "ct":
        return "CT"
    return "MR"


def _as_list(v: str | Sequence[str] | None) -> list[str] | None:
    if v is None:
        return None
    if isinstance(v, str):
        return [s.strip() for s in v.split(",") if s.strip()]
    return list(v)
