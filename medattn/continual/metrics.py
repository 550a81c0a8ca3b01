"""The Dice matrix of a continual run and the transfer metrics computed from it.

``R[i, j]`` is the mean Dice on domain ``j``'s test split after training on experience ``i`` (rows in training
order; ``b[j]``, the row "before", is the starting model). With ``T`` domains, following Lopez-Paz & Ranzato
(2017, GEM) and Chaudhry et al. (2018, RWalk):

* **average Dice** ``ACC = 1/T sum_j R[T-1, j]``: quality on every domain at the end.
* **backward transfer** ``BWT = 1/(T-1) sum_{j<T-1} (R[T-1, j] - R[j, j])``: what later domains did to earlier ones
  (negative: forgetting).
* **forgetting** ``F = 1/(T-1) sum_{j<T-1} (max_{l<T-1} R[l, j] - R[T-1, j])``: the drop from the best Dice a domain
  ever had to the final one.
* **forward transfer** ``FWT = 1/(T-1) sum_{j>0} (R[j-1, j] - b[j])``: how the model just before training on ``j``
  compares with the baseline ``b`` on ``j``. Lopez-Paz and Ranzato take ``b`` from a randomly initialised model; an
  adaptation run starts from a trained model, so ``b`` is that model (the "before" row), and FWT says whether
  adapting to earlier domains helped or hurt a domain not yet seen.
* **plasticity against naive fine-tuning** ``P = 1/T sum_j (R[j, j] - R_naive[j, j])``: how much less (negative) a
  method learns each new domain than unconstrained fine-tuning.

Every metric is computed on the class-averaged matrix ("overall") and per foreground class. NaN entries (a class
absent from a domain's labels and predictions) are skipped. A joint-training run has only its final row: ACC is
defined, the rest is null.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medattn.data.io import atomic_write_text, atomic_write_with

METRICS = ("average_dice", "bwt", "forgetting", "fwt", "plasticity")


def _nanmean(values: Any) -> float:
    arr = np.asarray(values, dtype=float)
    return float(np.nanmean(arr)) if arr.size and not np.all(np.isnan(arr)) else math.nan


def _square(r: np.ndarray) -> np.ndarray:
    r = np.asarray(r, dtype=float)
    if r.ndim != 2 or r.shape[0] != r.shape[1]:
        raise ValueError(f"expected a square T x T Dice matrix (one row per training experience), got {r.shape}")
    return r


def average_dice(r: np.ndarray) -> float:
    """Mean of the last row (the final model on every domain); works for a single joint row too."""
    r = np.asarray(r, dtype=float)
    return _nanmean(r[-1])


def backward_transfer(r: np.ndarray) -> float:
    """``1/(T-1) sum_{j<T-1} (R[T-1, j] - R[j, j])``; NaN for one domain."""
    r = _square(r)
    t = r.shape[0]
    return _nanmean([r[t - 1, j] - r[j, j] for j in range(t - 1)]) if t > 1 else math.nan


def forgetting(r: np.ndarray) -> float:
    """``1/(T-1) sum_{j<T-1} (max_{l<T-1} R[l, j] - R[T-1, j])`` (Chaudhry et al.); NaN for one domain."""
    r = _square(r)
    t = r.shape[0]
    if t < 2:
        return math.nan
    vals = []
    for j in range(t - 1):
        col = r[: t - 1, j]
        vals.append(math.nan if np.all(np.isnan(col)) else float(np.nanmax(col)) - r[t - 1, j])
    return _nanmean(vals)


def forward_transfer(r: np.ndarray, baseline: Sequence[float] | np.ndarray | None) -> float:
    """``1/(T-1) sum_{j>0} (R[j-1, j] - b[j])``; NaN without a baseline or for one domain."""
    r = _square(r)
    t = r.shape[0]
    if baseline is None or t < 2:
        return math.nan
    b = np.asarray(baseline, dtype=float)
    return _nanmean([r[j - 1, j] - b[j] for j in range(1, t)])


def plasticity(r: np.ndarray, naive: np.ndarray | None) -> float:
    """``1/T sum_j (R[j, j] - R_naive[j, j])``; NaN without the naive run's matrix."""
    r = _square(r)
    if naive is None:
        return math.nan
    return _nanmean(np.diag(r) - np.diag(_square(naive)))


