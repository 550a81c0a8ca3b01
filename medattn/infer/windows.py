"""Where the windows of a sliding-window pass go (MONAI's grid) and in which order they are visited.

The grid is MONAI's: ``dense_patch_slices`` over the image padded symmetrically up to the window where it is
smaller, with ``sliding_window_inference``'s scan interval, so a pass here visits exactly MONAI's windows. The
image itself is never padded: each :class:`Window` knows the part of it that lies in the image (``src``) and the
matching part of its own output (``crop``).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


def scan_interval(image_size: Sequence[int], window: Sequence[int], overlap: Sequence[float]) -> tuple[int, ...]:
    """Step between window starts per axis, as in MONAI's ``sliding_window_inference``:
    ``int(window * (1 - overlap))`` (at least 1), or the window itself when it spans the axis."""
    out = []
    for size, w, o in zip(image_size, window, overlap):
        out.append(int(w) if w == size else max(1, int(w * (1 - o))))
    return tuple(out)


@dataclass(frozen=True)
class Window:
    """One window: where it reads and writes in the real (unpadded) image and which part of its output is real."""

    src: tuple[slice, ...]  # real-image region (X, Y, Z) it covers
    crop: tuple[slice, ...]  # the matching region of the window's own output
    inside: bool  # True when the window lies fully inside the image (src == whole window)


def window_layout(
    image_size: Sequence[int], window: Sequence[int], overlap: Sequence[float]
) -> tuple[list[Window], tuple[int, ...]]:
    """MONAI's window grid over the image padded (symmetrically, like MONAI) up to the window where it is smaller.

    Returns the windows in real-image coordinates and the low-side padding per axis. The image itself is never
    padded; windows reaching into the padding are zero-filled when extracted.
    """
    from monai.data.utils import dense_patch_slices

    padded = tuple(max(s, w) for s, w in zip(image_size, window))
    pad_lo = tuple((p - s) // 2 for p, s in zip(padded, image_size))
    interval = scan_interval(padded, window, overlap)
    out = []
    bounds_list: list[Any] = dense_patch_slices(padded, window, interval, return_slice=False)
    for bounds in bounds_list:
        src, crop = [], []
        for (start, _stop), w, lo, size in zip(bounds, window, pad_lo, image_size):
            real0 = int(start) - lo
            a, b = max(0, real0), min(size, real0 + w)
            src.append(slice(a, b))
            crop.append(slice(a - real0, b - real0))
        inside = all(c.start == 0 and c.stop == w for c, w in zip(crop, window))
        out.append(Window(tuple(src), tuple(crop), inside))
    return out, pad_lo


def choose_slab_axis(image_size: Sequence[int], window: Sequence[int]) -> int:
    """The axis whose slab (``min(window, size)`` planes of the other two axes) holds the fewest voxels."""
    costs = [min(w, s) / s for s, w in zip(image_size, window)]
    return min(range(len(costs)), key=lambda a: (costs[a], -image_size[a]))


def mirror_combinations(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every non-empty subset of the spatial ``axes`` (0, 1, 2): the flips that mirroring TTA adds."""
    uniq = sorted(set(int(a) for a in axes))
    return [c for r in range(1, len(uniq) + 1) for c in itertools.combinations(uniq, r)]


def rows_along(windows: Sequence[Window], axis: int) -> list[tuple[int, list[Window]]]:
    """Windows grouped by their (real-image) start along ``axis``, in increasing order of the start."""
    groups: dict[int, list[Window]] = {}
    for w in windows:
        groups.setdefault(w.src[axis].start, []).append(w)
    return sorted(groups.items())
