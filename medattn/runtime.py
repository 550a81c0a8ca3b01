"""Where a process runs: its device, its seed, its place in a ``torchrun`` job, its thread count.

Every layer may import this module; it imports PyTorch only inside the functions that need it, so importing it
costs nothing (``medattn --help`` stays instant).

Example::

    rank = Rank.from_env()                      # rank 0 of 1 when not started by torchrun
    device = resolve_device("cuda", local_rank=rank.local_rank)   # cuda:LOCAL_RANK
    seed_everything(0)
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from medattn.typing import DeviceLike

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


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


#: glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: Blocks up to this size come from the heap (first choice; glibc before 2.35 refuses more than 32 MiB on 64-bit
#: systems, the fallback), and this much free memory may stay at its top.
RETAIN_MMAP_THRESHOLDS = (256 * 1024**2, 32 * 1024**2)
RETAIN_TRIM_THRESHOLD = 1024**3
#: Where a user chose glibc's allocator settings themselves (environment variables, or ``GLIBC_TUNABLES`` names).
_USER_MALLOC_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
_USER_MALLOC_TUNABLES = ("glibc.malloc.mmap_threshold", "glibc.malloc.trim_threshold", "glibc.malloc.top_pad")
_retained: int | None = None


def retain_freed_memory() -> int:
    """Keep the memory that freed tensors leave in this process's heap, for the next step to reuse; returns the
    ``mmap`` threshold it set in bytes (0: it set nothing).

    Why: with glibc's defaults, the multi-megabyte activations and gradients of a 3D training step are handed back to
    the kernel when freed (``munmap``, or a trim of the heap's top) and fetched again, zero-filled page by page, the
    next step. Measured on ``ag_unet_fullres`` (batch 2, 40x56x40, two threads, 2-core AMD EPYC in a virtual
    machine): 17,700 to 22,300 page faults a step, and 22-27 ms of system CPU time in a one-off count; with this
    setting 5 to 8 faults. ``bench/bench_train.py``'s "step as run" measures the whole step against the old one
    (docs/benchmarks.md). PyTorch's CPU tensors have no caching allocator of their own (CUDA's has), and jemalloc
    or tcmalloc would have to be preloaded before Python starts; ``mallopt`` does the same job from inside.

    Sets glibc's ``M_MMAP_THRESHOLD`` to 256 MiB (32 MiB where glibc before 2.35 caps it: allocations below it come
    from the heap, not from ``mmap``) and ``M_TRIM_THRESHOLD`` to 1 GiB (up to that much free memory stays at the
    heap's top). The process keeps its peak memory until it exits, as a caching allocator does; larger blocks are
    still mapped and returned. Process-wide, so for command-line entry points and scripts, like
    :func:`torch_threads`: ``medattn train``, ``adapt`` and ``demo`` call it first; the first call decides for the
    process, and forked data-loader workers inherit it (each keeps its own peak). ``--verbose`` logs what it set.
    Sets nothing off glibc, where the user set ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` or
    ``MALLOC_TOP_PAD_`` or the same ``glibc.malloc`` tunables in ``GLIBC_TUNABLES`` (their choice stands), where
    ``MEDATTN_RETAIN_MEMORY=0``, or where ctypes is missing.
    """
    global _retained
    if _retained is not None:
        return _retained
    _retained = 0
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if (
        os.environ.get("MEDATTN_RETAIN_MEMORY", "1").strip() == "0"
        or any(v in os.environ for v in _USER_MALLOC_SETTINGS)
        or any(t in tunables for t in _USER_MALLOC_TUNABLES)
    ):
        return 0
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return 0
    try:
        import ctypes

        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (ImportError, OSError, AttributeError):
        return 0
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    threshold = next((t for t in RETAIN_MMAP_THRESHOLDS if mallopt(_M_MMAP_THRESHOLD, t)), 0)
    if threshold and mallopt(_M_TRIM_THRESHOLD, RETAIN_TRIM_THRESHOLD):
        _retained = threshold
    if _retained:
        log.debug("freed memory retained: blocks below %d MiB come from the heap", _retained // 1024**2)
    else:
        log.debug("freed memory not retained: glibc refused mallopt")
    return _retained
