"""What a slice figure shows of one volume: the preprocessed image, its label, the prediction and the attention.

``medattn predict`` writes masks in the input's geometry and keeps no attention; a figure needs everything on one
grid, so this runs the model once more on the preprocessed volume (the grid the network sees: RAS, the plan's
spacing) and asks it for its gates' coefficients (``return_attention=True``). Windows are blended by
:func:`~medattn.infer.sliding.sliding_window_predict` (Gaussian weights, MONAI's window layout) with
``return_blended=True``, which averages the attention maps of overlapping windows exactly as it averages logits;
the arg-max of the blended logits is the label map ``medattn predict`` computes.

Which gate is drawn: the finest one that selects, i.e. whose coefficients spread over at least
:data:`SELECTIVE_SPREAD` between their 5th and 95th percentiles in the volume (else the one with the widest spread).
A gate at full resolution can learn to pass almost everything (``ag_unet_fullres`` on the demo phantom: every
coefficient of its finest gate between 0.97 and 1), and an all-bright overlay says nothing; the next gate there
ranged from 0 to 1 (5th to 95th percentile 0 to 0.9), high around the structure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medattn.typing import DeviceLike, Spacing

#: The 5th-to-95th percentile spread of a gate's coefficients from which it counts as selective (see above).
SELECTIVE_SPREAD = 0.25


@dataclass(frozen=True)
class VolumeView:
    """One volume on the preprocessed grid, ready to draw.

    Attributes:
        case_id: the case.
        image: float32 (X, Y, Z), first channel, normalised as the network sees it.
        label: class indices (X, Y, Z) uint8, or None when the case has no label.
        prediction: class indices (X, Y, Z) uint8.
        attention: float32 (X, Y, Z) in [0, 1], the coefficients of the gate drawn (see the module docstring), or
            None for a model without gates.
        spacing: voxel size (mm) along X, Y, Z.
        attention_gate: which gate ``attention`` is, 0 the finest (None without gates).
        gates: how many gates the model has.
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    prediction: np.ndarray
    attention: np.ndarray | None
    spacing: Spacing
    attention_gate: int | None = None
    gates: int = 0


def _with_attention(model: torch.nn.Module, num_classes: int) -> Any:
    """A network for ``sliding_window_predict``: logits, then every gate's map (finest first) as more channels."""

    def run(x: torch.Tensor) -> torch.Tensor:
        logits, maps = model(x, return_attention=True)
        if isinstance(logits, (list, tuple)):
            logits = logits[0]
        return torch.cat([logits[:, :num_classes], *(m.to(logits.dtype) for m in maps)], dim=1)

    return run


def selective_gate(maps: Sequence[np.ndarray]) -> int | None:
    """Index of the gate to draw among ``maps`` (finest first); see the module docstring. None when empty."""
    if not len(maps):
        return None
    spreads = [float(np.subtract(*np.percentile(m, (95, 5)))) for m in maps]
    return next((i for i, s in enumerate(spreads) if s >= SELECTIVE_SPREAD), int(np.argmax(spreads)))


def volume_view(
    loaded: Any,
    item: Mapping[str, Any],
    *,
    overlap: float = 0.5,
    window_batch: int = 2,
    device: DeviceLike = "cpu",
) -> VolumeView:
    """Preprocess ``item`` with the model's plan and segment it, keeping the attention of its selective gate.

    Args:
        loaded: a :class:`~medattn.models.model_file.LoadedModel` (network in eval mode on ``device``).
        item: a ``Manifest.datalist`` dict (``image`` paths, optional ``label``, ``case_id``).
        overlap: sliding-window overlap.
        window_batch: windows per network call.
        device: where the network runs and windows are stitched (the blended (K + gates, X, Y, Z) float32 volume
            lives there before it is copied to the CPU).

    Raises:
        DataError: the case cannot be read or preprocessed (from :func:`medattn.data.transforms.apply`).
    """
    from medattn.data.transforms import apply, eval_transforms, inference_transforms
    from medattn.infer.sliding import sliding_window_predict

    plan = loaded.plan
    images = list(item["image"])
    src: dict[str, Any] = {"image": images[0] if len(images) == 1 else images}
    if item.get("label"):
        src["label"] = item["label"]
    data = apply(eval_transforms(plan) if "label" in src else inference_transforms(plan), src)
    k = plan.num_classes
    x = torch.as_tensor(data["image"]).float().to(device)
    result = sliding_window_predict(
        x,
        _with_attention(loaded.model, k),
        tuple(plan.patch_size),
        overlap=overlap,
        window_batch=window_batch,
        blend="gaussian",
        num_classes=k,
        return_blended=True,
        sw_device=device,
        device=device,
    )
    if result.blended is None:  # return_blended=True always sets it
        raise RuntimeError("sliding_window_predict returned no blended output")
    out = result.blended.float().cpu()
    maps = [np.clip(m, 0.0, 1.0).astype(np.float32) for m in out[k:].numpy()]
    gate = selective_gate(maps)
    label = None
    if "label" in src:
        label = np.rint(np.asarray(data["label"][0])).astype(np.uint8)
    return VolumeView(
        case_id=str(item.get("case_id", images[0])),
        image=np.asarray(data["image"][0], dtype=np.float32),
        label=label,
        prediction=result.labels.cpu().numpy().astype(np.uint8),
        attention=None if gate is None else maps[gate],
        spacing=_spacing(plan.target_spacing),
        attention_gate=gate,
        gates=len(maps),
    )


def _spacing(values: Sequence[float]) -> Spacing:
    a, b, c = (float(v) for v in values)
    return (a, b, c)
