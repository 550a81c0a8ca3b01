"""The manifest: one JSON description of a multi-domain segmentation dataset.

A manifest lists label names, channel names (with modality) and an ordered list of domains (scanners or sites). Each
domain holds cases; a case has one image path per channel (or a single 4D file holding every channel), an optional
label path and free-form metadata (manufacturer, model, field strength, institution, ...). Optional fixed splits name
case ids per split.

Paths inside a manifest are always relative POSIX paths, resolved against the data root: ``--data-root`` on the
command line when given, else the manifest's ``root`` entry (itself relative to the manifest's folder), else the
manifest's folder. A manifest never stores a machine's absolute path.

Case paths stay inside the data root: an image or label path is refused when it is absolute (``/x``, ``\\x``,
``C:x``), holds a ``..`` component (any, even ``a/../b``, which would stay inside: no case path needs one), or holds a
backslash (the separator is ``/`` on every platform). The check is on the path as written: a symbolic link inside the
data root may point anywhere, which is how data assembled from shared storage is read. The ``root`` entry alone may
climb with ``..`` (``"root": "../../shared/data"``), since it names where the data root is.

Example (``manifest.json``)::

    {
      "format": "medattn-manifest", "version": 1,
      "name": "Hippocampus",
      "channels": [{"name": "T1", "modality": "MR"}],
      "labels": {"0": "background", "1": "anterior", "2": "posterior"},
      "root": "../data/Task04_Hippocampus",
      "domains": [
        {"name": "vanderbilt", "metadata": {"institution": "VUMC"},
         "cases": [{"id": "hippocampus_001", "images": ["imagesTr/hippocampus_001.nii.gz"],
                    "label": "labelsTr/hippocampus_001.nii.gz"}],
         "splits": {"train": ["hippocampus_001"], "test": []}}
      ]
    }
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

from medattn.errors import ManifestError

MANIFEST_FORMAT = "medattn-manifest"
MANIFEST_VERSION = 1

#: Modalities the planner knows how to normalise; anything else is treated like MR (per-volume z-score).
KNOWN_MODALITIES = ("CT", "MR", "PET", "US", "OTHER")


def normalise_modality(value: str) -> str:
    """Map the free-text modality names found in dataset.json files ("MRI", "FLAIR", "ct") to KNOWN_MODALITIES."""
    v = value.strip().upper()
    if v in ("CT", "CBCT") or v.startswith("CT"):
        return "CT"
    if v in ("PET", "SPECT"):
        return "PET"
    if v in ("US", "ULTRASOUND"):
        return "US"
    mr_like = ("MR", "MRI", "T1", "T2", "FLAIR", "ADC", "DWI", "PD", "T1W", "T2W", "T2STAR", "T1GD", "T1CE", "MT")
    if v in mr_like or v.startswith(("MR", "T1", "T2")):
        return "MR"
    return "OTHER"


#: Split names whose cases are held out: never trained on, validated on or fingerprinted (``medattn.train.splits``).
TEST_SPLITS = ("test",)
#: Split names read as the validation side of a fixed split, in order of preference.
VALIDATION_SPLITS = ("val", "validation")
#: Every split name a manifest may use: the training side, the validation side and the held-out side.
KNOWN_SPLITS = ("train", *VALIDATION_SPLITS, *TEST_SPLITS)
#: nnU-Net's own folds (``splits_final.json``), kept as imported: subsets of the training cases, for the record.
NNUNET_FOLD_SPLIT = re.compile(r"fold\d+_(train|val)")
#: Share of a domain's training cases that validate when the domain names no validation split.
VAL_FRACTION = 0.2


@dataclass(frozen=True)
class Channel:
    """One input channel: a display name and a modality from KNOWN_MODALITIES."""

    name: str
    modality: str = "MR"


@dataclass(frozen=True)
class Case:
    """One case.

    Attributes:
        id: identifier unique within the manifest.
        images: one relative path per channel, or a single path to a 4D file holding every channel.
        label: relative path of the label map (integer voxel values from the manifest's labels), or None.
        metadata: free-form acquisition metadata (Manufacturer, MagneticFieldStrength, ...), JSON-serialisable.
    """

    id: str
    images: tuple[str, ...]
    label: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Domain:
    """A scanner, site or contrast: an ordered group of cases with optional fixed splits (split name -> case ids)."""

    name: str
    cases: tuple[Case, ...]
    metadata: Mapping[str, Any] = field(default_factory=dict)
    splits: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def held_out_ids(self) -> set[str]:
        """The case ids of this domain's test split(s) (:data:`TEST_SPLITS`): never trained or validated on."""
        return {i for s in TEST_SPLITS for i in self.splits.get(s, ())}

    def case(self, case_id: str) -> Case:
        for c in self.cases:
            if c.id == case_id:
                return c
        raise KeyError(f"domain {self.name!r} has no case {case_id!r}")


@dataclass(frozen=True)
class Manifest:
    """A multi-domain dataset. See the module docstring for the JSON form.

    Attributes:
        name: dataset name.
        channels: input channels, in the order the network sees them.
        labels: label value -> name; value 0 is background.
        domains: ordered domains (the order is the continual-learning order unless a command says otherwise).
        root: where relative paths start, as a path relative to the manifest file's folder (or None: that folder).
        base_dir: absolute folder the manifest was read from (not serialised).
        description: free text.
    """

    name: str
    channels: tuple[Channel, ...]
    labels: Mapping[int, str]
    domains: tuple[Domain, ...]
    root: str | None = None
    base_dir: Path | None = None
    description: str = ""

    # ---- queries -----------------------------------------------------------------------------------------------
    @property
    def num_channels(self) -> int:
        return len(self.channels)

    @property
    def foreground_labels(self) -> dict[int, str]:
        return {k: v for k, v in self.labels.items() if k != 0}

    @property
    def domain_names(self) -> list[str]:
        return [d.name for d in self.domains]

    def domain(self, name: str) -> Domain:
        for d in self.domains:
            if d.name == name:
                return d
        raise ManifestError(f"no domain {name!r}; the manifest has {self.domain_names}")

    def iter_cases(self) -> Iterator[tuple[Domain, Case]]:
        for d in self.domains:
            for c in d.cases:
                yield d, c

    @property
    def num_cases(self) -> int:
        return sum(len(d.cases) for d in self.domains)

    def without(self, case_ids: Collection[str]) -> Manifest:
        """A manifest without the cases ``case_ids`` (also dropped from the splits); a domain left empty goes."""
        drop = set(case_ids)
        if not drop:
            return self
        domains = []
        for d in self.domains:
            cases = tuple(c for c in d.cases if c.id not in drop)
            if cases:
                splits = {k: tuple(i for i in v if i not in drop) for k, v in d.splits.items()}
                domains.append(replace(d, cases=cases, splits=splits))
        return replace(self, domains=tuple(domains))

    def select(self, domains: Sequence[str]) -> Manifest:
        """A manifest holding only the named domains, in the order given."""
        return replace(self, domains=tuple(self.domain(n) for n in domains))

    def data_root(self, override: str | Path | None = None) -> Path:
        """The absolute folder that relative case paths are resolved against."""
        if override is not None:
            return Path(override).expanduser().resolve()
        base = self.base_dir if self.base_dir is not None else Path.cwd()
        return (base / self.root).resolve() if self.root else base.resolve()

    def resolve(self, rel: str, data_root: str | Path | None = None) -> Path:
        return self.data_root(data_root) / rel

    def datalist(
        self, domain: str | None = None, split: str | None = None, data_root: str | Path | None = None
    ) -> list[dict[str, Any]]:
        """Cases as MONAI-style dicts with absolute paths.

        Each dict has ``image`` (list of paths, one per channel file), ``label`` (path or absent), ``case_id``,
        ``domain`` and ``metadata``. With ``split``, only the cases the domain's split names (a domain without that
        split contributes nothing, so callers should check ``Domain.splits``).
        """
        out = []
        for d in self.domains if domain is None else (self.domain(domain),):
            wanted = None if split is None else set(d.splits.get(split, ()))
            for c in d.cases:
                if wanted is not None and c.id not in wanted:
                    continue
                item: dict[str, Any] = {
                    "image": [str(self.resolve(p, data_root)) for p in c.images],
                    "case_id": c.id,
                    "domain": d.name,
                    "metadata": dict(c.metadata),
                }
                if c.label is not None:
                    item["label"] = str(self.resolve(c.label, data_root))
                out.append(item)
        return out

    def split_datalist(self, split: str | None, data_root: str | Path | None = None) -> list[dict[str, Any]]:
        """:meth:`datalist` of every domain, restricted to the split named ``split`` when given (what the
        ``--split`` options of predict, evaluate and drift select).

        Raises:
            ManifestError: a domain without that split (so a typo never selects nothing in silence).
        """
        if split is not None:
            missing = [d.name for d in self.domains if split not in d.splits]
            if missing:
                have = sorted({k for d in self.domains for k in d.splits})
                raise ManifestError(
                    f"domain(s) {missing} have no split {split!r} (splits in this dataset: {have or 'none'})"
                )
        return self.datalist(split=split, data_root=data_root)

    # ---- (de)serialisation -------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "name": self.name,
            "description": self.description,
            "channels": [{"name": c.name, "modality": c.modality} for c in self.channels],
            "labels": {str(k): v for k, v in sorted(self.labels.items())},
        }
        if self.root is not None:
            doc["root"] = self.root
        doc["domains"] = []
        for d in self.domains:
            dd: dict[str, Any] = {"name": d.name}
            if d.metadata:
                dd["metadata"] = dict(d.metadata)
            cases = []
            for c in d.cases:
                cd: dict[str, Any] = {"id": c.id, "images": list(c.images)}
                if c.label is not None:
                    cd["label"] = c.label
                if c.metadata:
                    cd["metadata"] = dict(c.metadata)
                cases.append(cd)
            dd["cases"] = cases
            if d.splits:
                dd["splits"] = {k: list(v) for k, v in d.splits.items()}
            doc["domains"].append(dd)
        return doc

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], base_dir: Path | None = None, source: str | None = None) -> Manifest:
        """Parse and validate a manifest document; errors name ``source`` and the offending entry."""
        where = source or "manifest"

        def fail(msg: str) -> ManifestError:
            return ManifestError(msg, where)

        if not isinstance(doc, Mapping):
            raise fail(f"expected a JSON object, found {type(doc).__name__}")
        if doc.get("format", MANIFEST_FORMAT) != MANIFEST_FORMAT:
            raise fail(f"'format' is {doc.get('format')!r}, expected {MANIFEST_FORMAT!r}")
        version = doc.get("version", MANIFEST_VERSION)
        if not isinstance(version, int) or version > MANIFEST_VERSION:
            raise fail(f"manifest version {version!r} is newer than this medattn understands ({MANIFEST_VERSION})")
        for key in ("name", "channels", "labels", "domains"):
            if key not in doc:
                raise fail(f"missing required key {key!r}")
        channels_raw = doc["channels"]
        if not isinstance(channels_raw, list) or not channels_raw:
            raise fail("'channels' must be a non-empty list of {name, modality}")
        channels = []
        for i, ch in enumerate(channels_raw):
            if isinstance(ch, str):
                ch = {"name": ch}
            if not isinstance(ch, Mapping) or "name" not in ch:
                raise fail(f"channels[{i}] must be an object with a 'name'")
            channels.append(Channel(str(ch["name"]), normalise_modality(str(ch.get("modality", ch["name"])))))
        labels = _parse_labels(doc["labels"], fail)
        domains_raw = doc["domains"]
        if not isinstance(domains_raw, list) or not domains_raw:
            raise fail("'domains' must be a non-empty list")
        domains = []
        seen_ids: dict[str, str] = {}  # case id -> its domain
        seen_files: dict[tuple[str, ...], str] = {}  # a case's image files -> its id
        seen_domains: set[str] = set()
        for di, dd in enumerate(domains_raw):
            if not isinstance(dd, Mapping) or "name" not in dd or "cases" not in dd:
                raise fail(f"domains[{di}] must be an object with 'name' and 'cases'")
            dname = str(dd["name"])
            problem = name_problem(dname)
            if problem is not None:
                raise fail(f"domain name {dname!r}: {problem}")
            if dname in seen_domains:
                raise fail(f"domain name {dname!r} appears twice")
            seen_domains.add(dname)
            cases = []
            for ci, cd in enumerate(dd["cases"]):
                if not isinstance(cd, Mapping) or "id" not in cd or "images" not in cd:
                    raise fail(f"domains[{di}].cases[{ci}] must be an object with 'id' and 'images'")
                cid = str(cd["id"])
                problem = name_problem(cid)
                if problem is not None:
                    raise fail(f"domain {dname!r}, case id {cid!r}: {problem}")
                if cid in seen_ids:
                    where_ = (
                        f" (in domains {seen_ids[cid]!r} and {dname!r}; case ids must be unique across domains)"
                        if seen_ids[cid] != dname
                        else ""
                    )
                    raise fail(f"case id {cid!r} appears twice{where_}")
                seen_ids[cid] = dname
                images = cd["images"]
                if isinstance(images, str):
                    images = [images]
                if not images or not all(isinstance(p, str) for p in images):
                    raise fail(f"case {cid!r}: 'images' must be a path or a non-empty list of paths")
                if len(images) not in (1, len(channels)):
                    raise fail(
                        f"case {cid!r} lists {len(images)} image files but the manifest declares "
                        f"{len(channels)} channels (give one file per channel, or one 4D file)"
                    )
                files = tuple(PurePosixPath(p).as_posix() for p in images)
                if files in seen_files:  # one scan twice: k-fold could train on it and validate on it
                    raise fail(f"cases {seen_files[files]!r} and {cid!r} list the same image file(s) {list(files)[:2]}")
                seen_files[files] = cid
                entries = [(f"images[{i}]", p) for i, p in enumerate(images)]
                if cd.get("label"):
                    entries.append(("label", cd["label"]))
                for entry, p in entries:
                    problem = relative_path_problem(p)
                    if problem is not None:
                        raise fail(f"case {cid!r}, {entry}: {problem}")
                cases.append(
                    Case(
                        id=cid,
                        images=tuple(images),
                        label=cd.get("label") or None,
                        metadata=dict(cd.get("metadata", {})),
                    )
                )
            splits_raw = dd.get("splits", {}) or {}
            if not isinstance(splits_raw, Mapping):
                raise fail(f"domain {dname!r}: 'splits' must map split names to lists of case ids")
            ids = {c.id for c in cases}
            splits = {}
            for sname, sids in splits_raw.items():
                if str(sname) not in KNOWN_SPLITS and not NNUNET_FOLD_SPLIT.fullmatch(str(sname)):
                    hint = _SPLIT_HINTS.get(str(sname).lower())
                    raise fail(
                        f"domain {dname!r}: split {str(sname)!r} is not a split medattn reads "
                        f"({', '.join(KNOWN_SPLITS)}); its cases would be trained on, not held out"
                        + (f": rename it {hint!r}" if hint else "")
                    )
                unknown = [s for s in sids if s not in ids]
                if unknown:
                    raise fail(f"domain {dname!r}: split {sname!r} names unknown cases {unknown[:5]}")
                splits[str(sname)] = tuple(str(s) for s in sids)
            domains.append(Domain(dname, tuple(cases), dict(dd.get("metadata", {})), splits))
        root = doc.get("root")
        if root is not None:
            problem = relative_path_problem(root, may_climb=True)
            if problem is not None:
                raise fail(f"'root': {problem}")
        return cls(
            name=str(doc["name"]),
            channels=tuple(channels),
            labels=labels,
            domains=tuple(domains),
            root=root,
            base_dir=base_dir,
            description=str(doc.get("description", "")),
        )

    @classmethod
    def load(cls, path: str | Path) -> Manifest:
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as e:
            raise ManifestError(f"cannot read manifest: {e.strerror}", path) from e
        except UnicodeDecodeError:
            raise ManifestError(
                "not a manifest: the file is binary, not JSON text (an image? give a dataset folder, a manifest "
                "JSON or, where a command takes them, image files)",
                path,
            ) from None
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise ManifestError(f"not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})", path) from e
        return cls.from_dict(doc, base_dir=path.resolve().parent, source=str(path))

    def save(self, path: str | Path) -> Path:
        """Write the manifest atomically, with ``root`` rewritten relative to the new file's folder."""
        from medattn.data.io import atomic_write_text

        path = Path(path)
        target_dir = path.resolve().parent
        rel_root = os.path.relpath(self.data_root(), target_dir)
        doc = replace(self, root=PurePosixPath(Path(rel_root)).as_posix() if rel_root != "." else None).to_dict()
        atomic_write_text(path, json.dumps(doc, indent=2) + "\n")
        return path


