"""Continual-learning methods, one per module, each a set of Avalanche plugins for the one segmentation template.

A method module defines ``DESCRIPTION``, ``DEFAULTS`` (its hyper-parameters; ``pipelines/adapt.yaml`` repeats them
for users to edit) and ``build(params, context) -> MethodSpec``. ``joint`` and ``cumulative`` are Avalanche
strategies rather than plugins (``JointTraining``, ``Cumulative``); their spec names that class and
:func:`strategy_class` combines it with :class:`~medattn.continual.template.SegmentationStrategy`, so they run the
same segmentation loop.

==========  ==============================================================================================
name        what it uses from Avalanche (and what is adapted for dense 3D output)
==========  ==============================================================================================
naive       the plain template: fine-tuning on each new domain
joint       ``JointTraining``: one pass over every domain's training data (upper bound)
cumulative  ``Cumulative``: domain ``i`` trains on domains ``0..i`` (upper bound)
replay      ``ReplayPlugin`` with a domain-balanced buffer of foreground-centred patches
ewc         ``EWCPlugin`` (importance from the segmentation loss on training patches)
si          ``SynapticIntelligencePlugin``
lwf         ``LwFPlugin`` with a per-voxel-normalised distillation over every class
mib         ``LwFPlugin`` with MiB's background-aware (unbiased) distillation
==========  ==============================================================================================
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from medattn.errors import ConfigError

METHODS = ("naive", "joint", "cumulative", "replay", "ewc", "si", "lwf", "mib")


@dataclass(frozen=True)
class MethodContext:
    """What a method may need to know about the run when it builds its plugins.

    Attributes:
        num_classes: K, background included.
        train_mb_size: volumes per training step.
        samples_per_volume: patches drawn per volume (a step sees ``train_mb_size * samples_per_volume`` patches).
        patch_size: the training patch (X, Y, Z).
        seed: the run's seed.
        augment_transform: factory of the MONAI augmentation pipeline applied to stored patches (replay).
    """

    num_classes: int
    train_mb_size: int
    samples_per_volume: int
    patch_size: tuple[int, int, int]
    seed: int = 0
    augment_transform: Callable[[], Any] | None = None


@dataclass
class MethodSpec:
    """A built method: its plugins, the Avalanche strategy class to combine with the template, and hooks.

    Attributes:
        name: the method's name.
        plugins: Avalanche plugins added to the strategy.
        base: an Avalanche strategy class (``JointTraining``, ``Cumulative``) or None for the plain template.
        joint: train once on the whole stream (one "experience" holding every domain).
        restore: called on resume with the strategy and the experiences already trained on (rebuilds state that
            lives in the data, e.g. ``Cumulative``'s growing dataset).
        params: the resolved hyper-parameters (saved with the run).
    """

    name: str
    plugins: list[Any] = field(default_factory=list)
    base: type | None = None
    joint: bool = False
    restore: Callable[[Any, Sequence[Any]], None] | None = None
    params: dict[str, Any] = field(default_factory=dict)


def _module(name: str) -> Any:
    if name not in METHODS:
        raise ConfigError(f"unknown continual-learning method {name!r}; available: {', '.join(METHODS)}")
    return importlib.import_module(f"medattn.continual.methods.{name}")


def defaults(name: str) -> dict[str, Any]:
    """The default hyper-parameters of method ``name``."""
    return dict(_module(name).DEFAULTS)


def describe(name: str) -> str:
    return str(_module(name).DESCRIPTION)


def resolve_params(name: str, given: Mapping[str, Any] | None) -> dict[str, Any]:
    """``defaults(name)`` updated with ``given``; an unknown key raises :class:`ConfigError` naming the known ones."""
    params = defaults(name)
    unknown = sorted(set(given or {}) - set(params))
    if unknown:
        raise ConfigError(f"method {name}: unknown option(s) {unknown}; known: {sorted(params)}")
    params.update(given or {})
    return params


def build_method(name: str, given: Mapping[str, Any] | None, context: MethodContext) -> MethodSpec:
    """Build method ``name`` with hyper-parameters ``given`` (over its defaults)."""
    spec: MethodSpec = _module(name).build(resolve_params(name, given), context)
    return spec


@cache
def strategy_class(base: type | None) -> type:
    """:class:`SegmentationStrategy`, or a class combining it with the Avalanche strategy ``base``.

    The template comes first in the method resolution order, so its segmentation loop (forward, loss, AMP,
    evaluation) wins, and ``base`` contributes what makes it that strategy (``JointTraining.train`` and its dataset
    concatenation, ``Cumulative.train_dataset_adaptation``).
    """
    from medattn.continual.template import SegmentationStrategy

    if base is None:
        return SegmentationStrategy
    return type(f"Segmentation{base.__name__}", (SegmentationStrategy, base), {})
