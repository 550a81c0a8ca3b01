"""Sliding-window inference on whole volumes with bounded stitching memory.

:func:`sliding_window_predict` is the pure function; :class:`SlidingWindowPredictor` is the thin class that holds the
options, caches the Gaussian importance map per (device, dtype) and resolves where windows are stitched.

The window layout and the blending weights are MONAI's (``dense_patch_slices`` with ``sliding_window_inference``'s
scan interval, ``compute_importance_map``), so for the same network, window, overlap and blend mode the result
equals ``sliding_window_inference(...).argmax(1)``. What differs is the stitching:

* **Slabs, not the whole volume.** Windows are visited slab by slab along one spatial axis (the *slab axis*, by
  default the one that makes a slab smallest). The weighted logits are summed into a ring buffer one window deep
  along that axis, ``(K, window[a], ...)``; as soon as no later window can reach a plane, the plane is finished:
  arg-maxed into the label volume (one byte per voxel) and, only when asked for, normalised and soft-maxed into the
  probability volume. Peak memory is therefore about ``input + labels + one slab x K x 4 bytes`` instead of MONAI's
  ``input + K x volume x 4 (output) + volume x 4 (count map) + volume x 8 (int64 argmax)``.
* **Raw blended outputs on request.** ``return_blended=True`` also keeps the weighted mean of every output channel
  (MONAI's ``sliding_window_inference`` output, e.g. logits followed by attention maps); only then is a
  full-volume buffer of all C channels allocated. With ``num_classes`` the labels are the arg-max over the first
  K channels only, and without ``return_blended`` the other channels are dropped before stitching.
* **No count map for labels.** The arg-max of ``sum_i w_i * logits_i`` equals that of the weighted mean (the
  normaliser ``sum_i w_i > 0`` is shared by every class of a voxel), so the weight sum is only kept, in a one-channel
  ring, when probabilities are requested.
* **Explicit devices.** The network runs on ``sw_device``; windows are stitched on ``device`` (the stitch device).
  :class:`SlidingWindowPredictor` picks the stitch device with ``stitch_device="auto"``: the network's device when
  the stitching buffers and outputs fit in half of its free memory, else the CPU (and it falls back to the CPU if
  stitching on the GPU runs out of memory anyway).

Blending averages logits (nnU-Net v2 and MONAI do the same); mirroring test-time augmentation averages the logits
of every flip combination of the chosen axes per window before blending.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from medattn.infer.stitch import SlabStitcher, argmax_classes, member_mean_probabilities, stitch_memory_bytes
from medattn.infer.windows import Window, choose_slab_axis, mirror_combinations, rows_along, window_layout
from medattn.typing import DeviceLike, Triple

log = logging.getLogger(__name__)

__all__ = [
    "SlidingWindowPredictor",
    "SlidingWindowResult",
    "argmax_classes",
    "gaussian_importance_map",
    "sliding_window_predict",
    "stitch_memory_bytes",
]

Network = Callable[[torch.Tensor], Any]
"""A callable taking a float (B, C, *window) batch and returning logits (B, K, *window) (or a list/tuple whose
first element is those logits, e.g. deep supervision). The output may carry more channels than the K classes
(``num_classes`` of :func:`sliding_window_predict`), e.g. attention maps after the logits."""
BlendName = Literal["gaussian", "constant"]


@dataclass
class SlidingWindowResult:
    """What :func:`sliding_window_predict` returns.

    Attributes:
        labels: class indices (X, Y, Z) on the image's grid, ``torch.uint8`` (``torch.int32`` above 256 classes),
            on the stitch device.
        probabilities: softmax of the blended logits (K, X, Y, Z) in the requested dtype on the stitch device, or
            ``None`` when not requested.
        num_windows: windows evaluated (before mirroring).
        stitch_device: where the buffers and outputs lived.
        slab_axis: the spatial axis (0, 1 or 2) the slabs were cut along.
        blended: the blended network output (C, X, Y, Z), all C output channels, in the accumulator dtype on the
            stitch device, or ``None`` when not requested (``return_blended``).
    """

    labels: torch.Tensor
    probabilities: torch.Tensor | None
    num_windows: int
    stitch_device: torch.device
    slab_axis: int
    blended: torch.Tensor | None = None


# ---- the pure function -----------------------------------------------------------------------------------------


def sliding_window_predict(
    image: torch.Tensor,
    network: Network,
    window: Sequence[int],
    *,
    overlap: float | Sequence[float] = 0.5,
    window_batch: int = 1,
    blend: BlendName = "gaussian",
    sigma_scale: float = 0.125,
    mirror_axes: Sequence[int] = (),
    return_probabilities: bool = False,
    probability_dtype: torch.dtype = torch.float32,
    return_blended: bool = False,
    num_classes: int | None = None,
    accumulator_dtype: torch.dtype = torch.float32,
    sw_device: DeviceLike | None = None,
    device: DeviceLike | None = None,
    slab_axis: int | None = None,
    importance_map: torch.Tensor | None = None,
    progress: bool = False,
    members: int = 1,
) -> SlidingWindowResult:
    """Segment a whole volume window by window, stitching in slabs so only labels need a full-volume buffer.

    Args:
        image: float tensor (C, X, Y, Z) (a MetaTensor is read as a plain tensor), preprocessed as the network
            expects; it is only read, window by window, and never padded or copied whole.
        network: see :data:`Network`; called under ``torch.inference_mode`` (put it in eval mode first).
        window: window size (X, Y, Z) in voxels; axes where the image is smaller are zero-padded per window (MONAI
            pads the image symmetrically with zeros; the windows here are placed identically).
        overlap: fraction of a window shared with its neighbour, per axis or one for all, in [0, 1).
        window_batch: windows per network call (more is faster on a GPU, costs window activations x batch).
        blend: ``"gaussian"`` (weights fall off towards the window's edge, sigma = ``sigma_scale`` x window) or
            ``"constant"``.
        sigma_scale: see ``blend``.
        mirror_axes: spatial axes (0, 1, 2) to mirror for test-time augmentation; the logits of every flip
            combination (``2 ** len(axes)`` passes per window) are averaged. Empty: no TTA.
        return_probabilities: also return softmax probabilities (K, X, Y, Z); a full-volume, per-class buffer,
            allocated on request only.
        probability_dtype: dtype of that buffer (``torch.float16`` halves it).
        return_blended: also return the blended network output (C, X, Y, Z): the importance-weighted mean over
            overlapping windows of every output channel, what MONAI's ``sliding_window_inference`` returns (for
            a network returning logits then attention maps, the maps are averaged exactly like the logits). A
            full-volume buffer of all C channels in ``accumulator_dtype``, allocated on request only; without it
            channels beyond ``num_classes`` are dropped before stitching.
        num_classes: K, the leading output channels that are class logits: labels (and probabilities) come from
            them. Default: every output channel. The network must return at least K channels.
        accumulator_dtype: dtype of the slab ring buffer that sums weighted logits (float32 by default; float16
            halves the slab, at the cost of exactness near ties; never bfloat16 on CPUs without native support).
        sw_device: where windows are evaluated (default: the image's device). The network must be there.
        device: where windows are stitched and outputs live (default: the image's device).
        slab_axis: spatial axis to cut slabs along (default: :func:`choose_slab_axis`).
        importance_map: precomputed blending weights of shape ``window`` (the cached one of
            :class:`SlidingWindowPredictor`); computed with MONAI's ``compute_importance_map`` when ``None``.
        progress: show a progress bar over windows.
        members: M > 1 for an ensemble (:class:`medattn.models.ensemble.EnsembleNetwork`): the network returns the
            M members' K class logits one after another (M x K channels); each member's logits are blended (and
            mirrored) as one model's would be, and the result is the mean of the members' probabilities
            (:func:`~medattn.infer.stitch.member_mean_probabilities`). Needs ``num_classes``; no ``return_blended``.

    Returns:
        :class:`SlidingWindowResult`.

    Raises:
        ValueError: on a malformed image, window, overlap or network output, naming the value.

    Example::

        net.eval()
        result = sliding_window_predict(image, net, (96, 96, 96), overlap=0.5, window_batch=2)
        mask = result.labels.numpy()     # (X, Y, Z) uint8 class indices

        # logits (3 classes) followed by 2 attention maps per window: keep the blend of all 5 channels
        result = sliding_window_predict(image, net_with_maps, (96, 96, 96), num_classes=3, return_blended=True)
        maps = result.blended[3:]        # (2, X, Y, Z), averaged over overlapping windows like the logits
    """
    from monai.data import MetaTensor

    if isinstance(image, MetaTensor):
        image = image.as_tensor()
    if not isinstance(image, torch.Tensor) or image.ndim != 4:
        raise ValueError(f"image: expected a (C, X, Y, Z) tensor, got {getattr(image, 'shape', type(image))}")
    if not image.is_floating_point():
        raise ValueError(f"image: expected a floating-point tensor, got {image.dtype}")
    size = tuple(int(s) for s in image.shape[1:])
    win = _triple(window, "window")
    ovl = _overlap(overlap)
    if window_batch < 1:
        raise ValueError(f"window_batch: expected >= 1, got {window_batch}")
    if blend not in ("gaussian", "constant"):
        raise ValueError(f"blend: expected 'gaussian' or 'constant', got {blend!r}")
    bad_axes = [a for a in mirror_axes if a not in (0, 1, 2)]
    if bad_axes:
        raise ValueError(f"mirror_axes: spatial axes are 0, 1, 2; got {list(mirror_axes)}")
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 2):
        raise ValueError(f"num_classes: expected an integer >= 2 (the class channels), got {num_classes!r}")
    if members < 1 or (members > 1 and (num_classes is None or return_blended)):
        raise ValueError(f"members: an ensemble of {members} needs num_classes and no return_blended")
    axis = choose_slab_axis(size, win) if slab_axis is None else int(slab_axis)
    if axis not in (0, 1, 2):
        raise ValueError(f"slab_axis: expected 0, 1 or 2, got {slab_axis}")
    sw_dev = torch.device(sw_device) if sw_device is not None else image.device
    dev = torch.device(device) if device is not None else image.device

    windows, _ = window_layout(size, win, ovl)
    if importance_map is None:
        importance_map = gaussian_importance_map(win, blend, sigma_scale, sw_dev, accumulator_dtype)
    if tuple(importance_map.shape) != win:
        raise ValueError(f"importance_map: expected shape {win}, got {tuple(importance_map.shape)}")
    weights = importance_map.to(device=sw_dev, dtype=accumulator_dtype)[None, None]

    flips = mirror_combinations(mirror_axes)
    min_channels = 2 if num_classes is None else num_classes * members
    keep = None if return_blended else (None if num_classes is None else num_classes * members)  # None: all
    if len(windows) == 1:  # one window: its logits are the blend (w * l / w), no buffer needed
        with torch.inference_mode():
            return _single_window(
                image,
                network,
                windows[0],
                win,
                flips,
                accumulator_dtype,
                sw_dev,
                dev,
                return_probabilities,
                probability_dtype,
                axis,
                num_classes,
                return_blended,
                members,
            )

    stitcher = SlabStitcher(
        size,
        win,
        axis,
        dev,
        accumulator_dtype,
        return_probabilities,
        probability_dtype,
        with_blended=return_blended,
        num_classes=num_classes,
        members=members,
    )
    rows = rows_along(windows, axis)
    bar = _progress(len(windows), progress)
    with torch.inference_mode():
        # One input buffer for every batch: repeated allocations of a batch-sized block fragment the C heap and
        # add tens of MB to the resident peak on the CPU.
        buffer = image.new_empty((min(window_batch, len(windows)), image.shape[0], *win))
        for row_start, row in rows:
            stitcher.finish_before(row_start)
            for i in range(0, len(row), window_batch):
                batch = row[i : i + window_batch]
                for j, w in enumerate(batch):
                    _extract_into(buffer[j], image, w)
                x = buffer[: len(batch)].to(sw_dev)
                logits = _predict(network, x, flips, accumulator_dtype, win, min_channels)
                del x
                if keep is not None:
                    logits = logits[:, :keep]
                logits.mul_(weights)
                stitcher.add(batch, logits, weights)
                del logits
                bar.update(len(batch))
        stitcher.finish_before(size[axis])
    bar.close()
    return SlidingWindowResult(
        labels=stitcher.labels_out(),
        probabilities=stitcher.probabilities,
        num_windows=len(windows),
        stitch_device=dev,
        slab_axis=axis,
        blended=stitcher.blended,
    )


def _single_window(
    image: torch.Tensor,
    network: Network,
    window: Window,
    win: Triple,
    flips: list[tuple[int, ...]],
    acc_dtype: torch.dtype,
    sw_dev: torch.device,
    dev: torch.device,
    with_probs: bool,
    prob_dtype: torch.dtype,
    axis: int,
    num_classes: int | None,
    with_blended: bool,
    members: int = 1,
) -> SlidingWindowResult:
    if window.inside:
        x = image[(slice(None), *window.src)][None]
    else:
        x = image.new_zeros((1, image.shape[0], *win))
        _extract_into(x[0], image, window)
    min_channels = 2 if num_classes is None else num_classes * members
    out = _predict(network, x.to(sw_dev), flips, acc_dtype, win, min_channels)[0][(slice(None), *window.crop)].to(dev)
    blended = out.contiguous() if with_blended else None
    if members > 1:
        assert num_classes is not None
        mean = member_mean_probabilities(out[: num_classes * members], members)
        labels = torch.empty(mean.shape[1:], dtype=torch.uint8 if num_classes <= 256 else torch.int32, device=dev)
        argmax_classes(mean, labels)
        return SlidingWindowResult(
            labels=labels,
            probabilities=mean.to(prob_dtype) if with_probs else None,
            num_windows=1,
            stitch_device=dev,
            slab_axis=axis,
        )
    logits = out if num_classes is None else out[:num_classes]
    labels = torch.empty(logits.shape[1:], dtype=torch.uint8 if logits.shape[0] <= 256 else torch.int32, device=dev)
    argmax_classes(logits, labels)
    probs = torch.softmax(logits, dim=0).to(prob_dtype) if with_probs else None
    return SlidingWindowResult(
        labels=labels, probabilities=probs, num_windows=1, stitch_device=dev, slab_axis=axis, blended=blended
    )


def gaussian_importance_map(
    window: Sequence[int],
    blend: BlendName = "gaussian",
    sigma_scale: float = 0.125,
    device: DeviceLike = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """MONAI's blending weights for one window, shape ``window``, positive, peak ~1 at the centre."""
    from monai.data.utils import compute_importance_map

    return compute_importance_map(tuple(window), mode=blend, sigma_scale=sigma_scale, device=device, dtype=dtype)


# ---- helpers of the pure function ------------------------------------------------------------------------------


def _triple(value: Sequence[int] | int, what: str) -> Triple:
    vals = (value,) * 3 if isinstance(value, int) else tuple(value)
    if len(vals) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in vals):
        raise ValueError(f"{what}: expected three positive integers (X, Y, Z), got {value!r}")
    return (int(vals[0]), int(vals[1]), int(vals[2]))


def _overlap(value: float | Sequence[float]) -> tuple[float, float, float]:
    vals = (float(value),) * 3 if isinstance(value, (int, float)) else tuple(float(v) for v in value)
    if len(vals) != 3 or not all(0.0 <= v < 1.0 for v in vals):
        raise ValueError(f"overlap: expected a fraction in [0, 1) (or three), got {value!r}")
    return (vals[0], vals[1], vals[2])


def _extract_into(out: torch.Tensor, image: torch.Tensor, w: Window) -> None:
    """Copy window ``w`` of ``image`` into ``out`` (C, *window), zero-filling the part outside the image."""
    if not w.inside:
        out.zero_()
    out[(slice(None), *w.crop)] = image[(slice(None), *w.src)]


def _forward(network: Network, x: torch.Tensor) -> torch.Tensor:
    out = network(x)
    if isinstance(out, (list, tuple)):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"network: expected a logits tensor, got {type(out).__name__}")
    return out


