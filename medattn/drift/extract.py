"""The drift features of each volume, collected in one sliding-window pass over it: :func:`extract_features`.

Every volume passes the input gate first (:mod:`medattn.data.gate`: the checks of ``medattn validate``, and its
channels matched to the model's by name); a refused or unreadable volume is named in the failures with its reason
and left out, and the others are still read.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medattn.drift.features import (
    FeatureCollector,
    VolumeFeatures,
    class_dice,
    header_metadata,
    image_statistics,
    prediction_statistics,
)
from medattn.errors import DataError

log = logging.getLogger(__name__)


def extract_features(
    loaded: Any,
    items: Sequence[Mapping[str, Any]],
    *,
    overlap: float = 0.25,
    device: str = "cpu",
    progress: bool = False,
) -> tuple[list[VolumeFeatures], list[dict[str, str]]]:
    """Run sliding-window inference once per item, collecting :class:`VolumeFeatures`; failures are named.

    Args:
        loaded: a :class:`~medattn.models.model_file.LoadedModel`.
        items: dicts with ``image`` (paths), optional ``label``, ``case_id``, ``domain``, ``metadata``,
            ``channels`` (as :func:`~medattn.drift.inputs.dataset_items` gives them).
        overlap: sliding-window overlap.
        device: where the network runs; the stitched output stays on the CPU.
        progress: show a progress bar.

    Returns:
        ``(features, failures)``: one :class:`VolumeFeatures` per volume read, in item order, and per volume left
        out a dict with ``case``, ``file`` and ``reason``.
    """
    from tqdm.auto import tqdm

    from medattn.data.gate import check_input_case
    from medattn.data.io import read_volume
    from medattn.data.transforms import apply, eval_transforms, inference_transforms
    from medattn.infer.sliding import sliding_window_predict

    plan = loaded.plan
    values = sorted(int(v) for v in plan.labels)
    names = {i: plan.labels[v] for i, v in enumerate(values)}
    collector = FeatureCollector(loaded.model)
    with_label, without_label = eval_transforms(plan), inference_transforms(plan)
    feats: list[VolumeFeatures] = []
    failures: list[dict[str, str]] = []
    channel_names = [ch.name for ch in plan.channels]
    for item in tqdm(items, desc="drift features", unit="vol", disable=not progress):
        images = list(item["image"]) if isinstance(item["image"], (list, tuple)) else [item["image"]]
        case_id = str(item.get("case_id", Path(images[0]).name))
        try:
            label = item.get("label")
            checked = check_input_case(
                case_id,
                images,
                channel_names,
                input_channels=item.get("channels"),
                domain=item.get("domain"),
                label=label,
                labels=plan.labels if label else None,
            )
            src = {"image": images[0] if len(images) == 1 else images}
            has_label = bool(item.get("label"))
            if has_label:
                src["label"] = item["label"]
            data = apply(with_label if has_label else without_label, src)
            raw, _ = read_volume(images[0])
            raw0 = raw[..., 0] if raw.ndim == 4 else raw
            collector.reset()
            result = sliding_window_predict(
                data["image"], collector, plan.patch_size, overlap=overlap, sw_device=device, device="cpu"
            )
            vol = collector.volume_features()
            labels = result.labels.cpu().numpy()
            dice = None
            if has_label:
                dice = class_dice(labels, np.rint(np.asarray(data["label"][0])).astype(np.int64), names)
            feats.append(
                VolumeFeatures(
                    case_id=case_id,
                    domain=item.get("domain"),
                    model=vol["bottleneck"],
                    prediction=prediction_statistics(labels, vol["entropy"], plan.target_spacing, names),
                    image=image_statistics(raw0),
                    metadata=header_metadata(data["image"].meta, item.get("metadata")),
                    dice=dice,
                    source=str(images[0]),
                    foreground_entropy=float(vol["foreground_entropy"]),
                    extra={"input_warnings": [p.message for p in checked.warnings]} if checked.warnings else {},
                )
            )
            for p in checked.warnings:  # a blank scan's features are measured, but not silently
                log.warning("volume %s: %s: %s", case_id, p.check, p.message)
        except DataError as e:
            log.warning("skipping %s", e)
            failures.append({"case": case_id, "file": e.path or images[0], "reason": e.problem})
        except Exception as e:  # one bad volume must not stop the rest
            log.warning("skipping %s: %s", case_id, e)
            failures.append({"case": case_id, "file": images[0], "reason": f"{type(e).__name__}: {e}"})
    return feats, failures
