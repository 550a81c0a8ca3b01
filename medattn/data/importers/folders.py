"""A root with one sub-folder per domain (scanner or site), each holding case folders, a dataset or image pairs.

Any of these (the root, a domain or case folder, a file) may be a symbolic link; paths are listed as found.
"""

from __future__ import annotations

import logging
from collections import Counter
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
    subdirs = _data_folders(root)
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
        for img in _visible_files(dom / "imagesTr"):
            if not has_suffix(img, IMAGE_SUFFIXES):
                continue
            lab = dom / "labelsTr" / img.name
            cases.append(
                Case(strip_suffix(img.name), (rel(img, root),), rel(lab, root) if is_listed_file(lab) else None)
            )
        return cases, [channels[0] if channels else "image"]
    case_dirs = _data_folders(dom)
    if case_dirs:
        return _case_folders(case_dirs, root, channels, label_name)
    # Flat files: every non-label image is a single-channel case; its label is the shortest "<stem>_<label word>".
    files = {strip_suffix(f.name): f for f in _visible_files(dom) if has_suffix(f, IMAGE_SUFFIXES)}
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


#: Files a medattn command writes into its output folder: a folder holding one is an output, not data.
_OUTPUT_MARKERS = ("predictions.json", "model.pt", "split.json", "postprocessing.json", "checkpoint.pt")


def _medattn_output(folder: Path) -> str | None:
    """The marker file that shows ``folder`` is a medattn output (a prediction, training or cross-validation
    folder), or None."""
    for name in _OUTPUT_MARKERS:
        if (folder / name).is_file():
            return name
    for child in sorted(folder.glob("fold_*")):
        if (child / "model.pt").is_file():
            return f"{child.name}/model.pt"
    return None


def _data_folders(parent: Path) -> list[Path]:
    """The sub-folders of ``parent`` that may hold data: not hidden, and not a medattn output written there (its
    predicted masks would be read as images), which is skipped with a warning."""
    folders = []
    for p in sorted(parent.iterdir()):
        if not p.is_dir() or p.name.startswith("."):
            continue
        marker = _medattn_output(p)
        if marker is not None:
            log.warning("%s: a medattn output folder (it holds %s), not data: skipped", p, marker)
            continue
        folders.append(p)
    return folders


def _visible_files(folder: Path) -> list[Path]:
    """The files of ``folder`` (see :func:`is_listed_file`), without hidden ones (``._T1.nii.gz``, the AppleDouble
    files that copies through macOS or exFAT leave, would otherwise read as images or labels), which are named."""
    files: list[Path] = []
    hidden: list[Path] = []
    for f in sorted(folder.iterdir()):
        if is_listed_file(f):
            (hidden if f.name.startswith(".") else files).append(f)
    if hidden:
        log.warning(
            "%s: %d hidden file(s) skipped (%s%s)",
            folder,
            len(hidden),
            ", ".join(h.name for h in hidden[:3]),
            ", ..." if len(hidden) > 3 else "",
        )
    return files


def _case_folders(
    case_dirs: list[Path], root: Path, channels: list[str] | None, label_name: str | None
) -> tuple[list[Case], list[str]]:
    """Cases of a domain whose cases are folders. A case folder that lacks a channel (of ``channels``, or of what
    most case folders hold when ``channels`` is not given) or holds an extra one is left out, named, and the others
    import; when no channel set is held by most case folders the import is refused, naming them."""
    found: list[tuple[Path, list[str], dict[str, Path], Path | None]] = []
    ambiguous: list[str] = []
    for cdir in case_dirs:
        images = [f for f in _visible_files(cdir) if has_suffix(f, IMAGE_SUFFIXES)]
        files = {strip_suffix(f.name): f for f in images}
        if not files:
            continue
        if len(files) < len(images):  # T1.nii beside T1.nii.gz: which one is the channel?
            stems = Counter(strip_suffix(f.name) for f in images)
            twins = sorted(f.name for f in images if stems[strip_suffix(f.name)] > 1)
            log.warning("%s: case left out: it holds %s, one channel in two files", cdir, twins)
            ambiguous.append(f"{cdir.name} holds {twins}")
            continue
        label = _pick_label(files, label_name, cdir)
        chan_files = {k: v for k, v in files.items() if k != label}
        found.append((cdir, sorted(chan_files), chan_files, files[label] if label else None))
    if not found:
        if ambiguous:
            raise ManifestError(f"no case folder left: {'; '.join(ambiguous[:3])}", case_dirs[0].parent)
        return [], []
    if channels:
        names = list(channels)
    else:
        counts = Counter(tuple(order) for _, order, _, _ in found)
        (top, n_top), *rest = counts.most_common()
        if rest and rest[0][1] == n_top:
            tied = {k: [c.name for c, o, _, _ in found if tuple(o) == k][:3] for k, n in counts.items() if n == n_top}
            raise ManifestError(
                "case folders disagree on their channel files and no set is held by most of them "
                + "; ".join(f"{list(k)}: {v}" for k, v in tied.items())
                + " (name the channels with --channels)",
                found[0][0].parent,
            )
        names = list(top)
    cases, left_out = [], []
    for cdir, order, chan_files, label_file in found:
        missing = [c for c in names if c not in chan_files]
        extra = [c for c in order if c not in names] if not channels else []
        if missing or extra:
            parts = [f"lacks channel file(s) {missing}"] if missing else []
            parts += [f"holds extra file(s) {extra}"] if extra else []
            why = " and ".join(parts)
            left_out.append(f"{cdir.name} {why}")
            log.warning("%s: case left out: it %s (the channels are %s)", cdir, why, names)
            continue
        cases.append(
            Case(
                cdir.name,
                tuple(rel(chan_files[c], root) for c in names),
                rel(label_file, root) if label_file else None,
                sidecar_meta(chan_files[names[0]]),
            )
        )
    if not cases:
        raise ManifestError(f"no case folder holds the channels {names}: {'; '.join(left_out[:3])}", found[0][0].parent)
    return cases, names


def _pick_label(files: Mapping[str, Path], label_name: str | None, where: Path) -> str | None:
    if label_name:
        if label_name in files:
            return label_name
        raise ManifestError(f"no label file named {label_name!r}; files: {sorted(files)}", where)
    cands = [s for s in files if is_label_stem(s)]
    if len(cands) > 1:
        raise ManifestError(f"several files look like labels {sorted(cands)}; choose one with --label-name", where)
    return cands[0] if cands else None
