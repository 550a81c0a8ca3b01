"""Optimiser and learning-rate schedule of a run: AdamW or SGD with Nesterov momentum, poly decay per epoch."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from medattn.errors import ConfigError


def make_optimizer(
    params: Iterable[nn.Parameter] | nn.Module,
    name: str,
    lr: float,
    weight_decay: float,
    momentum: float = 0.99,
) -> torch.optim.Optimizer:
    """``"adamw"`` (``torch.optim.AdamW``) or ``"sgd"`` (``torch.optim.SGD`` with Nesterov ``momentum``)."""
    ps = list(params.parameters()) if isinstance(params, nn.Module) else list(params)
    if name == "adamw":
        return torch.optim.AdamW(ps, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(ps, lr=lr, momentum=momentum, nesterov=momentum > 0, weight_decay=weight_decay)
    raise ConfigError(f"optimizer: {name!r} is not one of adamw, sgd")


def make_poly_schedule(
    optimizer: torch.optim.Optimizer, epochs: int, power: float = 0.9
) -> torch.optim.lr_scheduler.LRScheduler:
    """Poly decay stepped once per epoch: the rate of epoch ``e`` (0-based) is ``lr * (1 - e / epochs) ** power``.

    A ``torch.optim.lr_scheduler.PolynomialLR``, so its ``state_dict`` resumes exactly.
    """
    return torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=epochs, power=power)


def poly_lr(lr: float, epoch: int, epochs: int, power: float = 0.9) -> float:
    """The closed form of :func:`make_poly_schedule` (for checks and logs)."""
    return lr * (1.0 - min(epoch, epochs) / epochs) ** power
