"""What ``medattn predict`` reads: one image file or DICOM series folder, a folder of them, or a dataset (manifest,
MSD, ...).

Each input becomes an :class:`InputCase` whose id names the output file (``OUTPUT/<id>.nii.gz``), so ``medattn
evaluate`` can match predictions to a dataset's cases by file stem.

Folders of images follow nnU-Net's test-folder convention when their files end in a 4-digit channel index
(``case_0000.nii.gz``, ``case_0001.nii.gz``): those are grouped into one multi-channel case ``case``. Any other
image file in a folder is a case of its own (a 4D file may hold every channel).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from medattn.data.dicom import is_series_folder
from medattn.data.io import IMAGE_SUFFIXES, has_suffix, strip_suffix
from medattn.errors import DataError, ManifestError

_CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")

#: What an input names: one image file, a folder of image files (not a dataset), or a dataset.
InputKind = Literal["image", "folder", "dataset"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InputCase:
    """One volume to segment.

    Attributes:
        case_id: names the output file; unique among the inputs of a run.
        images: absolute paths, one per channel file in network order, or a single (3D, or 4D multi-channel) file.
        domain: the dataset domain it came from, if any.
        channels: the channel names the input gives (a dataset's), or None when it names none (bare files, or
            nnU-Net-style ``_0000`` files, whose order is their number); matched against the model's by
            :func:`medattn.data.gate.channel_mismatch`.
        label: the dataset's label file of the case, if any (never read by predict; protected from outputs).
    """

    case_id: str
    images: tuple[Path, ...]
    domain: str | None = None
    channels: tuple[str, ...] | None = None
    label: Path | None = None

    def transform_input(self) -> dict[str, Any]:
        """The dict the inference transforms read (``image``: one path, or the list of channel paths)."""
        paths = [str(p) for p in self.images]
        return {"image": paths[0] if len(paths) == 1 else paths}


def collect_inputs(
    spec: str | Path,
    *,
    num_channels: int = 1,
    data_root: str | Path | None = None,
    import_options: dict[str, Any] | None = None,
    split: str | None = None,
) -> list[InputCase]:
    """The cases ``spec`` names, in a stable order.

    Args:
        spec: an image file; a folder holding image files (see the module docstring); or anything
            :func:`medattn.data.importers.load_dataset` reads (manifest JSON, MSD / nnU-Net / BIDS / per-domain
            folder, with ``:DOMAIN`` to select domains).
        num_channels: channels the model expects (used to group nnU-Net-style channel files).
        data_root: overrides a manifest's root.
        import_options: ``domain_from``, ``channels``, ``label_name``, ``modality``, ``labels`` for folder datasets.
        split: only the cases of the dataset's split of this name (e.g. ``test``); needs a dataset input.

    Raises:
        DataError: nothing to predict, two inputs that would write the same output name, or ``split`` given for
            image files or a dataset without that split.
        ManifestError: a dataset that cannot be understood (from the importers).
    """
    from medattn.data.importers import load_dataset, split_spec

    path, domains = split_spec(spec)
    if not path.exists():
        raise DataError("input does not exist (expected an image file, a folder or a dataset)", path)
    cases: list[InputCase]
    kind = input_kind(spec)
    if kind == "image":
        cases = [InputCase(case_name(path), (path.resolve(),))]
        if path.is_dir():  # a series folder: series in folders below it are other inputs, not predicted with it
            nested = sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
            if nested:
                log.warning(
                    "%s: only the series in this folder is predicted, not what its sub-folder(s) %s hold; give"
                    " each series folder as its own input, or the folder above them",
                    path,
                    ", ".join(nested[:5]) + (" ..." if len(nested) > 5 else ""),
                )
    elif kind == "folder":
        cases = _folder_cases(path, num_channels)
        skipped = sorted(
            d.name
            for d in path.iterdir()
            if d.is_dir() and not d.name.startswith(".") and not is_series_folder(d) and _image_files(d)
        )
        if skipped:  # only the images directly in the folder are its cases: say which images are left out
            log.warning(
                "%s: the image files in its sub-folder(s) %s are not predicted (only those directly in it are); "
                "give each folder as its own input",
                path,
                ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else ""),
            )
    elif path.is_dir() and not domains and not _is_dataset(path) and not any(p.is_dir() for p in path.iterdir()):
        raise DataError(f"the folder holds no image files ({', '.join(IMAGE_SUFFIXES)})", path)
    else:
        manifest = load_dataset(spec, **(import_options or {}))
        try:
            items = manifest.split_datalist(split, data_root)
        except ManifestError as e:
            raise DataError(str(e), path) from None
        names = tuple(ch.name for ch in manifest.channels)
        cases = [
            InputCase(
                d["case_id"],
                tuple(Path(p) for p in d["image"]),
                d.get("domain"),
                names,
                Path(d["label"]) if d.get("label") else None,
            )
            for d in items
        ]
        if split is not None and not cases:
            raise DataError(f"split {split!r} lists no cases", path)
        split = None  # applied
    if split is not None:
        raise DataError(f"--split {split!r} needs a dataset with splits (a manifest), not image files", path)
    if not cases:
        raise DataError("no image files to predict", path)
    dupes = sorted(k for k, n in Counter(c.case_id for c in cases).items() if n > 1)
    if dupes:
        raise DataError(f"several inputs would write the same output name: {dupes[:5]}; rename them", path)
    return cases


def input_files(
    spec: str | Path, *, data_root: str | Path | None = None, import_options: dict[str, Any] | None = None
) -> tuple[list[Path], Path | None]:
    """Every file an input names, for :class:`~medattn.data.guard.InputGuard`: ``(files, dataset)``.

    For a dataset, every image and label of every case of every domain, whatever ``:DOMAIN`` or ``--split``
    selects (an output must not land among the other cases' files either), and the dataset's path (its
    description file, or its folder); for image files, those files and None.
    """
    from medattn.data.importers import load_dataset, split_spec

    path, _ = split_spec(spec)
    kind = input_kind(spec)
    if kind == "image":
        return [path], None
    if kind == "folder":
        return _image_files(path), None
    if not path.exists():
        raise DataError("input does not exist (expected an image file, a folder or a dataset)", path)
    manifest = load_dataset(path, **(import_options or {}))
    root = manifest.data_root(data_root)
    files = [root / p for _, c in manifest.iter_cases() for p in (*c.images, *([c.label] if c.label else []))]
    return files, path


def input_kind(spec: str | Path) -> InputKind:
    """What ``spec`` names: ``"image"`` (an image file), ``"folder"`` (a folder holding image files that is not a
    dataset: no ``dataset.json`` or ``manifest.json``) or ``"dataset"`` (anything else, for
    :func:`medattn.data.importers.load_dataset`, including a path with a ``:DOMAIN`` suffix and one that does not
    exist). Looks at paths only; opens no file.
    """
    from medattn.data.importers import split_spec

    path, domains = split_spec(spec)
    if domains:
        return "dataset"
    if (path.is_file() and has_suffix(path, IMAGE_SUFFIXES)) or is_series_folder(path):
        return "image"
    if path.is_dir() and not _is_dataset(path) and _image_files(path):
        return "folder"
    return "dataset"


def shard(cases: Sequence[InputCase], rank: int, world_size: int) -> list[InputCase]:
    """The cases rank ``rank`` of ``world_size`` takes: ``rank, rank + world_size, ...``."""
    return list(cases[rank::world_size])


def _is_dataset(folder: Path) -> bool:
    return (folder / "dataset.json").is_file() or (folder / "manifest.json").is_file()


def case_name(path: Path) -> str:
    """The case id of an image input: a file's name without its image suffix, a DICOM series folder's name."""
    return path.name if path.is_dir() else strip_suffix(path.name)


def _image_files(folder: Path) -> list[Path]:
    """The image inputs directly in ``folder``: image files and DICOM series folders."""
    return sorted(
        p
        for p in folder.iterdir()
        if not p.name.startswith(".")
        and ((p.is_file() and has_suffix(p, IMAGE_SUFFIXES)) or (p.is_dir() and is_series_folder(p)))
    )


def _folder_cases(folder: Path, num_channels: int) -> list[InputCase]:
    # A case is named by its entry in the folder, a symbolic link's own name included (a folder of links into shared
    # storage names its cases, not the files they point to), and read from the resolved path.
    entries = _image_files(folder)
    names, files = [case_name(p) for p in entries], [p.resolve() for p in entries]
    matches = [_CHANNEL_SUFFIX.match(n) for n in names]
    if not all(matches):
        return [InputCase(n, (p,)) for n, p in zip(names, files)]
    groups: dict[str, list[tuple[int, Path]]] = {}
    for p, m in zip(files, matches):
        assert m is not None
        groups.setdefault(m["case"], []).append((int(m["channel"]), p))
    if num_channels == 1 and any(len(g) > 1 for g in groups.values()):
        # Several numbered files per stem but a one-channel model: they are separate cases, not channels.
        return [InputCase(n, (p,)) for n, p in zip(names, files)]
    return [InputCase(case, tuple(p for _, p in sorted(g))) for case, g in sorted(groups.items())]
