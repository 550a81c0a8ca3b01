"""Data-parallel training across processes: ``torchrun --nproc_per_node N medattn train ...``.

``torchrun`` starts N copies of the command with ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT`` set. :func:`init_from_env` joins the process group (NCCL when the run uses CUDA, Gloo on the CPU)
and gives each process its device; the trainer wraps the network in ``DistributedDataParallel``, samples with a
``DistributedSampler``, averages metrics over ranks and lets only rank 0 write. A library caller that has already
initialised ``torch.distributed`` gets :func:`current` without re-initialising anything.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

from medattn.runtime import Rank, auto_device


def env_world_size() -> int:
    """``WORLD_SIZE`` as set by torchrun (1 when unset)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def current() -> Rank:
    """The initialised process group's rank and size, or a single process."""
    if dist.is_available() and dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
        return Rank(dist.get_rank(), dist.get_world_size(), local, owned=False)
    return Rank()


def init_from_env(device: str | None) -> tuple[Rank, str]:
    """Join the torchrun job described by the environment, if any; return it and this process's device.

    Args:
        device: the requested device (``cpu``, ``cuda``, ``cuda:N`` or None for CUDA when available). Under a
            multi-process job on CUDA, each process takes ``cuda:LOCAL_RANK``.
    """
    want_cuda = (device or auto_device()).startswith("cuda")
    resolved = device or ("cuda" if want_cuda else "cpu")
    if dist.is_available() and dist.is_initialized():
        info = current()
    elif env_world_size() > 1:
        backend = "nccl" if want_cuda else "gloo"
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if want_cuda:
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
        info = Rank(dist.get_rank(), dist.get_world_size(), local, owned=True)
    else:
        return Rank(), resolved
    if want_cuda and info.enabled:
        resolved = f"cuda:{info.local_rank}"
    return info, resolved


def shutdown(info: Rank) -> None:
    """Leave the process group if :func:`init_from_env` created it."""
    if info.owned and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: Rank) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_sum(values: torch.Tensor, info: Rank) -> torch.Tensor:
    """Sum a float64 tensor over ranks (in place on a copy; the input is unchanged). Single process: a copy."""
    out = values.detach().to(torch.float64).clone()
    if info.enabled:
        backend = dist.get_backend()
        device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        moved = out.to(device)
        dist.all_reduce(moved, op=dist.ReduceOp.SUM)
        out = moved.cpu()
    return out


def broadcast_object(obj: Any, info: Rank, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank (pickled; for small objects such as a plan dict)."""
    if not info.enabled:
        return obj
    box = [obj if info.rank == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: Any, info: Rank) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out
