"""Continual-learning methods, one per module, each a set of Avalanche plugins for the one segmentation template.

The registry discovers its methods: every public module of this package (a file name not starting with ``_``) is
a method of that name, and declares it as ``METHOD``, a :class:`Method`::

    METHOD = Method(
        name="ewc",
        description="elastic weight consolidation (Avalanche EWCPlugin)",
        params=(
            Param("ewc_lambda", 1.0e5, "penalty weight"),
            Param("mode", "separate", "separate (one penalty per past domain) | online (decayed importance)"),
        ),
        build=build,  # (resolved params, MethodContext) -> MethodSpec
    )

Adding a method is adding its file: ``medattn adapt`` lists the file names (:func:`method_names`, which reads the
folder and imports nothing, so ``medattn --help`` stays free of torch and Avalanche), validates ``--strategies``
against them, and imports a method's module only to resolve its hyper-parameters or build it. The ``methods:``
section of ``pipelines/adapt.yaml`` is the template of the declared defaults (:func:`methods_template`, printed by
``medattn adapt --print-template``); a test checks the shipped file against it. A method module keeps its heavy
imports (torch, Avalanche) to itself: they run when the method is used, not when it is listed.

``joint`` and ``cumulative`` are Avalanche strategies rather than plugins (``JointTraining``, ``Cumulative``); their
built spec names that class and :func:`strategy_class` combines it with
:class:`~medattn.continual.template.SegmentationStrategy`, so they run the same segmentation loop.

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
selftrain   label-free: confidence-filtered pseudo-labels of the unlabelled cases, with ``ReplayPlugin``'s memory
==========  ==============================================================================================
"""

from __future__ import annotations

import copy
import importlib
import math
import pkgutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any

from medattn.errors import ConfigError
from medattn.typing import Triple

if TYPE_CHECKING:
    #: The method names (:func:`method_names`), read afresh on each access.
    METHODS: tuple[str, ...]

#: Where the template's comments start (the column of ``pipelines/adapt.yaml``).
COMMENT_COLUMN = 28


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
        mirrored_training: whether the network may be trusted on mirrored images (its training flipped them), and
            why (:func:`~medattn.continual.runner.mirrored_training`).
    """

    num_classes: int
    train_mb_size: int
    samples_per_volume: int
    patch_size: Triple
    seed: int = 0
    augment_transform: Callable[[], Any] | None = None
    mirrored_training: tuple[bool, str] = (False, "not known")


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
        label_free: the method learns from a domain's unlabelled images (``experience.unlabelled``) too, so an
            experience without labelled training cases is still trained on; the others skip it.
        veto: ``(strategy, experience) -> reason or None``, asked before each experience is trained on; a reason
            skips it, recorded like a drift gate's decision (self-training's check of its pseudo-labels).
    """

    name: str
    plugins: list[Any] = field(default_factory=list)
    base: type | None = None
    joint: bool = False
    restore: Callable[[Any, Sequence[Any]], None] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    label_free: bool = False
    veto: Callable[[Any, Any], str | None] | None = None


@dataclass(frozen=True)
class Param:
    """One hyper-parameter of a method.

    Attributes:
        name: the key in ``--methods`` and in the ``methods:`` section of ``pipelines/adapt.yaml``.
        default: a YAML scalar (number, string, bool, None) or a list of them.
        doc: one line for the template's comment: what it is, its unit, what None means.
    """

    name: str
    default: Any
    doc: str


@dataclass(frozen=True)
class Method:
    """What a method module declares as ``METHOD``: its name, its hyper-parameters and how it is built.

    Attributes:
        name: the method's name, the same as its module's (``ewc`` in ``ewc.py``).
        description: one line (the template's comment and ``medattn adapt`` error messages).
        params: the hyper-parameters with their defaults and docs.
        build: ``(resolved params, context) -> MethodSpec``; validates the values (a :class:`ConfigError` names the
            method, the option and what was expected) and creates the plugins.
    """

    name: str
    description: str
    build: Callable[[Mapping[str, Any], MethodContext], MethodSpec]
    params: tuple[Param, ...] = ()

    def defaults(self) -> dict[str, Any]:
        """``{param: default}`` (a fresh copy)."""
        return {p.name: copy.deepcopy(p.default) for p in self.params}


