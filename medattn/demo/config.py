"""The demo's knobs: :class:`DemoConfig`, saved as ``OUT/demo_config.json`` (the ``medattn demo`` options that set
them are in :mod:`medattn.commands.demo`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from medattn.configdoc import check_int, int_tuple, names
from medattn.errors import ConfigError

CONFIG_FORMAT = "medattn-demo-config"
CONFIG_VERSION = 1


@dataclass(frozen=True)
class DemoConfig:
    """The demo's knobs (``pipelines/demo.yaml``); saved as ``OUT/demo_config.json``.

    Attributes:
        seed: seeds the phantom, the scanner simulation, training, drift tests and adaptation.
        cases: phantom cases per scanner (a quarter of them, at least one, are held out).
        size: phantom volume edge in voxels (1 mm isotropic before the scanner shift).
        scanners: scanner profiles (``medattn synth --list-profiles``); None: A, B, C, D for the phantom, B, C, D
            simulated from a one-domain ``--data``.
        max_cases: ``--data`` only: the first labelled cases of each domain used (None: all).
        model: model preset (``medattn models``).
        widths: feature widths per stage, finest first (their count must match the plan's stages); None: the preset's.
        patch_size: training patch and sliding window (X, Y, Z); None: the plan's.
        steps: optimiser steps of training on the first scanner.
        epochs: the steps are split over this many epochs, each followed by validation (points of the curve).
        lr: learning rate of training (AdamW, poly decay).
        augment: ``"spatial"`` (flips, rotation, scaling), ``"none"``, ``"default"`` or a mapping of augmentation
            options, for training and adaptation. ``"spatial"`` leaves out the intensity and scanner-style
            augmentations on purpose: they would teach the model the very shifts the drift step tests for.
        strategies: continual-learning methods, each adapting the trained model through all scanners; ``joint``
            (one training on every scanner's data at once, from the same model, with the same number of epochs,
            so the same optimiser steps as a continual method's four steps together) is the reference row the
            report compares the others with.
        adapt_epochs: epochs per scanner in adaptation (an epoch is one pass over the scanner's training volumes,
            two volumes, one patch each, a step: the batch of training on the first scanner). Four epochs (48
            steps, against the 600 of training on A) left the earlier B, inverted contrast, at 0.40 after naive
            fine-tuning on it alone; 8, 16 and 32 epochs reached 0.54, 0.62 and 0.66 (two patches per volume).
            Sixteen fit the demo's five minutes on two cores with the three strategies.
        adapt_lr: learning rate of adaptation (AdamW, poly decay within each scanner, so it starts again at this
            value for every scanner). 5e-3 was chosen from 1e-2, 5e-3 and 3e-3 on the phantoms' validation cases
            (``bench/demo_lr.py``: replay's final average Dice, mean over seeds 0-2, 0.624, 0.636 and 0.619; its BWT
            -0.050, -0.036 and -0.030): at 1e-2 each scanner's restart undid more of what the earlier ones taught.
            Plasticity alone, on the earlier B, 8 epochs of naive fine-tuning: 0.27 at 1e-3, 0.52 at 3e-3, 0.54 at
            1e-2, 0.50 at 3e-2.
        replay_patches: replay's memory, in training patches over all scanners seen (replay's own default, a
            tenth of the training voxels seen, is less than one patch on a dataset this small). A phantom volume
            is one patch, so this is in volumes, shared equally by the scanners seen (a volume may be stored
            twice). 64 keeps 16 per scanner at the end, replay's ``min_patches_per_domain`` floor; 24 (6 at the
            end) ended at average Dice 0.625 against 0.630, and replay warned that it lay below the floor.
        replay_batch: memory patches drawn per step beside the current scanner's two. With two (half of each
            step), replay's own step on B left B's head at 0.00-0.06 Dice (12 and 14 epochs): the old scanners'
            patches held the model to A's contrast. With one, 16 epochs, it learned it (head 0.50, B 0.58).
        figure_cases: held-out volumes shown as orthogonal slices (one per scanner in turn).
        threads: PyTorch intra-op threads, fixed so that two runs compute in the same order. One by default: on a
            shared 2-core machine a second thread spins waiting for a core (a training step measured 5-7 s with two
            threads against 0.1 s CPU with one, at load average 13), and the demo's 32^3 patches gain little from it.
            ``medattn demo`` applies it around the run; :func:`medattn.demo.run` only records it.
        device: ``cpu``, ``cuda`` or ``cuda:N``; None: CUDA when available.
    """

    seed: int = 0
    cases: int = 40
    size: int = 32
    scanners: tuple[str, ...] | None = None
    max_cases: int | None = 40
    model: str = "ag_unet_fullres"
    widths: tuple[int, ...] | None = (8, 16, 32, 64)
    patch_size: tuple[int, ...] | None = None
    steps: int = 600
    epochs: int = 10
    lr: float = 1e-2
    augment: Any = "spatial"
    strategies: tuple[str, ...] = ("replay", "naive", "joint")
    adapt_epochs: int = 16
    adapt_lr: float = 5e-3
    replay_patches: int = 64
    replay_batch: int = 1
    figure_cases: int = 4
    threads: int = 1
    device: str | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        for name in ("scanners", "strategies"):
            value = getattr(self, name)
            if value is not None:
                set_(self, name, names(value, name))
        for name in ("widths", "patch_size"):
            value = getattr(self, name)
            if value is not None:
                ints = int_tuple(value, name)
                if not ints or min(ints) < 1:
                    raise ConfigError(f"{name}: expected positive integers, got {value!r}")
                set_(self, name, ints)
        for name, minimum in (
            ("seed", 0),
            ("cases", 2),
            ("size", 1),
            ("steps", 1),
            ("epochs", 1),
            ("adapt_epochs", 1),
            ("figure_cases", 0),
            ("threads", 1),
            ("replay_patches", 1),
            ("replay_batch", 1),
        ):
            check_int(getattr(self, name), name, minimum)
        if self.max_cases is not None:
            check_int(self.max_cases, "max_cases", 2)
        for name in ("lr", "adapt_lr"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(f"{name}: expected a number > 0, got {value!r}")
            set_(self, name, float(value))
        if not self.strategies:
            raise ConfigError("strategies: give at least one continual-learning method")

    @property
    def augment_options(self) -> Any:
        """``augment`` as :class:`~medattn.train.config.TrainConfig` and ``AdaptConfig`` take it."""
        if isinstance(self.augment, str) and self.augment.lstrip().startswith("{"):
            import yaml

            try:
                return yaml.safe_load(self.augment)
            except yaml.YAMLError as e:
                raise ConfigError(f"augment: not valid JSON/YAML: {e}") from e
        if self.augment != "spatial":
            return self.augment
        from medattn.data.transforms import AugmentConfig

        off = {f.name: 0.0 for f in dataclasses.fields(AugmentConfig) if f.name.endswith("_prob")}
        return {**off, "flip_prob": 0.5, "rotate_prob": 0.2, "scale_prob": 0.2}

    @property
    def iterations(self) -> int:
        """Optimiser steps per training epoch (``steps`` spread over ``epochs``, rounded up)."""
        return -(-self.steps // self.epochs)

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"format": CONFIG_FORMAT, "version": CONFIG_VERSION}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            doc[f.name] = list(v) if isinstance(v, tuple) else v
        return doc
