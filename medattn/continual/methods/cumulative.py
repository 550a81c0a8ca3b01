"""Cumulative training: at domain ``i`` train on the data of domains ``0..i`` (Avalanche's ``Cumulative``).

An upper bound that keeps all old data, so it is what replay approximates with a bounded memory. Avalanche's
strategy keeps the growing dataset in ``strategy.dataset``; after a resume it is rebuilt from the experiences
already trained on (:func:`restore`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from avalanche.benchmarks.utils.utils import concat_datasets
from avalanche.training import Cumulative

from medattn.continual.methods import Method, MethodContext, MethodSpec


def restore(strategy: Any, seen: Sequence[Any]) -> None:
    """Rebuild ``Cumulative``'s accumulated dataset from the experiences trained on before the interruption."""
    strategy.dataset = concat_datasets([exp.dataset for exp in seen]) if seen else None


def build(params: Mapping[str, Any], context: MethodContext) -> MethodSpec:
    return MethodSpec(name="cumulative", base=Cumulative, restore=restore, params=dict(params))


METHOD = Method(
    name="cumulative",
    description="train on all domains seen so far (upper bound; Avalanche Cumulative)",
    build=build,
)