def _predict(
    network: Network,
    x: torch.Tensor,
    flips: list[tuple[int, ...]],
    dtype: torch.dtype,
    window: tuple[int, ...],
    min_channels: int = 2,
) -> torch.Tensor:
    """Outputs (B, C, *window) in ``dtype``, averaged over the mirror ``flips`` (and the identity); at least
    ``min_channels`` channels (K, the classes, or 2)."""
    out = _forward(network, x)
    if out.ndim != 5 or tuple(out.shape[2:]) != window or out.shape[0] != x.shape[0] or out.shape[1] < min_channels:
        raise ValueError(
            f"network: expected logits (B={x.shape[0]}, K>={min_channels}, {', '.join(map(str, window))}) for a "
            f"window batch of shape {tuple(x.shape)}, got {tuple(out.shape)}"
        )
    acc = out.to(dtype=dtype, copy=True) if flips else out.to(dtype)
    for axes in flips:
        dims = [a + 2 for a in axes]
        acc += torch.flip(_forward(network, torch.flip(x, dims)), dims).to(dtype)
    if flips:
        acc /= len(flips) + 1
    return acc


def _progress(total: int, enabled: bool) -> Any:
    from medattn.progress import progress_bar

    return progress_bar(total, desc="windows", unit="win", enabled=enabled, leave=False)


