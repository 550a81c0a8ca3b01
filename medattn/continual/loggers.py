"""Avalanche loggers for a segmentation run: interactive (progress bars) or text, CSV, TensorBoard.

Avalanche's ``InteractiveLogger``, ``TextLogger`` and ``TensorboardLogger`` log any metric by name and are used as
they are. Its ``CSVLogger`` looks for accuracy by name (``Top1_Acc_Exp``) and would write zeros for a segmentation
run; :class:`DiceCSVLogger` reads the Dice metrics instead and appends to existing files, so a resumed run keeps
the rows written before the interruption.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from avalanche.logging import CSVLogger

LOGGERS = ("interactive", "text", "csv", "tensorboard")


class DiceCSVLogger(CSVLogger):
    """``CSVLogger`` for segmentation: ``training_results.csv`` (per epoch: training Dice and loss) and
    ``eval_results.csv`` (per evaluated domain: Dice after each training experience), appended to."""

    def __init__(self, log_folder: str | Path) -> None:
        # CSVLogger.__init__ truncates its files and writes accuracy headers; set its state up here instead.
        self.log_folder = str(log_folder)
        os.makedirs(self.log_folder, exist_ok=True)
        train_path = os.path.join(self.log_folder, "training_results.csv")
        eval_path = os.path.join(self.log_folder, "eval_results.csv")
        train_new, eval_new = not os.path.exists(train_path), not os.path.exists(eval_path)
        self.training_file = open(train_path, "a")  # noqa: SIM115 - closed by close()
        self.eval_file = open(eval_path, "a")  # noqa: SIM115
        self.training_exp_id = None
        self.in_train_phase = None
        self.val_acc, self.val_loss = 0, 0
        if train_new:
            header = "training_exp,epoch,training_dice,val_dice,training_loss,val_loss"
            print(header, file=self.training_file, flush=True)
        if eval_new:
            print("eval_exp,training_exp,eval_dice,eval_loss,forgetting", file=self.eval_file, flush=True)

    def after_training_epoch(self, strategy: Any, metric_values: list[Any], **kwargs: Any) -> None:
        dice, loss = 0.0, 0.0
        for val in metric_values:
            if "train_stream" in val.name:
                if val.name.startswith("Dice_Epoch"):
                    dice = val.value
                elif val.name.startswith("Loss_Epoch"):
                    loss = val.value
        self.print_train_metrics(
            self.training_exp_id, strategy.clock.train_exp_epochs, dice, self.val_acc, loss, self.val_loss
        )

    def after_eval_exp(self, strategy: Any, metric_values: list[Any], **kwargs: Any) -> None:
        dice = 0.0
        for val in metric_values:
            if val.name.startswith("Dice_Exp/"):
                dice = val.value
        if self.in_train_phase:
            self.val_acc = dice
        else:
            trained = "before" if self.training_exp_id is None else self.training_exp_id
            self.print_eval_metrics(strategy.experience.current_experience, trained, dice, 0.0, 0.0)


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
