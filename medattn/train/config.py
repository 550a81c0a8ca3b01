"""The run configuration of ``medattn train``: one frozen dataclass, validated on creation, saved as
``RUN/config.json`` beside the model it produced.

Every field is also a command-line option of ``medattn train`` (``--val-every`` for ``val_every``) and a key of
``pipelines/train.yaml``. Fields left at ``None`` are resolved when the config is created (``lr`` from the
optimiser) or when training starts (``fold`` from the manifest, ``batch_size`` and ``patch_size`` from the plan),
and the saved file always holds the resolved values, so ``config.json`` alone says how a model was trained.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medattn.configdoc import check_float, check_int, config_fields, int_tuple, save_config
from medattn.errors import ConfigError
from medattn.typing import Triple

CONFIG_FORMAT = "medattn-train-config"
CONFIG_VERSION = 1

OPTIMIZERS = ("adamw", "sgd")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
CACHES = ("memory", "disk", "none")
#: Learning rate and weight decay per optimiser when not given (nnU-Net's SGD settings; AdamW's usual ones).
DEFAULT_LR = {"adamw": 1e-3, "sgd": 1e-2}
DEFAULT_WEIGHT_DECAY = {"adamw": 1e-2, "sgd": 3e-5}
#: Fields that describe the machine and where the data lie, not the experiment: a resumed run may change them.
RUNTIME_FIELDS = ("data", "data_root", "device", "workers", "cache", "tensorboard")


@dataclass(frozen=True)
class TrainConfig:
    """How to train one model.

    Attributes:
        data: the dataset as given on the command line (provenance only; training receives the manifest).
        data_root: folder the manifest's relative paths start from, or None.
        model: model preset (``medattn models``).
        widths: feature width per U-Net stage, finest first; None: the preset's base width doubled per stage
            (capped at 320) over as many stages as the plan has pooling steps.
        deep_supervision: extra low-resolution outputs trained with halving weights; None: ``min(2, stages - 2)``
            for the attention-gated U-Net, 0 for MONAI's wrapper.
        model_options: further model config fields (``{"norm": "group"}``); they win over the plan's topology.
        epochs: training epochs (the poly schedule ends at 0 after the last).
        iterations: optimiser steps per epoch; None: one pass over the training volumes.
        batch_size: patches per step (per process); None: the plan's.
        patch_size: training patch and validation window (X, Y, Z voxels, RAS); None: the plan's.
        samples_per_volume: patches drawn from each loaded volume (``batch_size`` must be a multiple of it).
        foreground_ratio: fraction of patches centred on foreground; None: the plan's.
        optimizer: ``"adamw"`` or ``"sgd"`` (SGD with Nesterov momentum).
        lr, weight_decay: initial learning rate and weight decay; None: per-optimiser defaults.
        momentum: SGD momentum (ignored by AdamW).
        poly_power: the learning rate at epoch ``e`` is ``lr * (1 - e / epochs) ** poly_power``.
        grad_clip: maximum gradient norm (0 disables clipping).
        batch_dice: Dice over the whole batch (nnU-Net's batch Dice) rather than averaged per patch.
        precision: ``"auto"`` (CUDA: bf16 where supported, else fp16 with gradient scaling; CPU: fp32),
            ``"fp32"``, ``"fp16"`` (CUDA only) or ``"bf16"`` (CUDA, or a CPU with native bf16).
        fold: ``"0"`` .. ``"k-1"`` (k-fold over each domain's sorted case ids outside its test split),
            ``"fixed"`` (the manifest's train split against its val split, or a held-back slice of train; never the
            test split: :mod:`medattn.train.splits`) or ``"all"`` (every case but the test split, no validation);
            None: fixed if the manifest has
            a split, else fold 0.
        folds: k of the k-fold split.
        split_seed: seed of the k-fold shuffle (separate from ``seed`` so folds stay put across training seeds).
        val_every: validate every this many epochs (and always after the last).
        val_overlap: sliding-window overlap of validation (fraction of the window).
        sw_batch_size: windows per forward pass in validation.
        val_max_cases: validate on at most this many cases (the first, in split order); None: all.
        augment: ``"default"``, ``"none"`` or a mapping of :class:`~medattn.data.transforms.AugmentConfig`
            fields; resolved to the full field mapping.
        cache: ``"memory"``, ``"disk"`` (in ``RUN/cache``) or ``"none"``: caching of the preprocessed volumes.
        plan_max_cases: when the plan is computed, fingerprint at most this many cases per domain.
        seed: seed of weights, sampling and augmentation.
        workers: data-loading worker processes.
        device: ``cpu``, ``cuda``, ``cuda:N``; None: CUDA when available.
        tensorboard: write TensorBoard event files to ``RUN/tensorboard``.
        exclude_invalid: leave out the cases the input gate refuses (listed in the log, ``split.json`` and
            ``summary.json``) instead of refusing to start (:mod:`medattn.data.gate`).
    """

    data: str = ""
    data_root: str | None = None
    model: str = "ag_unet"
    widths: tuple[int, ...] | None = None
    deep_supervision: int | None = None
    model_options: Mapping[str, Any] = field(default_factory=dict)
    epochs: int = 100
    iterations: int | None = None
    batch_size: int | None = None
    patch_size: Triple | None = None
    samples_per_volume: int = 1
    foreground_ratio: float | None = None
    optimizer: str = "adamw"
    lr: float | None = None
    weight_decay: float | None = None
    momentum: float = 0.99
    poly_power: float = 0.9
    grad_clip: float = 12.0
    batch_dice: bool = True
    precision: str = "auto"
    fold: str | None = None
    folds: int = 5
    split_seed: int = 0
    val_every: int = 1
    val_overlap: float = 0.5
    sw_batch_size: int = 2
    val_max_cases: int | None = None
    augment: Any = "default"
    cache: str = "memory"
    plan_max_cases: int | None = None
    seed: int = 0
    workers: int = 0
    device: str | None = None
    tensorboard: bool = True
    exclude_invalid: bool = False

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "widths", None if self.widths is None else int_tuple(self.widths, "widths"))
        if self.widths is not None and (len(self.widths) < 2 or min(self.widths) < 1):
            raise ConfigError(f"widths: expected at least two positive stage widths, got {list(self.widths)}")
        ps = None if self.patch_size is None else int_tuple(self.patch_size, "patch_size")
        if ps is not None and (len(ps) != 3 or min(ps) < 1):
            raise ConfigError(f"patch_size: expected three positive voxel counts (X, Y, Z), got {list(ps)}")
        set_(self, "patch_size", ps)
        if not isinstance(self.model_options, Mapping):
            raise ConfigError(f"model_options: expected a mapping of model config fields, got {self.model_options!r}")
        set_(self, "model_options", dict(self.model_options))
        _choice(self.optimizer, OPTIMIZERS, "optimizer")
        _choice(self.precision, PRECISIONS, "precision")
        _choice(self.cache, CACHES, "cache")
        if self.lr is None:
            set_(self, "lr", DEFAULT_LR[self.optimizer])
        if self.weight_decay is None:
            set_(self, "weight_decay", DEFAULT_WEIGHT_DECAY[self.optimizer])
        for name, minimum in (
            ("epochs", 1),
            ("samples_per_volume", 1),
            ("folds", 2),
            ("val_every", 1),
            ("sw_batch_size", 1),
            ("workers", 0),
        ):
            check_int(getattr(self, name), name, minimum)
        for name in ("iterations", "batch_size", "val_max_cases", "plan_max_cases", "deep_supervision"):
            if getattr(self, name) is not None:
                check_int(getattr(self, name), name, 0 if name == "deep_supervision" else 1)
        check_int(self.seed, "seed", 0)
        check_int(self.split_seed, "split_seed", 0)
        for name, lo, hi in (
            ("lr", 0.0, None),
            ("weight_decay", 0.0, None),
            ("momentum", 0.0, 1.0),
            ("poly_power", 0.0, None),
            ("grad_clip", 0.0, None),
            ("val_overlap", 0.0, 1.0),
        ):
            _float(self, name, lo, hi, strict=name == "lr")
        if self.val_overlap >= 1.0:
            raise ConfigError(f"val_overlap: expected a fraction in [0, 1), got {self.val_overlap}")
        if self.foreground_ratio is not None:
            _float(self, "foreground_ratio", 0.0, 1.0)
        if self.batch_size is not None and self.batch_size % self.samples_per_volume:
            raise ConfigError(
                f"batch_size {self.batch_size} is not a multiple of samples_per_volume {self.samples_per_volume}"
            )
        if self.fold is not None:
            set_(self, "fold", str(self.fold))
            if self.fold not in ("fixed", "all") and not (self.fold.isdigit() and int(self.fold) < self.folds):
                raise ConfigError(f"fold: expected 0..{self.folds - 1}, 'fixed' or 'all', got {self.fold!r}")
        set_(self, "augment", _resolve_augment(self.augment))
        for name in ("batch_dice", "tensorboard", "exclude_invalid"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}: expected true or false, got {getattr(self, name)!r}")
        set_(self, "data", str(self.data))

    # ---- derived -----------------------------------------------------------------------------------------------

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied (validated like a new config)."""
        return dataclasses.replace(self, **changes)

    # ---- (de)serialisation -------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: tuples as lists, plus ``format`` and ``version``."""
        doc: dict[str, Any] = {"format": CONFIG_FORMAT, "version": CONFIG_VERSION}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            doc[f.name] = list(v) if isinstance(v, tuple) else (dict(v) if isinstance(v, Mapping) else v)
        return doc

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; an unknown key raises :class:`ConfigError` listing the known ones."""
        body = config_fields(cls, doc, fmt=CONFIG_FORMAT, version=CONFIG_VERSION, what="training")
        return cls(**body)

    def save(self, path: str | Path) -> Path:
        return save_config(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        try:
            doc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path}: cannot read the run config: {e}") from e
        try:
            return cls.from_dict(doc)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from e

    @classmethod
    def from_options(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Build from option values as the command line and YAML spell them: field name -> value, where
        ``model_options`` and a mapping ``augment`` may be JSON/YAML text, and sequences may be comma-separated
        text or lists (as the fields accept them). ``medattn train`` passes the options that were given."""
        values = dict(values)
        if isinstance(values.get("model_options"), str):
            values["model_options"] = _parse_mapping(values["model_options"], "model_options")
        if isinstance(values.get("augment"), str) and values["augment"].lstrip().startswith("{"):
            values["augment"] = _parse_mapping(values["augment"], "augment")
        return cls(**values)


# ---- validation helpers ----------------------------------------------------------------------------------------


def _choice(value: Any, allowed: Sequence[str], what: str) -> None:
    if value not in allowed:
        raise ConfigError(f"{what}: {value!r} is not one of {', '.join(allowed)}")


def _float(cfg: TrainConfig, name: str, lo: float, hi: float | None, strict: bool = False) -> None:
    object.__setattr__(cfg, name, check_float(getattr(cfg, name), name, lo, hi, strict=strict))


def _parse_mapping(text: str, what: str) -> dict[str, Any]:
    import yaml

    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{what}: not valid JSON/YAML: {e}") from e
    if not isinstance(doc, dict):
        raise ConfigError(f'{what}: expected a mapping such as \'{{"norm": "group"}}\', got {text!r}')
    return doc


def _resolve_augment(value: Any) -> dict[str, Any]:
    """``"default"``/``"none"``/a partial mapping -> every :class:`AugmentConfig` field (JSON-ready)."""
    from medattn.data.transforms import AugmentConfig

    if value == "default" or value is None:
        aug = AugmentConfig()
    elif value == "none":
        aug = AugmentConfig.none()
    elif isinstance(value, Mapping):
        aug = AugmentConfig.from_dict(value)
    else:
        raise ConfigError(f"augment: expected 'default', 'none' or a mapping of augmentation options, got {value!r}")
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(aug).items()}


def augment_config(cfg: TrainConfig) -> Any:
    """The :class:`~medattn.data.transforms.AugmentConfig` of a run."""
    from medattn.data.transforms import AugmentConfig

    return AugmentConfig.from_dict(cfg.augment)
