"""The resume checkpoint ``RUN/checkpoint.pt``: everything a killed run needs to continue where it stopped.

Written atomically at the end of every epoch (after the logs and model files of that epoch, so it is the commit
point), and loadable with ``torch.load(..., weights_only=True)``: every value is a tensor, a number, a string, or
a list/dict/tuple of those. Layout::

    {"format": "medattn-train-checkpoint", "version": 1,
     "epoch": completed epochs, "model": state_dict, "optimizer": ..., "scheduler": ..., "scaler": ...,
     "rng": [per rank: {"torch", "cuda", "numpy", "python"}], "best": {"dice", "epoch"},
     "history": [log rows], "config": TrainConfig.to_dict()}
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medattn.data.io import atomic_write_with
from medattn.errors import DataError

CHECKPOINT_FORMAT = "medattn-train-checkpoint"
CHECKPOINT_VERSION = 1


def capture_rng() -> dict[str, Any]:
    """This process's torch, CUDA, NumPy and Python random states as weights-only-safe values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {"version": int(py_version), "state": list(py_state), "gauss": py_gauss},
    }


def restore_rng(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng` (CUDA states only when as many devices are visible)."""
    torch.set_rng_state(state["torch"])
    cuda = list(state.get("cuda", []))
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, int(n["pos"]), int(n["has_gauss"]), float(n["gauss"])))
    p = state["python"]
    random.setstate((int(p["version"]), tuple(int(v) for v in p["state"]), p["gauss"]))


def save_checkpoint(path: str | Path, doc: Mapping[str, Any]) -> Path:
    """Write a resume checkpoint atomically (temporary file in the same folder, then rename)."""
    body = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **doc}
    return atomic_write_with(path, lambda tmp: torch.save(body, tmp))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a resume checkpoint with ``weights_only=True``.

    Raises:
        DataError: naming the file when it is missing, unreadable or not a medattn training checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("no resume checkpoint here (the run has not finished an epoch yet?)", path)
    try:
        doc = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # zip and unpickling errors come in many types
        raise DataError(f"cannot load the resume checkpoint ({type(e).__name__}: {e})", path) from e
    if not isinstance(doc, dict) or doc.get("format") != CHECKPOINT_FORMAT:
        raise DataError("not a medattn training checkpoint", path)
    if int(doc.get("version", 0)) > CHECKPOINT_VERSION:
        raise DataError(f"checkpoint version {doc['version']} is newer than this medattn", path)
    return doc
