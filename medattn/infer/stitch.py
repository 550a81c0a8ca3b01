"""Stitching window outputs in slabs: a ring buffer one window deep, finished planes arg-maxed as they complete.

See :mod:`medattn.infer.sliding` for why; :class:`SlabStitcher` is the mechanism and
:func:`stitch_memory_bytes` its cost.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch

from medattn.infer.windows import Window, choose_slab_axis

#: Planes finished per step are capped so the float temporaries of the arg-max stay below this many voxels.
FINALISE_CHUNK_VOXELS = 1 << 21


def argmax_classes(scores: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Arg-max over the class axis of ``scores`` (K, ...) written into ``out`` (...), an integer tensor or view.

    Equivalent to ``scores.argmax(0)`` (ties go to the lowest class; a NaN score never wins, where ``argmax`` would
    pick it) without its int64 temporary, and several times faster for a handful of classes: one comparison pass
    per class instead of a strided reduction. The first
    two classes are compared straight into ``out`` and the running maximum starts as their maximum (no copy of
    class 0, no zero fill, no maximum after the last class): 2.0 against 3.7 ms for 3 x 2 x 64^3 scores on two
    threads, the training Dice's arg-max every step of ``medattn adapt`` (one-off timing, 2-core AMD EPYC).
    """
    k = scores.shape[0]
    if k == 1:
        return out.zero_()
    out.copy_(scores[1] > scores[0])
    if k == 2:
        return out
    best = torch.maximum(scores[0], scores[1])
    for c in range(2, k):
        out.masked_fill_(scores[c] > best, c)
        if c < k - 1:
            torch.maximum(best, scores[c], out=best)
    return out


def member_mean_probabilities(logits: torch.Tensor, members: int) -> torch.Tensor:
    """The mean over ``members`` of the soft-maxed logits (M x K, ...) -> (K, ...): an ensemble's probabilities."""
    k = logits.shape[0] // members
    probs = torch.softmax(logits[:k], dim=0)
    for m in range(1, members):
        probs += torch.softmax(logits[m * k : (m + 1) * k], dim=0)
    return probs.div_(members)


