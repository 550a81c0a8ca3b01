"""A fixed number of optimiser steps per experience (``medattn adapt --steps N``), whatever the domain's size.

``epochs`` counts passes over a domain's training cases, so a domain with 3 labelled cases gets a fiftieth of the
steps of one with 145; comparing label budgets, or adapting a small site, needs the same training length in steps.
:class:`StepBudget` (an Avalanche plugin) sets the experience's epochs to as many passes as ``steps`` needs (the
last pass cut short) and stops training after ``steps`` iterations; the poly learning-rate decay then runs per
step over those ``steps`` (Avalanche's ``LRSchedulerPlugin`` with ``step_granularity="iteration"``).
"""

from __future__ import annotations

import math
from typing import Any

from avalanche.core import SupervisedPlugin


class StepBudget(SupervisedPlugin):
    """Train each experience for exactly ``steps`` iterations (see the module docstring)."""

    def __init__(self, steps: int) -> None:
        super().__init__()
        self.steps = int(steps)
        self.done = 0

    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        # runs after the replay plugin's before_training_exp (it is added last), so it sees the final data loader
        per_epoch = max(1, len(strategy.dataloader))
        strategy.train_epochs = math.ceil(self.steps / per_epoch)
        self.done = 0

    def after_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
        # counted here: Avalanche's clock, a plugin after this one, has not yet counted the step that just ended
        self.done += 1
        if self.done >= self.steps:
            strategy.stop_training()
