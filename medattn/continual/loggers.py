"""Avalanche loggers for a segmentation run: interactive (progress bars) or text, CSV, TensorBoard.

Avalanche's ``InteractiveLogger``, ``TextLogger`` and ``TensorboardLogger`` log any metric by name and are used as
they are. Its ``CSVLogger`` looks for accuracy by name (``Top1_Acc_Exp``) and would write zeros for a segmentation
run; :class:`DiceCSVLogger` reads the Dice and loss metrics instead, computes forgetting from the Dice it has seen
and appends to existing files, so a resumed run keeps the rows written before the interruption.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from avalanche.logging import CSVLogger

from medattn.data.io import atomic_write_text

log = logging.getLogger(__name__)

LOGGERS = ("interactive", "text", "csv", "tensorboard")
#: Columns of ``training_results.csv``: one row per training epoch.
TRAIN_COLUMNS = ("training_exp", "epoch", "training_dice", "training_loss")
#: Columns of ``eval_results.csv``: one row per evaluated experience.
EVAL_COLUMNS = ("eval_exp", "training_exp", "eval_dice", "eval_loss", "forgetting")
#: Columns of ``memory.csv`` (methods with a replay memory): after each training experience, one row per domain.
MEMORY_COLUMNS = ("training_exp", "domain", "stored_patches")


class DiceCSVLogger(CSVLogger):
    """``CSVLogger`` for segmentation, appending to two files in ``log_folder``.

    ``training_results.csv`` (:data:`TRAIN_COLUMNS`), per training epoch (``epoch`` counts from 1 in each
    experience, as ``medattn train``'s log does): ``training_dice``, the epoch's pooled patch Dice
    (:class:`~medattn.continual.plugin_metrics.EpochDice`), and ``training_loss``, the mean training loss
    (Avalanche's ``Loss_Epoch``). There are no validation columns: the strategy evaluates only between experiences
    (``eval_results.csv``).

    ``eval_results.csv`` (:data:`EVAL_COLUMNS`), per evaluated experience ``eval_exp`` after training experience
    ``training_exp`` (``before`` for the start model): ``eval_dice`` is ``R[i][j]``, the mean Dice of
    :class:`~medattn.continual.plugin_metrics.ExperienceDice`; ``eval_loss`` the mean whole-volume loss over the
    experience's cases (Avalanche's ``Loss_Exp``); ``forgetting`` is ``max_{l<i} R[l][j] - R[i][j]``, the drop
    from the best Dice of an earlier training experience (:func:`medattn.continual.metrics.forgetting`, per entry),
    left empty where it is undefined: before any training and at a domain's first evaluation after training.

    Values are written with six decimals; an undefined (NaN) value is an empty cell. An existing file is appended
    to, and the Dice already in ``eval_results.csv`` are read back so forgetting continues over a resumed run; a
    file written with other columns (earlier versions had always-zero ``val_dice`` and ``val_loss``) is first
    rewritten with the current columns, keeping the values of the columns both share.

    ``memory.csv`` (:data:`MEMORY_COLUMNS`), only for a method with a replay memory (a plugin whose storage policy
    reports ``stored_per_domain``, :class:`~medattn.continual.methods.replay.ForegroundPatchBuffer`): after each
    training experience, the patches stored per domain once the memory has been updated with that experience.
    """

    def __init__(self, log_folder: str | Path) -> None:
        # CSVLogger.__init__ truncates its files and writes accuracy headers; set its state up here instead.
        self.log_folder = str(log_folder)
        os.makedirs(self.log_folder, exist_ok=True)
        self.training_exp_id = None
        self.in_train_phase = None
        self.training_file = _open_csv(Path(self.log_folder) / "training_results.csv", TRAIN_COLUMNS)
        eval_path = Path(self.log_folder) / "eval_results.csv"
        self.eval_file = _open_csv(eval_path, EVAL_COLUMNS)
        #: eval experience -> {training experience: Dice R[i][j]}, read back from earlier rows of this log.
        self.dice_history: dict[int, dict[int, float]] = _read_dice(eval_path)
        self.memory_file: TextIO | None = None  # memory.csv, opened at the first memory to log

    def before_training_exp(self, strategy: Any, metric_values: list[Any], **kwargs: Any) -> None:
        super().before_training_exp(strategy, metric_values, **kwargs)
        # rows an interrupted run wrote for this experience before it stopped: it is trained again from its start
        exp = str(self.training_exp_id)
        self.training_file = _drop_rows(self.training_file, TRAIN_COLUMNS, "training_exp", exp)
        self.eval_file = _drop_rows(self.eval_file, EVAL_COLUMNS, "training_exp", exp)
        memory = Path(self.log_folder) / "memory.csv"
        if memory.is_file():
            if self.memory_file is None:
                self.memory_file = _open_csv(memory, MEMORY_COLUMNS)
            self.memory_file = _drop_rows(self.memory_file, MEMORY_COLUMNS, "training_exp", exp)

    def after_training_exp(self, strategy: Any, metric_values: list[Any], **kwargs: Any) -> None:
        # The evaluator (whose loggers these are) is the strategy's last plugin: the memory is already updated.
        stored = stored_per_domain(strategy)
        if stored is None:
            return
        if self.memory_file is None:
            self.memory_file = _open_csv(Path(self.log_folder) / "memory.csv", MEMORY_COLUMNS)
        for domain, count in stored.items():
            _write(self.memory_file, [self.training_exp_id, domain, count])

    def close(self) -> None:
        super().close()
        if self.memory_file is not None:
            self.memory_file.close()

    def after_training_epoch(self, strategy: Any, metric_values: list[Any], **kwargs: Any) -> None:
        dice = _metric(metric_values, "Dice_Epoch/", "train_stream")
        loss = _metric(metric_values, "Loss_Epoch/", "train_stream")
        epoch = strategy.clock.train_exp_epochs + 1  # the clock counts finished epochs after this callback
        _write(self.training_file, [self.training_exp_id, epoch, dice, loss])

    def after_eval_exp(self, strategy: Any, metric_values: list[Any], **kwargs: Any) -> None:
        if self.in_train_phase:  # a periodic evaluation inside training (eval_every): not logged here
            return
        j = int(strategy.experience.current_experience)
        dice = _metric(metric_values, "Dice_Exp/")
        loss = _metric(metric_values, "Loss_Exp/")
        if self.training_exp_id is None:
            _write(self.eval_file, [j, "before", dice, loss, math.nan])
            return
        i = int(self.training_exp_id)
        seen = self.dice_history.setdefault(j, {})
        earlier = [seen[step] for step in sorted(seen) if step < i]  # rows of an interrupted step i are stale
        seen[i] = dice
        # forgetting is defined for domains trained on before this step (Chaudhry et al.): j < i
        lost = entry_forgetting([*earlier, dice]) if j < i else math.nan
        _write(self.eval_file, [j, i, dice, loss, lost])


def stored_per_domain(strategy: Any) -> dict[str, int] | None:
    """Patches stored per domain by the first plugin of ``strategy`` whose storage policy reports them; None when
    no plugin keeps such a memory."""
    for plugin in getattr(strategy, "plugins", ()):
        stored = getattr(getattr(plugin, "storage_policy", None), "stored_per_domain", None)
        if stored is not None:
            return dict(stored)
    return None


def entry_forgetting(history: Sequence[float]) -> float:
    """Forgetting of one domain ``j`` at its latest evaluation: ``max_{l<i} R[l][j] - R[i][j]``, the per-entry
    term of :func:`medattn.continual.metrics.forgetting` (NaN entries skipped, as there).

    Args:
        history: ``R[0][j], ..., R[i][j]``, the domain's Dice after each training experience so far, in training
            order (the start model's Dice not included).

    Returns:
        NaN for a single evaluation, or where the latest Dice or every earlier one is NaN.
    """
    earlier = [float(h) for h in history[:-1] if not math.isnan(h)]
    if not earlier or math.isnan(history[-1]):
        return math.nan
    return max(earlier) - float(history[-1])


def _metric(values: Sequence[Any], prefix: str, stream: str | None = None) -> float:
    """The value of the metric named ``prefix...`` (on ``stream`` when given) among ``values``; NaN if absent."""
    for val in values:
        if val.name.startswith(prefix) and (stream is None or stream in val.name):
            return float(val.value)
    return math.nan


def _cell(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return "" if math.isnan(value) else f"{float(value):.6f}"
    return "" if value is None else str(value)


def _write(file: TextIO, row: Sequence[Any]) -> None:
    csv.writer(file, lineterminator="\n").writerow([_cell(v) for v in row])
    file.flush()


def _drop_rows(handle: TextIO, columns: Sequence[str], column: str, value: str) -> TextIO:
    """Remove the rows whose ``column`` is ``value`` from the CSV file open for appending in ``handle`` (rewritten
    atomically when there are any); returns the handle to append with."""
    handle.flush()
    path = Path(handle.name)
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    kept = [r for r in rows if r.get(column) != value]
    if len(kept) == len(rows):
        return handle
    handle.close()
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(kept)
    atomic_write_text(path, buf.getvalue())
    log.info("%s: %d row(s) of an interrupted training experience %s removed", path, len(rows) - len(kept), value)
    return _open_csv(path, columns)


def _open_csv(path: Path, columns: Sequence[str]) -> TextIO:
    """``path`` opened for appending rows of ``columns``: created with its header, or an existing file whose
    header is ``columns``; a file with another header is first rewritten (atomically) with ``columns``, each row
    keeping the values of the columns the two headers share."""
    text = path.read_text() if path.exists() else ""
    if not text.strip():
        atomic_write_text(path, ",".join(columns) + "\n")
    else:
        reader = csv.DictReader(io.StringIO(text))
        if tuple(reader.fieldnames or ()) != tuple(columns):
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
            writer.writeheader()
            writer.writerows(reader)
            atomic_write_text(path, buf.getvalue())
            log.info("%s: columns %s rewritten as %s", path, reader.fieldnames, list(columns))
    return open(path, "a", newline="")  # closed by DiceCSVLogger.close()


def _read_dice(path: Path) -> dict[int, dict[int, float]]:
    """``{eval_exp: {training_exp: eval_dice}}`` of the rows of an ``eval_results.csv`` (the last row of a pair
    wins; ``before`` rows are left out)."""
    out: dict[int, dict[int, float]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            j, i, dice = row.get("eval_exp") or "", row.get("training_exp") or "", row.get("eval_dice") or ""
            if j.isdigit() and i.isdigit():
                out.setdefault(int(j), {})[int(i)] = float(dice) if dice else math.nan
    return out


def make_loggers(kinds: Sequence[str], folder: str | Path) -> list[Any]:
    """Avalanche loggers of the given kinds writing under ``folder`` (``log.txt``, ``csv/``, ``tensorboard/``)."""
    from avalanche.logging import InteractiveLogger, TensorboardLogger, TextLogger

    from medattn.errors import ConfigError

    folder = Path(folder)
    unknown = sorted(set(kinds) - set(LOGGERS))
    if unknown:
        raise ConfigError(f"loggers: unknown {unknown}; choose from {', '.join(LOGGERS)}")
    out: list[Any] = []
    for kind in kinds:
        if kind == "interactive":
            out.append(InteractiveLogger())
        elif kind == "text":
            folder.mkdir(parents=True, exist_ok=True)
            out.append(TextLogger(open(folder / "log.txt", "a")))  # noqa: SIM115 - closed by close_loggers
        elif kind == "csv":
            out.append(DiceCSVLogger(folder / "csv"))
        else:
            out.append(TensorboardLogger(folder / "tensorboard"))
    return out


def close_loggers(loggers: Sequence[Any]) -> None:
    """Flush and close the files the loggers hold."""
    for lg in loggers:
        if isinstance(lg, CSVLogger):
            lg.close()
        f = getattr(lg, "file", None)
        if f is not None and hasattr(f, "close") and f not in (sys.stdout, sys.stderr):
            f.close()
        writer = getattr(lg, "writer", None)
        if writer is not None and hasattr(writer, "close"):
            writer.close()
