"""(De)serialising Avalanche's ``ParamData`` dictionaries (EWC, SI) as plain tensors for weights-only checkpoints."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from avalanche.training.utils import ParamData


def params_state(params: Mapping[str, ParamData]) -> dict[str, torch.Tensor]:
    """``{name: ParamData}`` -> ``{name: tensor on the CPU}``."""
    return {k: v.data.detach().cpu().clone() for k, v in params.items()}


def params_from_state(state: Mapping[str, torch.Tensor]) -> dict[str, ParamData]:
    """Inverse of :func:`params_state` (tensors stay on the CPU until :func:`move_params`)."""
    return {k: ParamData(k, init_tensor=t.clone()) for k, t in state.items()}


def move_params(params: Mapping[str, ParamData], device: torch.device) -> None:
    """Move every tensor to ``device`` in place (after a restore, before the plugin uses them)."""
    for p in params.values():
        if p.data.device != device:
            p._data = p.data.to(device)
            p.device = device
