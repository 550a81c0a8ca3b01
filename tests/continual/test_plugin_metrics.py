"""EpochDice pools the training Dice of the full-resolution output over an epoch's patches."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch


def _pooled_dice(logits: list[torch.Tensor], labels: list[torch.Tensor], classes: int) -> float:
    """Independent reference: arg-max with torch, Dice per class pooled over every batch, mean of present classes."""
    inter = torch.zeros(classes - 1, dtype=torch.float64)
    total = torch.zeros(classes - 1, dtype=torch.float64)
    for out, y in zip(logits, labels):
        pred, target = out.argmax(1), y[:, 0].long()
        for c in range(1, classes):
            inter[c - 1] += ((pred == c) & (target == c)).sum()
            total[c - 1] += (pred == c).sum() + (target == c).sum()
    present = total > 0
    return float((2 * inter[present] / total[present]).mean())


def test_epoch_dice_matches_an_argmax_reference_and_reads_the_finest_output() -> None:
    from medattn.continual.plugin_metrics import EpochDice

    g = torch.Generator().manual_seed(0)
    metric = EpochDice(3)
    metric.before_training_epoch(None)
    logits, labels = [], []
    for _ in range(3):
        out = torch.randn(2, 3, 6, 5, 4, generator=g)
        y = torch.randint(0, 3, (2, 1, 6, 5, 4), generator=g).float()
        coarse = torch.randn(2, 3, 3, 3, 2, generator=g)  # a deep-supervision output: must be ignored
        metric.after_training_iteration(SimpleNamespace(mb_output=[out, coarse], mb_y=y))
        logits.append(out)
        labels.append(y)
    assert metric.result() == pytest.approx(_pooled_dice(logits, labels, 3), abs=1e-12)
    metric.before_training_epoch(None)
    assert metric.result() != metric.result()  # NaN: nothing seen since the reset


def test_joint_histogram_counts_equal_the_per_class_counts() -> None:
    """The training Dice's one-histogram counts are :func:`medattn.dice.confusion_counts`'s (float labels too),
    and a reference outside 0..K-1 takes the per-class path."""
    import numpy as np
    import torch

    from medattn.continual.plugin_metrics import class_index_counts
    from medattn.dice import confusion_counts

    g = torch.Generator().manual_seed(3)
    pred = torch.randint(0, 4, (2, 9, 8, 7), generator=g, dtype=torch.uint8)
    ref = torch.randint(0, 4, (2, 9, 8, 7), generator=g).float()
    want = np.stack(confusion_counts(pred, ref, range(1, 4)))
    np.testing.assert_array_equal(class_index_counts(pred, ref, 4), want)
    assert want.sum() > 0
    ref[0, 0, 0, 0] = 7  # not a class index of a 4-class model
    np.testing.assert_array_equal(class_index_counts(pred, ref, 4), np.stack(confusion_counts(pred, ref, range(1, 4))))
