"""Run one method through a domain stream: evaluate, train experience by experience, checkpoint, resume.

Layout of a method's folder (``RUN/<method>/``)::

    state.pt                 strategy state after the last finished experience (weights-only loadable)
    <ii>_<domain>/model.pt   the model after experience ii (a self-contained medattn model file)
    decisions.json           with a gate (``medattn adapt --auto``): per experience, adapt or skip, and why
    joint/model.pt           joint training's single model
    metrics.json, matrix.csv, summary.csv, matrix.png    written by medattn.continual.adapt
    csv/, tensorboard/, log.txt                          Avalanche loggers

Before each experience every random source is reseeded from ``(seed, experience)``: PyTorch, NumPy and Python's
generators, the experience's MONAI transforms and the replay augmentation. A run stopped between experiences and
resumed from ``state.pt`` therefore trains exactly as an uninterrupted one.

A gate (:class:`ExperienceGate`, e.g. :class:`medattn.drift.gate.DriftGate`) decides before each experience after
the first whether to train on it; a skipped experience is still evaluated (its Dice matrix row exists) and its
model file is the unchanged model. The decisions are saved in ``state.pt`` so a resumed run keeps them.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from medattn.continual.config import AdaptConfig
from medattn.continual.methods import MethodContext, MethodSpec, build_method, strategy_class
from medattn.continual.metrics import DiceMatrix
from medattn.continual.plugin_metrics import ExperienceDice
from medattn.data.io import atomic_write_text, atomic_write_with
from medattn.errors import ConfigError, DataError
from medattn.jsonio import dumps
from medattn.runtime import resolve_device, seed_everything
from medattn.typing import Triple

log = logging.getLogger(__name__)

STATE_FORMAT = "medattn-adapt-state"
STATE_VERSION = 1


@dataclass
class MethodRun:
    """The outcome of :func:`run_method`.

    Attributes:
        name: the method.
        folder: its output folder.
        matrix: the Dice matrix (rows so far; complete unless ``finished`` is False).
        finished: every experience was trained.
        models: model files written, in training order.
        extras: method-specific facts (replay: stored patches and fraction of the old data; selftrain: its
            pseudo-labelling passes, ``pseudo_labels``).
        decisions: with a gate, one record per experience (``adapt``: trained on it or not, and the evidence);
            without, a record for each experience skipped for want of labelled training cases.
    """

    name: str
    folder: Path
    matrix: DiceMatrix
    finished: bool
    models: list[Path] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)
    decisions: list[dict[str, Any]] = field(default_factory=list)


class ExperienceGate(Protocol):
    """Decides whether to train on an incoming experience; returns a JSON-ready record with ``adapt`` (bool).

    Called with the current network, the evaluation plan, the incoming train experience, the train experiences
    trained on so far, and the current model's mean test Dice per domain (None before any evaluation).
    """

    def __call__(
        self, model: Any, plan: Any, incoming: Any, trained: Sequence[Any], dice_row: dict[str, float | None] | None
    ) -> dict[str, Any]: ...


def experience_seed(seed: int, index: int) -> int:
    return int(seed) * 1_000_003 + int(index)


def augment_factory(plan: Any, cfg: AdaptConfig) -> Any:
    """A factory of the replay augmentation: the training augmentations, then plain float32 tensors."""

    def make() -> Any:
        from monai.transforms import Compose, EnsureTyped

        from medattn.data.transforms import augment_transforms

        return Compose(
            [
                *augment_transforms(plan, cfg.augment_config()),
                EnsureTyped(keys=["image", "label"], dtype=torch.float32, track_meta=False),
            ]
        )

    return make


def dice_metric(strategy: Any) -> ExperienceDice:
    for m in strategy.evaluator.metrics:
        if isinstance(m, ExperienceDice):
            return m
    raise ConfigError("the strategy's evaluator has no ExperienceDice metric")


def evaluate(strategy: Any, test_stream: Any) -> np.ndarray:
    """Dice (T, C) of the current model on every test experience (whole volumes, sliding window)."""
    metric = dice_metric(strategy)
    metric.clear_results()
    strategy.eval(test_stream)
    names = strategy.class_names[1:]
    rows = []
    for exp in test_stream:
        res = metric.results[int(exp.current_experience)]
        rows.append([res["per_class"][c] for c in names])
    return np.asarray(rows, dtype=float)


def mirrored_training(doc: Mapping[str, Any], cfg: AdaptConfig) -> tuple[bool, str]:
    """Whether the start model may be trusted on mirrored images, and why: its training run flipped its patches
    (the augmentation recorded in its model file by ``medattn train``), or, where the file records no training run
    (a model written by ``adapt``, say), this adaptation flips them. A network never shown a flipped image can be
    far worse on one than on the image itself (the tests' phantom model, trained without flips, loses about 0.2 of
    Dice on the mean over all eight mirrorings), so test-time mirroring is only as good as the training behind it."""
    from medattn.models.model_file import recorded_flip_prob

    p = recorded_flip_prob(doc)
    if p is not None:
        return p > 0, f"its model file records training with flips at probability {p:g}"
    p = float(cfg.augment_config().flip_prob)
    return p > 0, f"its model file records no training run, and this adaptation flips at probability {p:g}"


def build_strategy(
    name: str, start: Any, cfg: AdaptConfig, patch: Triple, loggers: Sequence[Any] = (), domains: int = 1
) -> tuple[Any, MethodSpec]:
    """The segmentation strategy for method ``name``, from the start model (a ``LoadedModel``).

    ``domains``: the stream's length. With ``cfg.steps``, joint training (one experience holding every domain) gets
    ``steps`` per domain in all, the optimiser steps a continual method takes over the stream (as ``epochs`` gives
    it the same passes over the concatenated data)."""
    from avalanche.training.plugins import LRSchedulerPlugin

    from medattn.continual.template import batch_norm_layers, segmentation_evaluator
    from medattn.models.registry import model_from_checkpoint
    from medattn.train.losses import DeepSupervisionLoss
    from medattn.train.optim import make_optimizer, make_poly_schedule

    device = resolve_device(cfg.device)
    model = model_from_checkpoint(start.doc).to(device)
    k = int(start.doc["config"]["out_channels"])
    bn = batch_norm_layers(model)
    if bn:  # the config's norm field misses networks with hard-coded batch norm (monai_attention_unet)
        log.warning(
            "%s: the model has %d batch-norm layer(s) (%s); their running statistics will follow the latest "
            "domain's scanner (instance norm, medattn's default, or group norm normalises each volume by itself)",
            name,
            len(bn),
            bn[0],
        )
    names = [start.labels.get(i, f"class{i}") for i in range(k)]
    plan = start.plan if cfg.patch_size is None else dataclasses.replace(start.plan, patch_size=patch)
    context = MethodContext(
        num_classes=k,
        train_mb_size=cfg.batch_size,
        samples_per_volume=cfg.samples_per_volume,
        patch_size=patch,
        seed=cfg.seed,
        augment_transform=augment_factory(plan, cfg),
        mirrored_training=mirrored_training(start.doc, cfg),
    )
    spec = build_method(name, cfg.method_params(name), context)
    optimizer = make_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum)
    plugins = list(spec.plugins)
    steps = None if cfg.steps is None else cfg.steps * (domains if spec.joint else 1)
    if cfg.poly_power > 0:  # per epoch over ``epochs``, or per step over ``steps``
        sched = make_poly_schedule(optimizer, steps or cfg.epochs, cfg.poly_power)
        granularity = "epoch" if steps is None else "iteration"
        plugins.append(LRSchedulerPlugin(sched, reset_scheduler=True, reset_lr=True, step_granularity=granularity))
    if steps is not None:
        from medattn.continual.steps import StepBudget

        plugins.append(StepBudget(steps))  # last: it reads the data loader the other plugins leave
    scales = getattr(model, "output_scales", None)
    strategy = strategy_class(spec.base)(
        model=model,
        optimizer=optimizer,
        criterion=DeepSupervisionLoss(scales=scales),
        window=patch,
        num_classes=k,
        class_names=names,
        overlap=cfg.overlap,
        window_batch=cfg.window_batch,
        precision=cfg.precision,
        grad_clip=cfg.grad_clip,
        train_mb_size=cfg.batch_size,
        train_epochs=cfg.epochs,
        eval_mb_size=1,
        device=device,
        plugins=plugins,
        evaluator=segmentation_evaluator(names, loggers),
    )
    return strategy, spec


def _save_state(path: Path, doc: dict[str, Any]) -> None:
    atomic_write_with(path, lambda tmp: torch.save(doc, tmp))


def _load_state(path: Path) -> dict[str, Any]:
    try:
        doc = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # zip/pickle errors come in many types
        raise DataError(f"cannot read the run state ({type(e).__name__}: {e}); start a new --out", path) from e
    if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT or int(doc.get("version", 0)) > STATE_VERSION:
        raise DataError("not a medattn adapt state (or from a newer medattn)", path)
    return doc


def run_method(
    name: str,
    start: Any,
    bench: Any,
    cfg: AdaptConfig,
    folder: str | Path,
    *,
    resume: bool = False,
    loggers: Sequence[Any] = (),
    stop_after: int | None = None,
    gate: ExperienceGate | None = None,
) -> MethodRun:
    """Adapt ``start`` (a ``LoadedModel``) through ``bench``'s streams with method ``name``.

    Args:
        name: method name.
        start: the loaded start model (``medattn.models.model_file.load_model``).
        bench: the Avalanche benchmark of :func:`~medattn.continual.scenario.domain_scenario`.
        cfg: the run configuration.
        folder: this method's output folder.
        resume: continue from ``folder/state.pt`` (required when it exists).
        loggers: Avalanche loggers for the strategy's evaluator.
        stop_after: stop once this many experiences are finished (the state is saved; resume continues).
        gate: decides before each experience after the first whether to train on it (not for joint training).

    Returns:
        :class:`MethodRun`; ``finished`` is False when stopped early.
    """
    from medattn.models.model_file import save_model

    folder = Path(folder)
    state_path = folder / "state.pt"
    train_stream, test_stream = list(bench.train_stream), list(bench.test_stream)
    domains = [e.domain for e in train_stream]
    patch = train_stream[0].patch_size
    strategy, spec = build_strategy(name, start, cfg, patch, loggers, domains=len(domains))
    classes = strategy.class_names[1:]
    rows: list[list[list[float]]] = []
    before: list[list[float]] | None = None
    decisions: list[dict[str, Any]] = []
    done = 0
    if state_path.exists():
        if not resume:
            raise ConfigError(f"{folder} holds an earlier run of {name}; pass --resume to continue it, or a new --out")
        st = _load_state(state_path)
        if st["method"] != name or st["domains"] != domains:
            raise ConfigError(
                f"{state_path}: the saved run is {st['method']} over {st['domains']}, not {name} over {domains}"
            )
        strategy.load_state_dict(st["strategy"])
        rows, before, done = st["rows"], st["before"], int(st["done"])
        decisions = list(st.get("decisions") or [])
        if spec.restore is not None:
            spec.restore(strategy, [e for i, e in enumerate(train_stream[:done]) if _adapted(decisions, i)])
        log.info("%s: resuming after %d of %d experience(s)", name, done, len(domains))
    plan = start.plan if cfg.patch_size is None else dataclasses.replace(start.plan, patch_size=patch)

    def checkpoint() -> None:
        _save_state(
            state_path,
            {
                "format": STATE_FORMAT,
                "version": STATE_VERSION,
                "method": name,
                "domains": domains,
                "done": done,
                "rows": rows,
                "before": before,
                "decisions": decisions,
                "strategy": strategy.state_dict(),
            },
        )

    if gate is not None and spec.joint:
        log.info("%s: joint training sees every domain at once; the gate does not apply", name)
        gate = None
    if before is None and cfg.eval_before and done == 0:
        log.info("%s: evaluating the start model on %s", name, ", ".join(domains))
        before = evaluate(strategy, test_stream).tolist()
        checkpoint()
    models: list[Path] = []
    total = 1 if spec.joint else len(domains)
    while done < total and (stop_after is None or done < stop_after):
        seed = experience_seed(cfg.seed, done)
        seed_everything(seed)
        adapt_here = True
        if spec.joint:
            for i, exp in enumerate(train_stream):
                exp.seed(experience_seed(cfg.seed, i))
            log.info("%s: training on %s jointly", name, ", ".join(domains))
            strategy.train(train_stream, eval_streams=[])
            tag, trained = "joint", domains
        else:
            exp = train_stream[done]
            exp.seed(seed)
            if gate is not None and done > 0:
                seen = [e for i, e in enumerate(train_stream[:done]) if _adapted(decisions, i)]
                latest = rows[-1] if rows else before
                row = None if latest is None else dict(zip(domains, _row_means(latest)))
                record = _plain(
                    {"experience": done, "domain": exp.domain, **gate(strategy.model, plan, exp, seen, row)}
                )
                adapt_here = bool(record["adapt"])
                record.setdefault("decision", "adapt" if adapt_here else "skip")
                record.setdefault("reason", "")
                decisions.append(record)
                log.info("%s: %s %s (%s)", name, record["decision"], exp.domain, record["reason"])
            elif gate is not None:
                decisions.append(_first_decision(exp.domain))
            why = None
            if adapt_here and not _has_training_data(exp, spec.label_free):
                why = "no labelled training case" + ("" if spec.label_free else f" ({name} learns from labels only)")
            elif adapt_here and spec.veto is not None:
                why = spec.veto(strategy, exp)
            if why is not None:
                adapt_here = False
                mine = next((d for d in decisions if int(d.get("experience", -1)) == done), None)
                if mine is None:
                    mine = {"experience": done, "domain": exp.domain}
                    decisions.append(mine)
                elif mine.get("reason"):  # the drift gate's evidence stays, its decision is overruled
                    why = f"{why}; the drift gate: {mine['reason']}"
                mine.update(adapt=False, decision="skip", reason=why)
                log.warning("%s: %s not trained on: %s", name, exp.domain, why)
            if adapt_here:
                log.info("%s: experience %d/%d, domain %s", name, done + 1, total, exp.domain)
                strategy.train(exp, eval_streams=[])
            else:
                log.info("%s: experience %d/%d, domain %s: skipped", name, done + 1, total, exp.domain)
            tag = f"{done:02d}_{exp.domain}"
            trained = [d for i, d in enumerate(domains[: done + 1]) if _adapted(decisions, i)]
        # A skipped domain left the weights as they were: its row is the previous one, not a second evaluation.
        latest = rows[-1] if rows else before
        rows.append(evaluate(strategy, test_stream).tolist() if adapt_here or latest is None else copy.deepcopy(latest))
        meta = {
            "adapt": {
                "method": name,
                "params": spec.params,
                "trained_on": trained,
                "experience": done,
                "dice": dict(zip(domains, _row_means(rows[-1]))),
            }
        }
        if decisions:
            meta["adapt"]["decision"] = decisions[-1]["decision"]
        save_model(folder / tag / "model.pt", strategy.model, plan, meta)
        done = total if spec.joint else done + 1
        checkpoint()
    models = [p for p in sorted(folder.glob("*/model.pt"))]
    matrix = DiceMatrix(
        method=name,
        domains=domains,
        classes=classes,
        rows=["joint"] if spec.joint else domains[: len(rows)],
        values=np.asarray(rows, dtype=float).reshape(len(rows), len(domains), len(classes)),
        before=None if before is None else np.asarray(before, dtype=float),
    )
    extras: dict[str, Any] = {}
    policy = next((getattr(p, "storage_policy", None) for p in strategy.plugins if hasattr(p, "storage_policy")), None)
    if policy is not None and hasattr(policy, "stored_fraction"):
        extras = {
            "stored_patches": sum(len(g.case_ids) for g in policy.buffer_groups.values()),
            "stored_fraction": round(float(policy.stored_fraction), 6),
            "stored_per_domain": dict(getattr(policy, "stored_per_domain", {})),  # domain name -> patches
        }
    history = [r for p in strategy.plugins for r in getattr(p, "history", ())]
    if history:  # self-training's pseudo-labelling passes: how much of each domain it trusted
        extras["pseudo_labels"] = history
        atomic_write_text(folder / "pseudo_labels.json", json.dumps(history, indent=2) + "\n")
    if decisions:
        atomic_write_text(folder / "decisions.json", json.dumps(decisions, indent=2) + "\n")
    return MethodRun(name, folder, matrix, done >= total, models, extras, decisions)


def _has_training_data(exp: Any, label_free: bool) -> bool:
    """Whether ``exp`` holds something the method can learn from: labelled volumes, or unlabelled ones for a
    label-free method."""
    volumes = getattr(exp, "volumes", None)
    if volumes is None or len(volumes) > 0:
        return True
    pool = getattr(exp, "unlabelled", None)
    return bool(label_free and pool is not None and len(pool) > 0)


def _adapted(decisions: Sequence[dict[str, Any]], index: int) -> bool:
    """Whether experience ``index`` was trained on (always, without a gate's record for it)."""
    for d in decisions:
        if int(d.get("experience", -1)) == index:
            return bool(d["adapt"])
    return True


def _plain(record: dict[str, Any]) -> dict[str, Any]:
    """A JSON round trip: NumPy scalars become Python ones, so the record is weights-only loadable in ``state.pt``."""
    return json.loads(dumps(record, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def _first_decision(domain: str) -> dict[str, Any]:
    return {
        "experience": 0,
        "domain": domain,
        "adapt": True,
        "decision": "adapt",
        "reason": "first experience: no reference to test against",
    }


def _row_means(row: Sequence[Sequence[float]]) -> list[float | None]:
    out: list[float | None] = []
    for r in row:
        vals = [v for v in r if not math.isnan(v)]
        out.append(round(sum(vals) / len(vals), 6) if vals else None)
    return out