@dataclass
class DiceMatrix:
    """The Dice of every evaluation of a run.

    Attributes:
        method: the method's name.
        domains: the domains in stream order (columns).
        classes: foreground class names.
        rows: row labels: the domain trained on last for each row, or ``["joint"]``.
        values: (rows, T, C) per-class Dice, NaN where undefined.
        before: (T, C) per-class Dice of the starting model, or None when it was not evaluated.
    """

    method: str
    domains: list[str]
    classes: list[str]
    rows: list[str]
    values: np.ndarray
    before: np.ndarray | None = None

    @property
    def joint(self) -> bool:
        return self.rows == ["joint"]

    def matrix(self, cls: str | None = None) -> np.ndarray:
        """(rows, T): one class's matrix, or the class average (NaN classes skipped) when ``cls`` is None."""
        if cls is not None:
            return np.asarray(self.values[:, :, self.classes.index(cls)], dtype=float)
        with np.errstate(all="ignore"):
            return _class_mean(self.values)

    def baseline(self, cls: str | None = None) -> np.ndarray | None:
        if self.before is None:
            return None
        if cls is not None:
            return np.asarray(self.before[:, self.classes.index(cls)], dtype=float)
        return _class_mean(self.before[None])[0]

    def _baseline(self, cls: str | None) -> np.ndarray:
        b = self.baseline(cls)
        if b is None:
            raise ValueError("this run has no 'before' row")
        return b

    def summary(self, naive: DiceMatrix | None = None) -> dict[str, dict[str, float | None]]:
        """Every metric of :data:`METRICS`, overall and per class: ``{"overall": {...}, "<class>": {...}}``."""
        out: dict[str, dict[str, float | None]] = {}
        for key in [None, *self.classes]:
            r = self.matrix(key)
            if self.joint:
                vals = {"average_dice": average_dice(r)}
            else:
                nv = None if naive is None or naive.joint or naive.domains != self.domains else naive.matrix(key)
                vals = {
                    "average_dice": average_dice(r),
                    "bwt": backward_transfer(r),
                    "forgetting": forgetting(r),
                    "fwt": forward_transfer(r, self.baseline(key)),
                    "plasticity": plasticity(r, nv),
                }
            out["overall" if key is None else key] = {m: _num(vals.get(m, math.nan)) for m in METRICS}
        return out

    # ---- output ----------------------------------------------------------------------------------------------

    def to_dict(self, naive: DiceMatrix | None = None) -> dict[str, Any]:
        keys: list[str | None] = [None, *self.classes]

        def grid(a: np.ndarray | None) -> Any:
            return None if a is None else [[_num(v) for v in row] for row in np.asarray(a, dtype=float)]

        return {
            "method": self.method,
            "domains": list(self.domains),
            "classes": list(self.classes),
            "rows": list(self.rows),
            "matrix": {"overall": grid(self.matrix()), **{c: grid(self.matrix(c)) for c in self.classes}},
            "before": None
            if self.before is None
            else {("overall" if k is None else k): [_num(v) for v in self._baseline(k)] for k in keys},
            "summary": self.summary(naive),
            "definitions": {
                "R[i][j]": "mean Dice on domain j's test split after training on row i",
                "average_dice": "mean of the last row",
                "bwt": "mean over j<T-1 of R[T-1][j] - R[j][j]",
                "forgetting": "mean over j<T-1 of max_{l<T-1} R[l][j] - R[T-1][j]",
                "fwt": "mean over j>0 of R[j-1][j] - before[j]",
                "plasticity": "mean over j of R[j][j] - R_naive[j][j]",
            },
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> DiceMatrix:
        classes = list(doc["classes"])
        per = [np.asarray(doc["matrix"][c], dtype=float) for c in classes]
        values = np.stack(per, axis=-1)
        before = None
        if doc.get("before") is not None:
            before = np.stack([np.asarray(doc["before"][c], dtype=float) for c in classes], axis=-1)
        return cls(doc["method"], list(doc["domains"]), classes, list(doc["rows"]), values, before)

    def write(self, folder: str | Path, naive: DiceMatrix | None = None) -> dict[str, Path]:
        """``metrics.json``, ``matrix.csv`` (long: row, domain, class, Dice), ``summary.csv`` and ``matrix.png``."""
        folder = Path(folder)
        doc = self.to_dict(naive)
        paths = {"json": atomic_write_text(folder / "metrics.json", json.dumps(doc, indent=2) + "\n")}
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["after", "evaluated_on", "class", "dice"])
        labelled = ([("before", self.before)] if self.before is not None else []) + list(zip(self.rows, self.values))
        for row_name, row in labelled:
            for j, dom in enumerate(self.domains):
                w.writerow([row_name, dom, "mean", _fmt(_class_mean(np.asarray(row)[None])[0][j])])
                for c, name in enumerate(self.classes):
                    w.writerow([row_name, dom, name, _fmt(row[j][c])])
        paths["matrix_csv"] = atomic_write_text(folder / "matrix.csv", buf.getvalue())
        buf = io.StringIO()
        w = csv.writer(buf)
        keys = list(doc["summary"])
        w.writerow(["metric", *keys])
        for m in METRICS:
            w.writerow([m, *(_fmt(doc["summary"][k][m]) for k in keys)])
        paths["summary_csv"] = atomic_write_text(folder / "summary.csv", buf.getvalue())
        paths["png"] = heatmap(self, folder / "matrix.png")
        return paths


def _class_mean(values: np.ndarray) -> np.ndarray:
    """Mean over the last (class) axis, skipping NaN; NaN where every class is NaN."""
    arr = np.asarray(values, dtype=float)
    count = np.sum(~np.isnan(arr), axis=-1)
    total = np.nansum(arr, axis=-1)
    with np.errstate(all="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _num(v: Any) -> float | None:
    v = float(v)
    return None if math.isnan(v) else round(v, 6)


def _fmt(v: Any) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{float(v):.4f}"


def heatmap(matrix: DiceMatrix, path: str | Path) -> Path:
    """PNG heatmap (matplotlib's Agg canvas) of the class-averaged matrix, the "before" row on top when present."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = (["before"] if matrix.before is not None else []) + [f"after {r}" for r in matrix.rows]
    data = matrix.matrix()
    if matrix.before is not None:
        data = np.vstack([matrix.baseline()[None], data])  # type: ignore[index]
    fig = Figure(figsize=(1.2 + 1.1 * len(matrix.domains), 1.0 + 0.6 * len(rows)), dpi=100)
    FigureCanvasAgg(fig)  # the Agg canvas, without touching pyplot's global backend
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(data), vmin=0.0, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(len(matrix.domains)), [f"on {d}" for d in matrix.domains])
    ax.set_yticks(range(len(rows)), rows)
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            if not math.isnan(data[i, j]):
                ax.text(
                    j,
                    i,
                    f"{data[i, j]:.3f}",
                    ha="center",
                    va="center",
                    color="black" if data[i, j] > 0.6 else "white",
                    fontsize=9,
                )
    ax.set_title(f"{matrix.method}: mean Dice")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png"))