# ---- the class that caches -------------------------------------------------------------------------------------


class SlidingWindowPredictor:
    """Holds the options of :func:`sliding_window_predict`, caches the importance map, chooses the stitch device.

    Args:
        network: see :data:`Network`, on ``sw_device``, in eval mode.
        window: window size (X, Y, Z) in voxels (``medattn predict`` uses the plan's ``patch_size``).
        overlap, window_batch, blend, sigma_scale, mirror_axes, accumulator_dtype, probability_dtype, slab_axis:
            as in :func:`sliding_window_predict`.
        sw_device: where the network runs (default: the device of its first parameter, else the CPU).
        stitch_device: ``"auto"`` (default), ``"same"`` (the network's device) or a device. ``"auto"`` stitches on
            the network's device when the estimated stitching memory (labels, slab ring and, when requested,
            probabilities) fits in half of that device's free memory, and otherwise on the CPU; on the CPU it is
            always the CPU. If stitching on a GPU runs out of memory, the volume is redone with CPU stitching and a
            warning.
        num_classes: K, used to estimate stitching memory for ``"auto"`` (default 2 if unknown), and by an ensemble.
        progress: show a progress bar over windows.
        members: M > 1 when ``network`` is an ensemble of M models (see :func:`sliding_window_predict`).

    Example::

        predictor = SlidingWindowPredictor(net, plan.patch_size, overlap=0.5, mirror_axes=(0, 1, 2))
        labels = predictor(image).labels
    """

    def __init__(
        self,
        network: Network,
        window: Sequence[int],
        *,
        overlap: float | Sequence[float] = 0.5,
        window_batch: int = 1,
        blend: BlendName = "gaussian",
        sigma_scale: float = 0.125,
        mirror_axes: Sequence[int] = (),
        sw_device: DeviceLike | None = None,
        stitch_device: DeviceLike = "auto",
        accumulator_dtype: torch.dtype = torch.float32,
        probability_dtype: torch.dtype = torch.float32,
        slab_axis: int | None = None,
        num_classes: int | None = None,
        progress: bool = False,
        members: int = 1,
    ) -> None:
        self.network = network
        self.members = int(members)
        self.window = _triple(window, "window")
        self.overlap = _overlap(overlap)
        if window_batch < 1:
            raise ValueError(f"window_batch: expected >= 1, got {window_batch}")
        self.window_batch = int(window_batch)
        self.blend: BlendName = blend
        self.sigma_scale = float(sigma_scale)
        self.mirror_axes = tuple(int(a) for a in mirror_axes)
        self.sw_device = torch.device(sw_device) if sw_device is not None else _network_device(network)
        self.stitch_device = stitch_device
        self.accumulator_dtype = accumulator_dtype
        self.probability_dtype = probability_dtype
        self.slab_axis = slab_axis
        self.num_classes = num_classes
        self.progress = progress
        self._maps: dict[tuple[str, torch.dtype], torch.Tensor] = {}

    def importance_map(self, device: DeviceLike | None = None) -> torch.Tensor:
        """The blending weights (shape ``window``) on ``device`` (default ``sw_device``), computed once."""
        dev = torch.device(device) if device is not None else self.sw_device
        key = (str(dev), self.accumulator_dtype)
        if key not in self._maps:
            self._maps[key] = gaussian_importance_map(
                self.window, self.blend, self.sigma_scale, dev, self.accumulator_dtype
            )
        return self._maps[key]

    def resolve_stitch_device(self, image_size: Sequence[int], return_probabilities: bool = False) -> torch.device:
        """Where :meth:`__call__` will stitch an image of ``image_size`` (X, Y, Z); see the class docstring."""
        choice = self.stitch_device
        if isinstance(choice, torch.device):
            return choice
        if choice == "same":
            return self.sw_device
        if choice != "auto":
            return torch.device(choice)
        if self.sw_device.type != "cuda":
            return torch.device("cpu")
        need = stitch_memory_bytes(
            image_size,
            self.window,
            self.num_classes or 2,
            self.slab_axis,
            return_probabilities,
            self.accumulator_dtype,
            self.probability_dtype,
            members=self.members,
        )
        free, _total = torch.cuda.mem_get_info(self.sw_device)
        return self.sw_device if need <= free // 2 else torch.device("cpu")

    def __call__(self, image: torch.Tensor, return_probabilities: bool = False) -> SlidingWindowResult:
        """Segment ``image`` (C, X, Y, Z); see :func:`sliding_window_predict` for layout and dtypes."""
        size = tuple(int(s) for s in image.shape[1:])
        dev = self.resolve_stitch_device(size, return_probabilities)
        kwargs: dict[str, Any] = {
            "overlap": self.overlap,
            "window_batch": self.window_batch,
            "blend": self.blend,
            "sigma_scale": self.sigma_scale,
            "mirror_axes": self.mirror_axes,
            "return_probabilities": return_probabilities,
            "probability_dtype": self.probability_dtype,
            "accumulator_dtype": self.accumulator_dtype,
            "sw_device": self.sw_device,
            "slab_axis": self.slab_axis,
            "importance_map": self.importance_map(),
            "progress": self.progress,
        }
        if self.members > 1:
            kwargs.update(num_classes=self.num_classes, members=self.members)
        try:
            return sliding_window_predict(image, self.network, self.window, device=dev, **kwargs)
        except torch.OutOfMemoryError:
            if dev.type != "cuda":
                raise
            log.warning("stitching on %s ran out of memory for a %s volume; redoing it on the CPU", dev, size)
            torch.cuda.empty_cache()
            return sliding_window_predict(image, self.network, self.window, device="cpu", **kwargs)


def _network_device(network: Network) -> torch.device:
    params = getattr(network, "parameters", None)
    if callable(params):
        for p in params():
            return torch.device(p.device)
    return torch.device("cpu")
