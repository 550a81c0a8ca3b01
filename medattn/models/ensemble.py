"""Several model files as one predictor: the folds of a k-fold run, or any models trained with one plan.

MONAI has no ensemble for sliding-window inference that keeps memory bounded (its ``EnsembleEvaluator`` runs each
network over the whole volume and keeps a full-volume output per member), and nnU-Net's lives inside its own
predictor. Here the members run window by window inside medattn's slab stitcher: :class:`EnsembleNetwork` returns
every member's class logits side by side, and :func:`medattn.infer.sliding.sliding_window_predict` (``members``)
blends each member's logits as it would one model's and averages the members' probabilities. Peak memory grows by
one slab per member, not by a volume.

Members must agree on what the prediction means and how the image is prepared: labels, channel names and order,
and the preprocessing of the plan (target spacing, normalisation of every channel, foreground crop, patch size).
The folds of one run trained with one ``--plan`` do; anything else is refused naming both files and the field.

A run folder stands for its folds: ``RUN/fold_*/model.pt`` (``medattn train --fold k --out RUN/fold_k``), else
``RUN/model.pt``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medattn.errors import DataError
from medattn.typing import DeviceLike

#: The plan fields members must share (everything that prepares the image or names the output).
SHARED_PLAN_FIELDS = ("labels", "channels", "target_spacing", "crop_foreground", "patch_size")
#: The model file of each fold of a run folder, as ``medattn train --fold k --out RUN/fold_k`` writes it.
FOLD_GLOB = "fold_*/model.pt"


def model_paths(specs: Sequence[str | Path]) -> list[Path]:
    """The model files named by ``specs``: model files as given; a run folder as its ``fold_*/model.pt`` (sorted
    by fold number), or its ``model.pt``.

    Raises:
        DataError: a path that does not exist, or a folder holding neither.
    """
    out: list[Path] = []
    for spec in specs:
        p = Path(spec)
        if p.is_dir():
            folds = sorted(p.glob(FOLD_GLOB), key=lambda f: _fold_number(f.parent.name))
            if folds:
                check_every_fold_is_there(p, [f.parent for f in folds])
                out.extend(folds)
            elif (p / "model.pt").is_file():
                out.append(p / "model.pt")
            else:
                raise DataError("a run folder must hold model.pt or fold_*/model.pt", p)
        elif p.is_file():
            out.append(p)
        else:
            raise DataError("no such model file or run folder", p)
    if len({q.resolve() for q in out}) != len(out):
        raise DataError("the same model file is named twice; an ensemble's members must differ", out[0])
    return out


def _fold_number(name: str) -> tuple[int, str]:
    tail = name.rsplit("_", 1)[-1]
    return (int(tail), name) if tail.isdigit() else (1 << 30, name)


def check_compatible(paths: Sequence[Path], plans: Sequence[Any]) -> None:
    """Refuse members whose plans differ in :data:`SHARED_PLAN_FIELDS` (the first member is the reference).

    Raises:
        DataError: naming the two files and the field, with both values.
    """
    first = plans[0]
    for path, plan in zip(paths[1:], plans[1:]):
        for name in SHARED_PLAN_FIELDS:
            a, b = getattr(first, name), getattr(plan, name)
            if _comparable(a) != _comparable(b):
                what = {"labels": "labels", "channels": "channels or their normalisation"}.get(name, name)
                raise DataError(
                    f"ensemble members disagree on {what}: {paths[0]} has {_shown(a)}, this one {_shown(b)};"
                    " members must be trained with one plan (medattn train --plan PLAN for every fold)",
                    path,
                )


def _comparable(value: Any) -> Any:
    if isinstance(value, dict) or hasattr(value, "items"):
        return sorted((int(k), str(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return tuple(_comparable(v) for v in value)
    if hasattr(value, "__dataclass_fields__"):
        return tuple((f.name, _comparable(getattr(value, f.name))) for f in fields(value))
    if isinstance(value, float):
        return round(value, 6)
    return value


def _shown(value: Any) -> str:
    if isinstance(value, (list, tuple)) and value and hasattr(value[0], "__dataclass_fields__"):
        return "[" + ", ".join(f"{v.name} ({v.scheme}, mean {v.mean:.4g}, std {v.std:.4g})" for v in value) + "]"
    if hasattr(value, "items"):
        return str(dict(value))
    return str(tuple(value) if isinstance(value, (list, tuple)) else value)


class EnsembleNetwork(nn.Module):
    """The members' class logits one after another: (B, M x K, *window) for a (B, C, *window) batch.

    A member returning a list (deep supervision) or more than K channels (attention maps) contributes its first
    output's first K channels.
    """

    def __init__(self, members: Sequence[nn.Module], num_classes: int) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.num_classes = int(num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for member in self.members:
            out = member(x)
            if isinstance(out, (list, tuple)):
                out = out[0]
            outs.append(out[:, : self.num_classes])
        return torch.cat(outs, dim=1)


@dataclass
class LoadedEnsemble:
    """What :func:`load_models` returns: one member or several behind one network.

    Attributes:
        paths: the member files, in order.
        model: the single member's network, or an :class:`EnsembleNetwork`.
        plan: the (shared) plan; the first member's.
        members: M (1 for a single model).
        loaded: each member's :class:`~medattn.models.model_file.LoadedModel`.
    """

    paths: list[Path]
    model: nn.Module
    plan: Any
    members: int
    loaded: list[Any]

    @property
    def labels(self) -> dict[int, str]:
        return dict(self.loaded[0].labels)


def load_models(specs: Sequence[str | Path], device: DeviceLike = "cpu") -> LoadedEnsemble:
    """Load the model files named by ``specs`` (:func:`model_paths`) as one predictor, checking the members agree.

    Raises:
        DataError: a missing or unreadable model file, or members that disagree (:func:`check_compatible`).
    """
    from medattn.models.model_file import load_model

    paths = model_paths(specs)
    loaded = [load_model(p, device) for p in paths]
    check_compatible(paths, [m.plan for m in loaded])
    plan = loaded[0].plan
    if len(loaded) == 1:
        return LoadedEnsemble(paths, loaded[0].model, plan, 1, loaded)
    net = EnsembleNetwork([m.model for m in loaded], plan.num_classes).eval()
    return LoadedEnsemble(paths, net, plan, len(loaded), loaded)


def check_every_fold_is_there(run: Path, folds: list[Path]) -> None:
    """Refuse a k-fold run missing some of its folds (a crashed, deleted or still running one), or holding a fold
    that has not finished training (``config.json`` but no ``summary.json``: its ``model.pt`` is the best epoch so
    far): ``predict`` would ensemble fewer or half-trained models under a postprocessing rule learned on all, and
    ``crossval``'s scores and rule would cover only part of the cases while saying "all". Each fold's
    ``config.json`` records ``folds`` (k) and ``fold``."""
    import json

    expected: set[int] = set()
    present: set[str] = set()
    for f in folds:
        cfg_path = f / "config.json"
        if not cfg_path.is_file():
            continue
        if not (f / "summary.json").is_file():
            raise DataError(
                "the fold has not finished training (no summary.json; its model.pt is the best epoch so far): "
                "let it finish, or resume it with medattn train ... --resume",
                f,
            )
        try:
            cfg = json.loads(cfg_path.read_text())
        except (OSError, ValueError):
            raise DataError("cannot read the fold's config.json", cfg_path) from None
        k = cfg.get("folds")
        if isinstance(k, int) and k >= 2:
            expected.add(k)
        present.add(str(cfg.get("fold", f.name.rsplit("_", 1)[-1])))
    if len(expected) > 1:
        raise DataError(f"the folds were trained as different k-fold splits (k = {sorted(expected)})", run)
    if expected:
        missing = [f"fold_{i}" for i in range(next(iter(expected))) if str(i) not in present]
        if missing:
            raise DataError(
                f"the run is a {next(iter(expected))}-fold split but {', '.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} missing (no model.pt): their validation cases would have "
                "no out-of-fold prediction; train the missing fold(s) (medattn train ... --fold N) first",
                run,
            )
