"""Where a process runs: its device, its seed, its place in a ``torchrun`` job, its thread count.

Every layer may import this module; it imports PyTorch only inside the functions that need it, so importing it
costs nothing (``medattn --help`` stays instant).

Example::

    rank = Rank.from_env()                      # rank 0 of 1 when not started by torchrun
    device = resolve_device("cuda", local_rank=rank.local_rank)   # cuda:LOCAL_RANK
    seed_everything(0)
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from medattn.typing import DeviceLike

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Rank:
    """This process's place in a job: ``rank`` of ``world_size`` (``rank 0 of 1`` when run directly).

    Attributes:
        rank: global rank, 0-based.
        world_size: number of processes in the job.
        local_rank: rank on this machine (the CUDA device index a process takes).
        owned: this process created the ``torch.distributed`` group (and destroys it at the end).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owned: bool = False

    @property
    def enabled(self) -> bool:
        """More than one process: results need reducing over ranks."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0, the process that writes the shared outputs."""
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Rank:
        """Read ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (as set by ``torchrun``); ``rank 0 of 1`` when unset.

        Raises:
            ConfigError: a variable is not an integer, or the rank lies outside ``0..WORLD_SIZE-1``.
        """
        from medattn.errors import ConfigError

        try:
            world = int(os.environ.get("WORLD_SIZE", "1"))
            rank = int(os.environ.get("RANK", "0"))
            local = int(os.environ.get("LOCAL_RANK", str(rank)))
        except ValueError as e:
            raise ConfigError(f"malformed torch.distributed environment variable: {e}") from e
        if world < 1 or not 0 <= rank < world:
            raise ConfigError(f"RANK={rank} and WORLD_SIZE={world} are inconsistent")
        return cls(rank, world, local)


#: Requests meaning "CUDA when available, else the CPU".
AUTO_DEVICES = (None, "", "auto")


def auto_device() -> str:
    """``"cuda"`` when PyTorch sees a CUDA device, else ``"cpu"``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(requested: DeviceLike | None = None, *, local_rank: int | None = None) -> torch.device:
    """The device a command runs on.

    Args:
        requested: ``cpu``, ``cuda``, ``cuda:N`` (or a :class:`torch.device`); None, ``""`` or ``"auto"``: CUDA
            when available, else the CPU.
        local_rank: this process's rank on the machine; given, a CUDA request without an index becomes
            ``cuda:(local_rank % device count)``, so each process of a ``torchrun`` job takes its own device.

    Raises:
        ConfigError: the name is not a device, or CUDA was asked for on a machine without it.
    """
    import torch

    from medattn.errors import ConfigError

    name = auto_device() if requested in AUTO_DEVICES else str(requested)
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"--device: {e}") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
        if local_rank is not None and dev.index is None:
            dev = torch.device("cuda", local_rank % torch.cuda.device_count())
    return dev


def seed_everything(seed: int) -> None:
    """Seed PyTorch's, NumPy's and Python's global generators with ``seed`` (taken modulo 2**32, NumPy's range)."""
    import numpy as np
    import torch

    seed = int(seed) % (2**32)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` PyTorch intra-op threads, then restore the caller's count (None: as is).

    For command-line entry points and scripts: library functions never change the thread count themselves.
    """
    if threads is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)
