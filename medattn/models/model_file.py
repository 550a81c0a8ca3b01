"""The model file: one self-contained ``model.pt`` that ``predict``, ``drift`` and ``adapt`` need nothing beside.

Layout (a plain dict of tensors and JSON-like values, so it loads with ``torch.load(..., weights_only=True)``)::

    {
      "format": "medattn-model", "version": 1, "medattn_version": "0.1.0",
      "config": {...},          # model.config: rebuilds the network (medattn.models.registry.build_from_config)
      "state_dict": {...},      # weights, on the CPU
      "plan": {...},            # Plan.to_dict(): how to read and normalise a new volume
      "labels": {"0": "background", ...},
      "meta": {...},            # free-form: training run, epoch, metrics, source dataset, ...
    }

Training checkpoints (optimiser, scheduler, RNG state) are the trainer's business (:mod:`medattn.train.state`).
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medattn.data.io import atomic_write_with
from medattn.data.plan import Plan
from medattn.errors import DataError
from medattn.typing import DeviceLike

MODEL_FORMAT = "medattn-model"
MODEL_VERSION = 1


@dataclass
class LoadedModel:
    """A model file, loaded: the network (eval mode, on the requested device), its plan and the raw document."""

    model: nn.Module
    plan: Plan
    labels: dict[int, str]
    meta: dict[str, Any]
    doc: dict[str, Any]


def model_document(model: nn.Module, plan: Plan, meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The dict that :func:`save_model` writes (useful to embed a model in a larger training checkpoint)."""
    from medattn import __version__

    config = getattr(model, "config", None)
    if not isinstance(config, Mapping):
        raise TypeError(f"{type(model).__name__} has no .config dict; build it with medattn.models.build_model")
    return {
        "format": MODEL_FORMAT,
        "version": MODEL_VERSION,
        "medattn_version": __version__,
        "config": dict(config),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "plan": plan.to_dict(),
        "labels": {str(k): v for k, v in plan.labels.items()},
        "meta": dict(meta or {}),
    }


def save_model(
    path: str | Path,
    model: nn.Module,
    plan: Plan,
    meta: Mapping[str, Any] | None = None,
    protected: Iterable[str | Path] = (),
) -> Path:
    """Write a self-contained model file atomically (temporary file in the same folder, then rename)."""
    doc = model_document(model, plan, meta)
    return atomic_write_with(path, lambda tmp: torch.save(doc, tmp), protected)


def recorded_flip_prob(doc: Mapping[str, Any]) -> float | None:
    """The flip probability of the training run a model file records (``meta.run.augment.flip_prob``, written by
    ``medattn train``), or None where it records none (a model written by ``adapt``, say)."""
    meta = doc.get("meta") or {}
    augment = (meta.get("run") or {}).get("augment") if isinstance(meta, Mapping) else None
    if isinstance(augment, Mapping) and "flip_prob" in augment:
        return float(augment["flip_prob"])
    return None


def load_model(path: str | Path, device: DeviceLike = "cpu") -> LoadedModel:
    """Load a model file safely (``weights_only=True``) and rebuild the network in eval mode on ``device``.

    Raises:
        DataError: naming the file when it is missing, not a medattn model, or from a newer medattn.
    """
    from medattn.models.registry import model_from_checkpoint

    path = Path(path)
    if not path.is_file():
        raise DataError("model file does not exist", path)
    if not zipfile.is_zipfile(path):  # what torch.save writes; anything else would be unpickled as a legacy file
        raise DataError(
            "cannot load model file: not a PyTorch zip archive (truncated, corrupt, or another format)", path
        )
    try:
        doc = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # weights_only refused an object: not written by medattn (or tampered)
        raise DataError(
            "not a medattn model file: it holds Python objects beyond tensors and plain values, which are not "
            "loaded; never load it with weights_only=False unless you trust where it came from",
            path,
        ) from e
    except Exception as e:  # zip and read errors come in many types
        first = str(e).splitlines()[0] if str(e) else ""
        raise DataError(f"cannot load model file: truncated or corrupt ({type(e).__name__}: {first})", path) from e
    if not isinstance(doc, dict) or doc.get("format") != MODEL_FORMAT:
        raise DataError(
            f"not a medattn model file (format {doc.get('format') if isinstance(doc, dict) else None!r})", path
        )
    if int(doc.get("version", 0)) > MODEL_VERSION:
        raise DataError(f"model file version {doc['version']} is newer than this medattn ({MODEL_VERSION})", path)
    try:
        model = model_from_checkpoint(doc)
        plan = Plan.from_dict(doc["plan"])
    except Exception as e:
        raise DataError(f"model file is inconsistent: {e}", path) from e
    bad = [name for name, t in model.state_dict().items() if t.is_floating_point() and not bool(t.isfinite().all())]
    if bad:  # a diverged or damaged training: every mask it predicts would be garbage
        raise DataError(
            f"model file holds non-finite (NaN or Inf) weights in {len(bad)} tensor(s), e.g. {bad[0]}", path
        )
    model.to(device).eval()
    labels = {int(k): str(v) for k, v in doc.get("labels", {}).items()}
    return LoadedModel(model=model, plan=plan, labels=labels, meta=dict(doc.get("meta", {})), doc=doc)
