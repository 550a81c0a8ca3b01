"""Joint training on every domain at once (an upper bound, not a continual method): Avalanche's ``JointTraining``.

Avalanche's strategy concatenates the training data of the whole stream and trains once; combined with the
segmentation template it gives one "experience" holding every domain. Its Dice matrix has a single row, the final
one, so BWT, forgetting and FWT are undefined; its average Dice is the reference the continual methods chase.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from avalanche.training import JointTraining

from medattn.continual.methods import Method, MethodContext, MethodSpec


def build(params: Mapping[str, Any], context: MethodContext) -> MethodSpec:
    return MethodSpec(name="joint", base=JointTraining, joint=True, params=dict(params))


METHOD = Method(
    name="joint",
    description="train once on every domain's data (upper bound; Avalanche JointTraining)",
    build=build,
)
