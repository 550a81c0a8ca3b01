"""Dice + cross-entropy with deep supervision (nnU-Net's training loss).

A deep-supervised network returns logits at several scales, finest first (see
:class:`~medattn.models.unet.AttentionGatedUNet`). Output ``j`` is compared with the label downsampled to its grid
and weighted ``2**-j``, the weights normalised to sum to one. The label is downsampled by nearest-neighbour
sampling at the voxel each coarse output voxel is centred on: a coarse voxel ``i`` at scale ``s`` sees input voxel
``i * s`` at the centre of its receptive field (3x3x3 convolutions with padding 1 and stride 2 keep centres on the
even voxels), and the network pads its input at the high end, so the coarse grid has ``ceil(size / s)`` voxels.

Example::

    loss_fn = DeepSupervisionLoss()
    loss = loss_fn(net(x), y)   # net(x): tensor or list of (B, K, ...) logits; y: (B, 1, X, Y, Z) class indices

Voxels labelled :data:`IGNORE` (255) take no part in either term: self-training marks the voxels whose
pseudo-label is not confident enough that way (:mod:`medattn.continual.methods.selftrain`). MONAI's ``DiceCELoss``
has no ignore index (its ``DiceLoss`` has), so a target holding ignored voxels goes through MONAI's ``DiceLoss``
with ``ignore_index`` and PyTorch's cross-entropy with ``ignore_index``; a target without any takes the
``DiceCELoss`` path unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.losses import DiceCELoss, DiceLoss
from torch import nn

#: The label value of voxels that no loss term sees (unconfident pseudo-labels).
IGNORE = 255


def deep_supervision_weights(n: int) -> list[float]:
    """Weights of ``n`` outputs, finest first: ``2**-j`` normalised to sum to 1 (``[1.0]`` for one output)."""
    if n < 1:
        raise ValueError(f"need at least one output, got {n}")
    raw = [0.5**j for j in range(n)]
    total = sum(raw)
    return [w / total for w in raw]


def downsample_label(label: torch.Tensor, size: Sequence[int], scale: Sequence[int] | None = None) -> torch.Tensor:
    """Nearest-neighbour downsampling of a label map to ``size`` by an integer factor per axis.

    Args:
        label: (B, 1, X, Y, Z) class indices (any dtype).
        size: target spatial size: ``ceil(X / s)`` per axis for an integer factor ``s``.
        scale: the factor per axis when known (e.g. ``model.output_scales[j]``); None: inferred from the sizes,
            preferring powers of two (``ceil(5 / 3) == ceil(5 / 4)``, and U-Net strides are powers of two).

    Returns:
        (B, 1, *size): ``label[..., ::s0, ::s1, ::s2]`` (a view), the voxel at the centre of each coarse voxel's
        receptive field (see the module docstring).
    """
    full = tuple(int(n) for n in label.shape[2:])
    target = tuple(int(n) for n in size)
    if len(full) != len(target):
        raise ValueError(f"label has {len(full)} spatial axes, target size {target} has {len(target)}")
    if full == target and scale is None:
        return label
    steps = [int(s) for s in scale] if scale is not None else [_factor(n, m) for n, m in zip(full, target)]
    if len(steps) != len(full) or any(s < 1 or -(-n // s) != m for n, m, s in zip(full, target, steps)):
        raise ValueError(f"cannot downsample a label of size {full} to {target} by the integer factors {steps}")
    index = (slice(None), slice(None), *(slice(None, None, s) for s in steps))
    return label[index]


def _factor(n: int, m: int) -> int:
    """An integer ``s`` with ``ceil(n / s) == m``, a power of two when one fits; 0 when none does."""
    if m < 1:
        return 0
    fits = [s for s in range(1, n + 1) if -(-n // s) == m]
    powers = [s for s in fits if s & (s - 1) == 0]
    return (powers or fits or [0])[0]


class DeepSupervisionLoss(nn.Module):
    """MONAI ``DiceCELoss`` (softmax, one-hot targets) summed over deep-supervision outputs with halving weights.

    Args:
        weights: per output, finest first; None: :func:`deep_supervision_weights` of the number of outputs seen.
        scales: per output, finest first, its (X, Y, Z) downsampling factor (``model.output_scales``); None:
            inferred from the output sizes (see :func:`downsample_label`).
        include_background: include class 0 in the Dice term (nnU-Net leaves it out; cross-entropy always has it).
        batch_dice: compute Dice over the whole batch as one volume (nnU-Net's batch Dice) instead of per sample.
        lambda_dice, lambda_ce: weights of the two terms.
        smooth: added to the Dice numerator and denominator.

    ``forward(outputs, target)``: ``outputs`` is a (B, K, X, Y, Z) logit tensor or a list of them, finest first;
    ``target`` is (B, 1, X, Y, Z) class indices at the finest scale (float or integer). Returns a scalar.
    """

    def __init__(
        self,
        weights: Sequence[float] | None = None,
        scales: Sequence[Sequence[int]] | None = None,
        include_background: bool = False,
        batch_dice: bool = True,
        lambda_dice: float = 1.0,
        lambda_ce: float = 1.0,
        smooth: float = 1e-5,
    ) -> None:
        super().__init__()
        self.weights = None if weights is None else [float(w) for w in weights]
        self.scales = None if scales is None else [tuple(int(v) for v in s) for s in scales]
        dice = dict(
            include_background=include_background,
            to_onehot_y=True,
            softmax=True,
            batch=batch_dice,
            smooth_nr=smooth,
            smooth_dr=smooth,
        )
        self.dice_ce = DiceCELoss(**dice, lambda_dice=lambda_dice, lambda_ce=lambda_ce)  # type: ignore[arg-type]
        self.masked_dice = DiceLoss(**dice, ignore_index=IGNORE)  # type: ignore[arg-type]
        self.lambda_dice, self.lambda_ce = float(lambda_dice), float(lambda_ce)

    def _term(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Dice + CE of one output (float32 logits) against its label (float class indices)."""
        ignored = y == IGNORE
        if not bool(ignored.any()):
            return self.dice_ce(out, y)
        if bool(ignored.all()):
            return out.sum() * 0.0  # nothing to learn from, but keep the graph (and the step) well-formed
        ce = nn.functional.cross_entropy(out, y[:, 0].long(), ignore_index=IGNORE)
        return self.lambda_dice * self.masked_dice(out, y) + self.lambda_ce * ce

    def forward(self, outputs: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        outs = [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)
        weights = self.weights if self.weights is not None else deep_supervision_weights(len(outs))
        if len(weights) != len(outs):
            raise ValueError(f"{len(weights)} deep-supervision weights for {len(outs)} outputs")
        if target.ndim != outs[0].ndim or target.shape[1] != 1:
            raise ValueError(f"target must be (B, 1, X, Y, Z) class indices, got shape {tuple(target.shape)}")
        total = outs[0].new_zeros((), dtype=torch.float32)
        if self.scales is not None and len(self.scales) < len(outs):
            raise ValueError(f"{len(self.scales)} deep-supervision scales for {len(outs)} outputs")
        for j, (w, out) in enumerate(zip(weights, outs)):
            if w == 0:
                continue
            y = downsample_label(target, out.shape[2:], None if self.scales is None else self.scales[j])
            # The loss runs in float32 even under autocast: softmax and log of fp16 logits lose too much.
            total = total + w * self._term(out.float(), y.float())
        return total
