"""The run configuration of ``medattn adapt``: a frozen dataclass, validated on creation, saved as
``RUN/config.json``. Every field is a command-line option (``--samples-per-volume``) and a key of
``pipelines/adapt.yaml``; ``methods`` maps a method name to its hyper-parameters (defaults in each method module).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medattn.configdoc import check_float, check_int, config_fields, int_tuple, names, save_config
from medattn.errors import ConfigError
from medattn.typing import Triple

CONFIG_FORMAT = "medattn-adapt-config"
CONFIG_VERSION = 1
OPTIMIZERS = ("adamw", "sgd")
#: The splits a run may be scored on (``eval_split``).
EVAL_SPLITS = ("test", "val")
#: Fields a resumed run may change (they describe the machine or the logging, not the experiment).
RUNTIME_FIELDS = ("device", "workers", "loggers", "cache")


@dataclass(frozen=True)
class AdaptConfig:
    """How to adapt a model through a stream of domains.

    Attributes:
        strategies: method names (:func:`medattn.continual.methods.method_names`), each run from the same start
            model.
        epochs: training epochs per experience (joint: over the concatenated data).
        steps: optimiser steps per experience instead (:mod:`medattn.continual.steps`): the same training length
            for a domain of 3 labelled cases as for one of 145; the poly decay then runs per step; joint training
            gets ``steps`` per domain in all. None: ``epochs``.
        batch_size: volumes per training step (each gives ``samples_per_volume`` patches).
        samples_per_volume: patches drawn from each volume access.
        patch_size: training patch and evaluation window (X, Y, Z); None: the model's plan.
        optimizer: ``"adamw"`` or ``"sgd"`` (Nesterov momentum).
        lr, weight_decay, momentum: optimiser settings (momentum: SGD only).
        poly_power: within each experience the learning rate follows ``lr * (1 - epoch / epochs) ** poly_power``
            (Avalanche's ``LRSchedulerPlugin``, reset per experience); 0 keeps it constant.
        grad_clip: maximum gradient norm (0: off).
        precision: ``"auto"`` (mixed precision on CUDA only), ``"fp32"``, ``"fp16"``, ``"bf16"``.
        overlap, window_batch: sliding-window evaluation settings.
        augment: ``"default"``, ``"none"`` or a mapping of augmentation options.
        cache: ``"memory"``, ``"disk"`` (in ``RUN/cache``) or ``"none"``.
        test_fraction: share of a domain's cases tested when the manifest has no test split.
        eval_split: the split every Dice of the run is measured on: ``"test"``, or ``"val"`` to choose
            hyper-parameters (a method's weight, self-training's threshold) without looking at the test cases.
        eval_before: evaluate the start model on every domain first (the "before" row, FWT's baseline).
        methods: per method, hyper-parameters overriding its defaults.
        loggers: Avalanche loggers (``interactive``, ``text``, ``csv``, ``tensorboard``).
        seed: seed of sampling, augmentation and shuffling (reseeded per experience, so resumed runs match).
        workers: threads filling the memory cache.
        device: ``cpu``, ``cuda``, ``cuda:N``; None: CUDA when available.
        auto: before each domain after the first, test it for drift against the domains trained on so far and
            train on it only when it has drifted (:mod:`medattn.drift.gate`); every decision is recorded.
        drift_alpha: significance level of that test (the rule of ``medattn drift``: either test below alpha / 2).
        drift_max_reference: reference volumes at most (a domain-balanced sample of the trained domains'
            training volumes), bounding the cost of each test.
        drift_permutations: MMD permutations of each test.
        exclude_invalid: leave out the cases the input gate refuses (listed in the log and ``RUN/excluded.json``)
            instead of refusing to start (:mod:`medattn.data.gate`).
        labelled: labelled training cases used per domain after the first (:mod:`medattn.continual.labels`); the
            others' labels are never read, their images are the domain's unlabelled pool. None: every label.
        label_order: a file ranking case ids for labelling (``medattn drift``'s ``ranking.csv``); with
            ``labelled``, the first N of each domain in that order are labelled. None: a random draw (``seed``).
    """

    strategies: tuple[str, ...] = ("naive",)
    epochs: int = 10
    steps: int | None = None
    batch_size: int = 2
    samples_per_volume: int = 2
    patch_size: Triple | None = None
    optimizer: str = "adamw"
    lr: float = 3e-4
    weight_decay: float = 1e-4
    momentum: float = 0.99
    poly_power: float = 0.9
    grad_clip: float = 12.0
    precision: str = "auto"
    overlap: float = 0.5
    window_batch: int = 2
    augment: Any = "default"
    cache: str = "memory"
    test_fraction: float = 0.25
    eval_split: str = "test"
    eval_before: bool = True
    methods: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    loggers: tuple[str, ...] = ("interactive", "csv", "tensorboard")
    seed: int = 0
    workers: int = 0
    device: str | None = None
    auto: bool = False
    drift_alpha: float = 0.05
    drift_max_reference: int = 40
    drift_permutations: int = 1000
    exclude_invalid: bool = False
    labelled: int | None = None
    label_order: str | None = None

    def __post_init__(self) -> None:
        from medattn.continual.loggers import LOGGERS
        from medattn.continual.methods import method_names, resolve_params
        from medattn.train.config import PRECISIONS

        set_ = object.__setattr__
        methods_available = method_names()
        set_(self, "strategies", names(self.strategies, "strategies"))
        if not self.strategies:
            raise ConfigError("give at least one method with --strategy or --strategies")
        for s in self.strategies:
            if s not in methods_available:
                raise ConfigError(f"unknown method {s!r}; available: {', '.join(methods_available)}")
        if len(set(self.strategies)) != len(self.strategies):
            raise ConfigError(f"strategies: each method once, got {list(self.strategies)}")
        set_(self, "loggers", names(self.loggers, "loggers"))
        for lg in self.loggers:
            if lg not in LOGGERS:
                raise ConfigError(f"loggers: unknown {lg!r}; choose from {', '.join(LOGGERS)}")
        for name, minimum in (
            ("epochs", 1),
            ("batch_size", 1),
            ("samples_per_volume", 1),
            ("window_batch", 1),
            ("seed", 0),
            ("workers", 0),
            ("drift_max_reference", 4),
            ("drift_permutations", 1),
        ):
            check_int(getattr(self, name), name, minimum)
        for name in ("lr", "weight_decay", "momentum", "poly_power", "grad_clip", "overlap", "test_fraction"):
            # the momentum is SGD's: at most 1, as train checks it
            set_(self, name, check_float(getattr(self, name), name, 0.0, 1.0 if name == "momentum" else None))
        if self.lr <= 0 or self.overlap >= 1 or not 0 < self.test_fraction < 1:
            raise ConfigError("lr must be > 0, overlap in [0, 1) and test_fraction in (0, 1)")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer: {self.optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision: {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.eval_split not in EVAL_SPLITS:
            raise ConfigError(f"eval_split: {self.eval_split!r} is not one of {', '.join(EVAL_SPLITS)}")
        if self.cache not in ("memory", "disk", "none"):
            raise ConfigError(f"cache: {self.cache!r} is not one of memory, disk, none")
        if self.patch_size is not None:
            ps = int_tuple(self.patch_size, "patch_size")
            if len(ps) != 3 or min(ps) < 1:
                raise ConfigError(f"patch_size: expected three positive voxel counts (X, Y, Z), got {list(ps)}")
            set_(self, "patch_size", ps)
        if not isinstance(self.methods, Mapping):
            raise ConfigError(f"methods: expected a mapping of method name to options, got {self.methods!r}")
        methods = {}
        for name, params in self.methods.items():
            if name not in methods_available:
                raise ConfigError(f"methods: unknown method {name!r}; available: {', '.join(methods_available)}")
            methods[str(name)] = resolve_params(name, params or {})  # validates the option names
        set_(self, "methods", methods)
        set_(self, "augment", _augment_doc(self.augment))
        if not isinstance(self.eval_before, bool):
            raise ConfigError(f"eval_before: expected true or false, got {self.eval_before!r}")
        for name in ("auto", "exclude_invalid"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}: expected true or false, got {getattr(self, name)!r}")
        if self.steps is not None:
            check_int(self.steps, "steps", 1)
        if self.labelled is not None:
            check_int(self.labelled, "labelled", 0)
        if self.label_order is not None:
            if not isinstance(self.label_order, str) or not self.label_order:
                raise ConfigError(f"label_order: expected a file path, got {self.label_order!r}")
            if self.labelled is None:
                raise ConfigError("label_order: give the number of cases to label with labelled (--labelled N)")
        a = check_float(self.drift_alpha, "drift_alpha", 0.0, 1.0, strict=True)
        if a >= 1:
            raise ConfigError(f"drift_alpha: expected a number in (0, 1), got {a!r}")
        set_(self, "drift_alpha", a)

    def augment_config(self) -> Any:
        """The :class:`~medattn.data.transforms.AugmentConfig` of the run."""
        from medattn.data.transforms import AugmentConfig

        return AugmentConfig.from_dict(self.augment)

    def method_params(self, name: str) -> dict[str, Any]:
        """The resolved hyper-parameters of method ``name``."""
        from medattn.continual.methods import resolve_params

        return resolve_params(name, self.methods.get(name))

    def experiment_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` without the fields a resumed run may change."""
        return {k: v for k, v in self.to_dict().items() if k not in RUNTIME_FIELDS}

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"format": CONFIG_FORMAT, "version": CONFIG_VERSION}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Mapping):
                v = json.loads(json.dumps(v))
            doc[f.name] = list(v) if isinstance(v, tuple) else v
        return doc

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> AdaptConfig:
        body = config_fields(cls, doc, fmt=CONFIG_FORMAT, version=CONFIG_VERSION, what="adapt")
        return cls(**body)

    def save(self, path: str | Path) -> Path:
        return save_config(path, self.to_dict())


def _augment_doc(value: Any) -> dict[str, Any]:
    """``"default"``, ``"none"`` or a partial mapping -> every augmentation field (JSON-ready)."""
    from medattn.data.transforms import AugmentConfig

    if value in ("default", None):
        aug = AugmentConfig()
    elif value == "none":
        aug = AugmentConfig.none()
    elif isinstance(value, Mapping):
        aug = AugmentConfig.from_dict(value)
    else:
        raise ConfigError(f"augment: expected 'default', 'none' or a mapping of augmentation options, got {value!r}")
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(aug).items()}