def _parse_labels(raw: Any, fail: Any) -> dict[int, str]:
    """Accept {"0": "background", ...} (MSD) or {"background": 0, ...} (nnU-Net v2, integer values only)."""
    if not isinstance(raw, Mapping) or not raw:
        raise fail("'labels' must be a non-empty object")
    labels: dict[int, str] = {}
    for k, v in raw.items():
        try:
            if isinstance(v, int) and not isinstance(v, bool):
                labels[int(v)] = str(k)
            else:
                labels[int(k)] = str(v)
        except (TypeError, ValueError):
            raise fail(f"label entry {k!r}: {v!r} is neither 'value': 'name' nor 'name': value") from None
    if 0 not in labels:
        labels[0] = "background"
    if any(k < 0 for k in labels):
        raise fail(f"label values must be non-negative, found {sorted(labels)}")
    return dict(sorted(labels.items()))


#: Split names users write for medattn's (MSD's dataset.json says "training" and "test").
_SPLIT_HINTS = {
    "training": "train",
    "tr": "train",
    "valid": "val",
    "testing": "test",
    "ts": "test",
    "holdout": "test",
    "hold_out": "test",
    "held_out": "test",
    "heldout": "test",
}


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a domain name or case id, or None.

    Both become file and folder names of the outputs (``RUN/<method>/<ii>_<domain>/``, ``OUT/<case>.nii.gz``),
    so a name must be one path component that stays where it is put: no slash or backslash, not ``.`` or ``..``,
    not hidden (a leading ``.``), no control characters, not empty.

        >>> name_problem("hippocampus_001") is None
        True
        >>> name_problem("x/../../run").split(":")[0]
        "contains '/'"
    """
    if not name or not name.strip():
        return "is empty"
    for sep in ("/", "\\"):
        if sep in name:
            return (
                f"contains {sep!r}: a name becomes a file or folder name of the outputs, and must be one path component"
            )
    if name.startswith("."):
        return "starts with '.': a name becomes a file or folder name of the outputs, and would be hidden or climb"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        return "contains a control character"
    return None


def relative_path_problem(p: Any, *, may_climb: bool = False, root_name: str = "the data root") -> str | None:
    """Why ``p`` cannot be a path relative to the data root, or None when it can (the rule is in the module docstring).

    Args:
        p: the value found in a manifest or dataset.json.
        may_climb: accept ``..`` components (the manifest's ``root`` entry only).
        root_name: what the path is relative to, as the message should call it.

    Returns:
        A message naming the path, e.g. ``"path '../x.nii.gz' climbs out of the data root with '..'; ..."``.

    Example::

        >>> relative_path_problem("imagesTr/a.nii.gz") is None
        True
        >>> relative_path_problem("../../shared/data", may_climb=True) is None
        True
        >>> relative_path_problem("imagesTr/../../outside/a.nii.gz") is None
        False
    """
    if not isinstance(p, str) or not p:
        return f"path {p!r} must be a non-empty string"
    if p.startswith(("/", "\\")) or (len(p) > 1 and p[1] == ":" and p[0].isalpha()):
        return f"path {p!r} is absolute; it must be relative to {root_name}"
    if not may_climb and ".." in re.split(r"[/\\]", p):
        return (
            f"path {p!r} climbs out of {root_name} with '..'; paths must stay inside it "
            f"(put the file, or a symbolic link to it, under {root_name}; a manifest written by an earlier "
            "`medattn synth --from` is fixed by running that command again)"
        )
    if "\\" in p:
        return f"path {p!r} holds a backslash; paths are POSIX paths with '/' separators"
    return None
