"""Slice figures cut through the structure and draw a column per layer; curves come from log.csv rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medattn.report.figures import focus_point, orthogonal_slices, training_curves


def test_slices_cut_through_the_labelled_structure() -> None:
    label = np.zeros((20, 22, 24), np.uint8)
    label[4:9, 10:13, 18:21] = 1
    assert focus_point(label, None) == (6, 11, 19)
    assert focus_point(np.zeros_like(label), label) == (6, 11, 19)  # no ground truth: the prediction
    assert focus_point(np.zeros_like(label)) == (10, 11, 12)  # nothing: the volume centre


def test_a_column_per_layer_present(tmp_path: Path) -> None:
    import matplotlib.image as mpimg

    rng = np.random.default_rng(0)
    image = rng.normal(size=(16, 16, 16)).astype(np.float32)
    label = np.zeros((16, 16, 16), np.uint8)
    label[5:10, 5:10, 5:10] = 2
    full = orthogonal_slices(image, label, label, np.full(image.shape, 0.5, np.float32), tmp_path / "a.png")
    bare = orthogonal_slices(image, None, label, None, tmp_path / "b.png")
    wa, wb = mpimg.imread(full).shape[1], mpimg.imread(bare).shape[1]
    assert wa / wb == 2.0  # four columns (image, truth, prediction, attention) against two


def test_training_curves_skip_epochs_without_validation(tmp_path: Path) -> None:
    rows = [
        {"epoch": 1.0, "train_loss": 1.2, "val_dice": None, "val_dice_head": None},
        {"epoch": 2.0, "train_loss": 0.8, "val_dice": 0.5, "val_dice_head": 0.4},
    ]
    path = training_curves(rows, tmp_path / "c.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_the_drawn_gate_is_the_finest_that_selects() -> None:
    """A saturated full-resolution gate (all ~1) is passed over for the next gate that varies; without any
    selective gate the widest spread wins; no gates, no choice."""
    from medattn.report.volumes import selective_gate

    rng = np.random.default_rng(0)
    saturated = 0.97 + 0.03 * rng.random((8, 8, 8))
    focused = np.zeros((8, 8, 8))
    focused[2:6, 2:6, 2:6] = 0.9  # 12.5% of the volume: the 95th percentile is inside, the 5th outside
    flat_low, flat_mid = np.full((8, 8, 8), 0.1), 0.4 + 0.1 * rng.random((8, 8, 8))
    assert selective_gate([saturated, focused, flat_low]) == 1
    assert selective_gate([focused, saturated]) == 0
    assert selective_gate([saturated, flat_low, flat_mid]) == 2
    assert selective_gate([]) is None