class SlabStitcher:
    """Ring buffers one window deep along the slab axis; finished planes go to the full-volume outputs.

    Plane ``p`` of the image lives at ring position ``p % depth``. Every window of a row starting at ``s`` covers
    planes in ``[s, s + depth)``, and rows come in increasing ``s``, so once the planes below ``s`` are finished
    the open planes always fit in the ring.

    The ring holds every channel it is given. Labels (and probabilities) are computed from its first
    ``num_classes`` channels (default: all); with ``with_blended`` each finished plane's weighted mean of all
    channels is also kept, in the full-volume ``blended`` buffer (``acc_dtype``).

    With ``members`` M > 1 (an ensemble), the ring holds M x K channels, the logits of each member in turn; a
    finished plane is each member's blended logits soft-maxed, then the M probabilities averaged (nnU-Net v1's rule:
    the mean of the members' probability maps), and the labels are that mean's arg-max. Memory grows by M slabs,
    never by a full volume per member.
    """

    def __init__(
        self,
        size: tuple[int, ...],
        window: tuple[int, ...],
        axis: int,
        device: torch.device,
        acc_dtype: torch.dtype,
        with_probs: bool,
        prob_dtype: torch.dtype,
        *,
        with_blended: bool = False,
        num_classes: int | None = None,
        members: int = 1,
    ) -> None:
        if members > 1 and (num_classes is None or with_blended):
            raise ValueError("an ensemble (members > 1) needs num_classes and no blended outputs")
        self.size, self.axis, self.device = size, axis, device
        self.depth = min(window[axis], size[axis])
        self.acc_dtype, self.with_probs, self.prob_dtype = acc_dtype, with_probs, prob_dtype
        self.with_blended, self.num_classes, self.members = with_blended, num_classes, members
        self.ring: torch.Tensor | None = None  # (C, *size with depth on the slab axis), allocated at first window
        self.wring: torch.Tensor | None = None  # (1, ...) weight sums, only with probabilities or blended outputs
        self.labels: torch.Tensor | None = None
        self.probabilities: torch.Tensor | None = None
        self.blended: torch.Tensor | None = None  # (C, *size), only with blended outputs
        self.done = 0  # planes [0, done) are finished

    def _allocate(self, c: int) -> None:
        k = c if self.num_classes is None else self.num_classes
        ring_shape = list(self.size)
        ring_shape[self.axis] = self.depth
        self.ring = torch.zeros((c, *ring_shape), dtype=self.acc_dtype, device=self.device)
        label_dtype = torch.uint8 if k <= 256 else torch.int32
        self.labels = torch.zeros(self.size, dtype=label_dtype, device=self.device)
        if self.with_probs or self.with_blended or self.members > 1:
            self.wring = torch.zeros((1, *ring_shape), dtype=self.acc_dtype, device=self.device)
        if self.with_probs:
            self.probabilities = torch.empty((k, *self.size), dtype=self.prob_dtype, device=self.device)
        if self.with_blended:
            self.blended = torch.empty((c, *self.size), dtype=self.acc_dtype, device=self.device)

    def _segments(self, start: int, stop: int) -> Iterator[tuple[slice, int, int]]:
        """For image planes [start, stop) (at most ``depth`` of them): (ring slice, offset from start, count)."""
        p = start
        while p < stop:
            r = p % self.depth
            n = min(stop - p, self.depth - r)
            yield slice(r, r + n), p - start, n
            p += n

    def _at(self, region: Sequence[slice], slab: slice) -> tuple[slice, ...]:
        idx = list(region)
        idx[self.axis] = slab
        return (slice(None), *idx)

    def add(self, batch: list[Window], logits: torch.Tensor, weights: torch.Tensor) -> None:
        """Add weighted outputs (B, C, *window) of ``batch`` (already multiplied by the weights)."""
        if self.ring is None:
            self._allocate(int(logits.shape[1]))
        assert self.ring is not None
        ax = self.axis
        for w, out in zip(batch, logits):
            part = out[(slice(None), *w.crop)].to(self.device, non_blocking=False)
            wpart = weights[0][(slice(None), *w.crop)].to(self.device) if self.wring is not None else None
            for ring_sl, off, n in self._segments(w.src[ax].start, w.src[ax].stop):
                idx = self._at(w.src, ring_sl)
                self.ring[idx] += part.narrow(ax + 1, off, n)
                if self.wring is not None and wpart is not None:
                    self.wring[idx] += wpart.narrow(ax + 1, off, n)

    def finish_before(self, stop: int) -> None:
        """Finish image planes [done, stop): arg-max (and soft-max, and normalise) them into the outputs, clear
        their ring slots."""
        stop = min(stop, self.size[self.axis])
        if self.ring is None or stop <= self.done:
            return
        assert self.labels is not None
        ax = self.axis
        plane = math.prod(s for i, s in enumerate(self.size) if i != ax)
        chunk = max(1, FINALISE_CHUNK_VOXELS // plane)
        full = [slice(None)] * 3
        for ring_sl, off, n in self._segments(self.done, stop):
            for c in range(0, n, chunk):
                m = min(chunk, n - c)
                rs = slice(ring_sl.start + c, ring_sl.start + c + m)
                g0 = self.done + off + c
                out_idx = list(full)
                out_idx[ax] = slice(g0, g0 + m)
                ring_idx = self._at(full, rs)
                summed = self.ring[ring_idx]
                if self.wring is None:  # labels only
                    argmax_classes(summed, self.labels[tuple(out_idx)])
                elif self.members > 1:
                    probs = member_mean_probabilities(summed / self.wring[ring_idx], self.members)
                    if self.probabilities is not None:
                        self.probabilities[(slice(None), *out_idx)] = probs.to(self.prob_dtype)
                    argmax_classes(probs, self.labels[tuple(out_idx)])
                    self.wring[ring_idx] = 0
                else:
                    mean = summed / self.wring[ring_idx]
                    if self.blended is not None:
                        self.blended[(slice(None), *out_idx)] = mean
                        mean = mean[: self.num_classes]  # the class channels (all when num_classes is None)
                    if self.with_probs:
                        assert self.probabilities is not None
                        probs = torch.softmax(mean, dim=0)
                        self.probabilities[(slice(None), *out_idx)] = probs.to(self.prob_dtype)
                        argmax_classes(probs, self.labels[tuple(out_idx)])
                    else:
                        argmax_classes(mean, self.labels[tuple(out_idx)])
                    self.wring[ring_idx] = 0
                summed.zero_()
        self.done = stop

    def labels_out(self) -> torch.Tensor:
        if self.labels is None:  # no window at all cannot happen for a non-empty image
            raise RuntimeError("no window was evaluated")
        return self.labels


def stitch_memory_bytes(
    image_size: Sequence[int],
    window: Sequence[int],
    num_classes: int,
    slab_axis: int | None = None,
    return_probabilities: bool = False,
    accumulator_dtype: torch.dtype = torch.float32,
    probability_dtype: torch.dtype = torch.float32,
    return_blended: bool = False,
    output_channels: int | None = None,
    members: int = 1,
) -> int:
    """Bytes :func:`sliding_window_predict` allocates on the stitch device (labels, ring buffers, probabilities,
    blended outputs); ``output_channels`` is the network's channel count C (default ``num_classes``), which only
    matters with ``return_blended``: then the ring and the blended volume hold all C channels."""
    size = tuple(int(s) for s in image_size)
    win = tuple(int(w) for w in window)
    axis = choose_slab_axis(size, win) if slab_axis is None else slab_axis
    voxels = math.prod(size)
    slab = voxels // size[axis] * min(win[axis], size[axis])
    acc = torch.empty((), dtype=accumulator_dtype).element_size()
    ring_channels = (output_channels or num_classes) if return_blended else num_classes * members
    total = voxels * (1 if num_classes <= 256 else 4) + slab * ring_channels * acc
    if return_probabilities or return_blended or members > 1:
        total += slab * acc  # the weight-sum ring
    if return_probabilities:
        total += voxels * num_classes * torch.empty((), dtype=probability_dtype).element_size()
    if return_blended:
        total += voxels * ring_channels * acc
    return total