# ---- discovery -------------------------------------------------------------------------------------------------


def method_names() -> tuple[str, ...]:
    """The methods: the public modules of this package, sorted (reads the folder, imports nothing)."""
    return tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")))


def __getattr__(attr: str) -> Any:
    if attr == "METHODS":  # kept for callers of the former constant; always the current discovery
        return method_names()
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


def method(name: str) -> Method:
    """The declaration of method ``name`` (imports its module).

    Raises:
        ConfigError: ``name`` is not a method, or its module declares no valid ``METHOD``.
    """
    available = method_names()
    if name not in available:
        raise ConfigError(f"unknown continual-learning method {name!r}; available: {', '.join(available)}")
    module = importlib.import_module(f"{__name__}.{name}")
    spec = getattr(module, "METHOD", None)
    where = getattr(module, "__file__", None) or module.__name__
    if not isinstance(spec, Method):
        raise ConfigError(f"{where}: a method module must define METHOD = Method(...), got {type(spec).__name__}")
    if spec.name != name:
        raise ConfigError(f"{where}: METHOD.name is {spec.name!r}; it must be the module's name {name!r}")
    keys = [p.name for p in spec.params]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"{where}: each parameter once, got {keys}")
    return spec


def defaults(name: str) -> dict[str, Any]:
    """The default hyper-parameters of method ``name``."""
    return method(name).defaults()


def describe(name: str) -> str:
    """The one-line description of method ``name``."""
    return method(name).description


def resolve_params(name: str, given: Mapping[str, Any] | None) -> dict[str, Any]:
    """``defaults(name)`` updated with ``given``; an unknown key raises :class:`ConfigError` naming the known ones."""
    params = defaults(name)
    unknown = sorted(set(given or {}) - set(params))
    if unknown:
        raise ConfigError(f"method {name}: unknown option(s) {unknown}; known: {sorted(params)}")
    for key, value in (given or {}).items():  # NaN passes every bound the methods check: refused here
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"method {name}: {key}: expected a finite number, got {value!r}")
    params.update(given or {})
    return params


def build_method(name: str, given: Mapping[str, Any] | None, context: MethodContext) -> MethodSpec:
    """Build method ``name`` with hyper-parameters ``given`` (over its defaults)."""
    return method(name).build(resolve_params(name, given), context)


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


# ---- the YAML template -------------------------------------------------------------------------------------------


def methods_template() -> str:
    """The ``methods:`` section of ``pipelines/adapt.yaml``: every method's hyper-parameters at their defaults, with
    the declared one-line docs as comments (YAML text; ``yaml.safe_load`` of it gives ``{name: defaults(name)}``)."""
    lines = [
        "# Hyper-parameters per method, at their defaults (medattn/continual/methods/; `medattn adapt",
        "# --print-template`). `--methods '{replay: {mem_size: 64}}'` overrides single values.",
        "methods:",
    ]
    for name in method_names():
        spec = method(name)
        if not spec.params:
            lines.append(_commented(f"  {name}: {{}}", spec.description))
            continue
        lines.append(_commented(f"  {name}:", spec.description))
        lines.extend(_commented(f"    {p.name}: {_yaml_value(p.default)}", p.doc) for p in spec.params)
    return "\n".join(lines) + "\n"


def _commented(text: str, comment: str) -> str:
    return f"{text.ljust(COMMENT_COLUMN - 1)} # {comment}" if comment else text


def _yaml_value(value: Any) -> str:
    """A default as YAML flow text: ``null``, ``true``, ``1.0e+5`` (exponent for very large or small floats)."""
    import yaml

    if isinstance(value, float) and math.isfinite(value) and value != 0 and not 1e-3 <= abs(value) < 1e4:
        mantissa, exponent = f"{value:e}".split("e")
        mantissa = mantissa.rstrip("0")
        return f"{mantissa}0e{int(exponent):+d}" if mantissa.endswith(".") else f"{mantissa}e{int(exponent):+d}"
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6)
    return text.removesuffix("\n").removesuffix("\n...").strip()
