"""Type aliases shared across medattn, in one place (as TorchIO's ``typing.py``).

Axis convention, for every alias, docstring and message in the package: the spatial axes are (X, Y, Z), a
volume's array indices (i, j, k) in voxel order, with ``affine`` mapping them to RAS world coordinates in mm
(:mod:`medattn.data.io`). Arrays read by :func:`~medattn.data.io.read_volume` keep the stored order, (X, Y, Z) or
channel-last (X, Y, Z, C); after the plan's transforms (:mod:`medattn.data.transforms`) X, Y and Z run towards
R, A and S, and tensors are channel-first (C, X, Y, Z), batched (B, C, X, Y, Z): what the networks see.

The aliases naming torch types are strings, so that importing this module imports neither torch nor numpy (and
``medattn --help`` stays instant); mypy reads them as the types they name. Use them in annotations only.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

if TYPE_CHECKING:
    import torch

#: A file or folder path as a caller gives it: ``str`` or any ``os.PathLike`` (:class:`pathlib.Path`, ...).
PathLike: TypeAlias = str | os.PathLike[str]

#: Per spatial axis (X, Y, Z), an integer count of voxels: a shape, a patch or window edge, a kernel, a stride.
Triple: TypeAlias = tuple[int, int, int]

#: Per spatial axis (X, Y, Z), a voxel size in mm (float).
Spacing: TypeAlias = tuple[float, float, float]

#: A closed interval ``(low, high)``, ``low <= high``, in the units of the quantity it bounds.
Range: TypeAlias = tuple[float, float]

#: Where tensors live or a network runs: a name (``"cpu"``, ``"cuda:1"``) or a :class:`torch.device`.
DeviceLike: TypeAlias = "str | torch.device"

#: A segmentation network's forward output: float logits (B, classes, X, Y, Z) on the input's device and grid, or,
#: under deep supervision in training mode, a list of logits, full resolution first, then each coarser stage.
ModelOutput: TypeAlias = "torch.Tensor | list[torch.Tensor]"

#: A scanner shift as JSON-ready parameters (format ``SHIFT_FORMAT`` of :mod:`medattn.data.acquisition`): what a
#: scanner profile draws, what ``apply_shift`` replays and what ``medattn synth`` saves beside each case.
ShiftParams: TypeAlias = dict[str, Any]

#: How bad a validation finding is: an ``"error"`` fails the case; a ``"warning"`` is legal but worth a look.
Severity: TypeAlias = Literal["error", "warning"]

#: What the input checks do with NaN/Inf image voxels: fail the case (``"error"``), or only warn because the caller
#: replaces them (``"replace"``, ``medattn predict --replace-nonfinite``).
NonFiniteVoxels: TypeAlias = Literal["error", "replace"]
