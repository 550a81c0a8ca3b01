"""Sharding ``medattn predict`` across the processes ``torchrun`` starts.

``torchrun --nproc_per_node N -m medattn.cli predict MODEL INPUT OUTPUT`` (or ``torchrun --no-python medattn
predict ...``) starts N copies; each reads its rank from the standard ``torch.distributed`` environment variables
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``: :meth:`medattn.runtime.Rank.from_env`), takes cases ``rank, rank + N,
...`` and writes their masks itself. At the end the per-case results are gathered over a Gloo process group
(metadata only, so Gloo serves CPU and GPU runs alike) and rank 0 writes the summary. There is no process pool of
our own.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from medattn.runtime import Rank

#: How long ranks wait for each other at the final gather (slow ranks may still be predicting large volumes).
GATHER_TIMEOUT = datetime.timedelta(hours=24)


@contextmanager
def process_group(rank: Rank) -> Iterator[Any]:
    """A Gloo group for gathering results when ``world_size > 1`` (reusing one the caller already set up);
    yields ``torch.distributed`` or ``None`` for a single process. Destroys only a group it created."""
    if rank.world_size == 1:
        yield None
        return
    import torch.distributed as dist

    created = False
    if not dist.is_initialized():
        dist.init_process_group("gloo", rank=rank.rank, world_size=rank.world_size, timeout=GATHER_TIMEOUT)
        created = True
    try:
        yield dist
    finally:
        if created:
            dist.destroy_process_group()


def gather(dist: Any, items: list[Any], world_size: int) -> list[Any]:
    """Every rank's ``items`` (picklable), concatenated in rank order, on every rank."""
    if dist is None:
        return list(items)
    parts: list[Any] = [None] * world_size
    dist.all_gather_object(parts, items)
    return [x for part in parts for x in part]
