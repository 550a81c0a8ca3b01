"""What a drift run reads: the reference and target sets as MONAI-style items, and their channels checked.

A set is named as ``medattn predict`` names its input (:mod:`medattn.infer.inputs`): one image file, a folder of
image files, or a dataset (manifest, MSD / nnU-Net / BIDS / per-domain folder, with ``:DOMAIN`` to select
domains). Dataset items carry the case's label and metadata (the Dice and the metadata changes of the report);
image files carry neither.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medattn.errors import DataError, ManifestError


def dataset_items(
    spec: str, data_root: str | None, num_channels: int, split: str | None = None
) -> list[dict[str, Any]]:
    """MONAI-style items (image paths, optional label, case id, domain, metadata) of an image file, an image
    folder or a dataset.

    Args:
        spec: an image file, a folder of image files, or a dataset (see the module docstring).
        data_root: overrides a manifest's root.
        num_channels: channels the model expects (groups nnU-Net-style ``_0000`` files of a folder).
        split: keeps only the cases the manifest's split of that name lists (in every selected domain).

    Raises:
        DataError: ``split`` given for image files, an unknown split, or nothing to read.
        ManifestError: a dataset that cannot be understood.
    """
    from medattn.infer.inputs import input_kind

    if input_kind(spec) != "dataset":
        return _image_items(spec, data_root, num_channels, split)
    from medattn.data.importers import load_dataset

    try:
        manifest = load_dataset(spec)
    except ManifestError:
        path = Path(spec)
        if not (path.is_file() or path.is_dir()):
            raise
        return _image_items(spec, data_root, num_channels, split)  # names what the path lacks
    try:
        items = manifest.split_datalist(split, data_root)
    except ManifestError as e:
        raise DataError(str(e), spec) from None
    names = tuple(ch.name for ch in manifest.channels)
    return [{**d, "channels": names} for d in items]


def _image_items(spec: str, data_root: str | None, num_channels: int, split: str | None) -> list[dict[str, Any]]:
    """Items of an image file or a folder of images (no label, no metadata, no channel names)."""
    from medattn.infer.inputs import collect_inputs

    if split is not None:
        raise DataError(f"--*-split {split!r} needs a dataset with splits, not image files", spec)
    cases = collect_inputs(spec, num_channels=num_channels, data_root=data_root)
    return [
        {"image": [str(p) for p in c.images], "case_id": c.case_id, "domain": c.domain, "metadata": {}} for c in cases
    ]


def check_channels(plan: Any, items: Sequence[Mapping[str, Any]], spec: str) -> None:
    """Refuse a dataset whose channels are named otherwise, or ordered otherwise, than the model's.

    Raises:
        DataError: naming ``spec`` and both channel lists.
    """
    from medattn.data.gate import channel_mismatch

    named = {tuple(d["channels"]) for d in items if d.get("channels") is not None}
    for names in named:
        why = channel_mismatch([ch.name for ch in plan.channels], names)
        if why:
            raise DataError(why, spec)
