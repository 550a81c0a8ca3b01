"""Figures of a run as PNG files: training curves and orthogonal slices with labels and attention overlaid.

Every figure is drawn on its own matplotlib ``Figure`` with the Agg canvas, so nothing here touches pyplot's global
backend or needs a display, and written atomically. Colours: ground truth and prediction use one fixed colour per
class (so the same class looks the same in every panel), attention the ``magma`` map from 0 (transparent) to 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medattn.data.io import atomic_write_with
from medattn.typing import Triple

#: Label colours (RGB) for classes 1, 2, ...; class 0 is transparent.
CLASS_COLOURS = ((0.95, 0.35, 0.2), (0.2, 0.6, 1.0), (0.3, 0.85, 0.3), (0.95, 0.85, 0.2), (0.8, 0.4, 0.9))
#: (name, axis cut, the two in-plane axes) of each orthogonal view, for volumes indexed (X, Y, Z) in RAS.
VIEWS = (("sagittal", 0, (1, 2)), ("coronal", 1, (0, 2)), ("axial", 2, (0, 1)))


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | Path) -> Path:
    return atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png"))


def training_curves(rows: Sequence[Mapping[str, Any]], path: str | Path, title: str = "training") -> Path:
    """Training loss and validation Dice (mean and per class) per epoch, from ``log.csv`` rows.

    Args:
        rows: the dicts of :func:`medattn.train.logs.read_csv` (``epoch``, ``train_loss``, ``val_dice``,
            ``val_dice_<class>``; empty cells are None).
        path: PNG to write.
    """
    fig = _figure(7.5, 3.6)
    ax = fig.add_subplot(1, 2, 1)
    epochs = [r["epoch"] for r in rows]
    ax.plot(epochs, [r["train_loss"] for r in rows], marker="o", ms=3, color="tab:blue")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (Dice + CE)")
    ax.set_title(f"{title}: loss")
    ax.grid(alpha=0.3)
    ax2 = fig.add_subplot(1, 2, 2)
    keys = [k for k in (rows[0] if rows else {}) if k.startswith("val_dice")]
    for i, k in enumerate(keys):  # "val_dice" (the mean) first, then one per class in label order
        pts = [(r["epoch"], r[k]) for r in rows if r.get(k) is not None]
        if pts:
            x, y = zip(*pts)
            if i == 0:
                ax2.plot(x, y, marker="o", ms=3, lw=2.2, color="black", label="mean")
            else:  # the class's colour in the slice figures
                colour = CLASS_COLOURS[(i - 1) % len(CLASS_COLOURS)]
                ax2.plot(x, y, marker="o", ms=3, lw=1.2, color=colour, label=k.removeprefix("val_dice_"))
    ax2.set_ylim(0, 1)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation Dice")
    ax2.set_title(f"{title}: validation Dice")
    ax2.grid(alpha=0.3)
    if keys:
        ax2.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return _save(fig, path)


def focus_point(*masks: np.ndarray | None) -> Triple:
    """The voxel the slices cut through: the centre of mass of the first non-empty mask, else the volume centre."""
    for m in masks:
        if m is not None and np.any(m):
            x, y, z = (round(float(c)) for c in np.argwhere(m).mean(axis=0))
            return x, y, z
    shape = next(m.shape for m in masks if m is not None)
    return shape[0] // 2, shape[1] // 2, shape[2] // 2


def _label_rgba(label: np.ndarray, alpha: float) -> np.ndarray:
    rgba = np.zeros((*label.shape, 4), np.float32)
    for k in range(1, int(label.max()) + 1):
        rgba[label == k] = (*CLASS_COLOURS[(k - 1) % len(CLASS_COLOURS)], alpha)
    return rgba


def _plane(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """The 2D cut of ``volume`` at ``index`` along ``axis``, transposed so the second in-plane axis points up."""
    return np.take(volume, index, axis=axis).T


def orthogonal_slices(
    image: np.ndarray,
    label: np.ndarray | None,
    prediction: np.ndarray,
    attention: np.ndarray | None,
    path: str | Path,
    *,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    class_names: Sequence[str] = (),
    title: str = "",
    attention_title: str = "attention",
) -> Path:
    """Sagittal, coronal and axial cuts: image, ground truth, prediction and attention, each over the image.

    Args:
        image: float (X, Y, Z), indexed in RAS order (as the preprocessing leaves it).
        label: integer class indices (X, Y, Z) on the same grid, or None (no ground-truth column).
        prediction: integer class indices (X, Y, Z).
        attention: attention coefficients in [0, 1] (X, Y, Z), or None (no attention column).
        path: PNG to write.
        spacing: voxel size (mm) along x, y, z; sets each panel's aspect ratio.
        class_names: foreground class names for the legend, class 1 first.
        title: figure title.
        attention_title: heading of the attention column (which gate it shows).

    The cuts go through the centre of the ground truth (or, without one, of the prediction).
    """
    from matplotlib.patches import Patch

    centre = focus_point(label, prediction)
    lo, hi = np.percentile(image, (1, 99))
    columns: list[tuple[str, np.ndarray | None, str]] = [("image", None, "")]
    if label is not None:
        columns.append(("ground truth", label, "label"))
    columns.append(("prediction", prediction, "label"))
    if attention is not None:
        columns.append((attention_title, attention, "attention"))
    fig = _figure(2.3 * len(columns), 2.3 * len(VIEWS) + 0.6)
    for r, (view, axis, (a, b)) in enumerate(VIEWS):
        base = _plane(image, axis, centre[axis])
        aspect = float(spacing[b]) / float(spacing[a])
        for c, (name, overlay, kind) in enumerate(columns):
            ax = fig.add_subplot(len(VIEWS), len(columns), r * len(columns) + c + 1)
            ax.imshow(base, cmap="gray", vmin=lo, vmax=hi, origin="lower", aspect=aspect, interpolation="nearest")
            if overlay is not None and kind == "label":
                ax.imshow(_label_rgba(_plane(overlay, axis, centre[axis]), 0.55), origin="lower", aspect=aspect)
            elif overlay is not None:
                att = _plane(overlay, axis, centre[axis])
                ax.imshow(
                    np.ma.masked_less(att, 0.05),
                    cmap="magma",
                    vmin=0,
                    vmax=1,
                    alpha=0.65,
                    origin="lower",
                    aspect=aspect,
                )
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=9)
            if c == 0:
                ax.set_ylabel(f"{view} {centre[axis]}", fontsize=9)
    handles = [Patch(color=CLASS_COLOURS[i % len(CLASS_COLOURS)], label=name) for i, name in enumerate(class_names)]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.04 if handles else 0, 1, 0.97 if title else 1))
    return _save(fig, path)
