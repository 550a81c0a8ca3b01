"""Per-epoch training logs: ``RUN/log.csv`` (rewritten atomically every epoch) and TensorBoard event files.

The rows live in the resume checkpoint too, so a resumed run rewrites ``log.csv`` with exactly the epochs that the
checkpoint covers, and TensorBoard drops events past the resumed epoch (``purge_step``).
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medattn.data.io import atomic_write_text

log = logging.getLogger(__name__)

Row = Mapping[str, Any]


def log_columns(class_names: Sequence[str]) -> list[str]:
    """The CSV header: epoch, learning rate, mean training loss, validation Dice (mean, per class), timings."""
    return ["epoch", "lr", "train_loss", "val_dice", *(f"val_dice_{n}" for n in class_names), "seconds", "val_seconds"]


def format_csv(rows: Sequence[Row], columns: Sequence[str]) -> str:
    """Rows as CSV text; missing or NaN values are empty cells, floats keep 6 significant digits."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([_cell(r.get(c)) for c in columns])
    return buf.getvalue()


def _cell(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def read_csv(path: str | Path) -> list[dict[str, float | None]]:
    """A ``log.csv`` back as dicts of floats (None for empty cells)."""
    with open(path, newline="") as f:
        return [{k: (float(v) if v != "" else None) for k, v in row.items()} for row in csv.DictReader(f)]


class RunLogger:
    """Writes ``log.csv`` and, optionally, TensorBoard scalars; a no-op object on ranks other than 0.

    Args:
        out: the run folder.
        columns: CSV header (:func:`log_columns`).
        enabled: False on non-zero ranks.
        tensorboard: also write ``out/tensorboard``.
        start_epoch: epochs already done (a resumed run); TensorBoard events after it are purged.
    """

    def __init__(
        self, out: Path, columns: Sequence[str], enabled: bool = True, tensorboard: bool = True, start_epoch: int = 0
    ) -> None:
        self.path = out / "log.csv"
        self.columns = list(columns)
        self.enabled = enabled
        self.writer: Any = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:  # tensorboard is a dependency, but keep training without it
                log.warning("TensorBoard logging disabled: %s", e)
            else:
                self.writer = SummaryWriter(
                    str(out / "tensorboard"), purge_step=start_epoch + 1 if start_epoch else None
                )

    def write(self, rows: Sequence[Row]) -> None:
        """Rewrite ``log.csv`` with ``rows`` and send the last row to TensorBoard."""
        if not self.enabled:
            return
        atomic_write_text(self.path, format_csv(rows, self.columns))
        if self.writer is not None and rows:
            last = rows[-1]
            step = int(last["epoch"])
            for key, value in last.items():
                if key == "epoch" or value is None or (isinstance(value, float) and math.isnan(value)):
                    continue
                tag = f"val/{key[4:]}" if key.startswith("val_") else f"train/{key}"
                self.writer.add_scalar(tag, float(value), step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
