"""Naive fine-tuning: train on each new domain with nothing to protect the old ones (the lower bound)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from medattn.continual.methods import Method, MethodContext, MethodSpec


def build(params: Mapping[str, Any], context: MethodContext) -> MethodSpec:
    return MethodSpec(name="naive", params=dict(params))


METHOD = Method(name="naive", description="fine-tune on each new domain (lower bound)", build=build)
