"""medattn: 3D medical image segmentation that keeps working when the scanner changes."""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from medattn.api import Model

__version__ = "0.1.0"


def load_model(
    path: str | PathLike[str] | Sequence[str | PathLike[str]], device: str | None = None, **options: Any
) -> Model:
    """Load a model file, a run folder or a list of model files (an ensemble) for prediction from Python:
    :func:`medattn.api.load_model` (imported on first use, so ``import medattn`` stays light)."""
    from medattn.api import load_model as _load

    return _load(path, device, **options)
