"""Device resolution, seeding, the rank type and the thread count: one home for every command."""

from __future__ import annotations

import os
import platform
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from medattn.errors import ConfigError
from medattn.runtime import RETAIN_MMAP_THRESHOLDS, Rank, resolve_device, seed_everything, torch_threads


def test_device_requests_resolve_or_fail_with_the_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for auto in (None, "", "auto"):
        assert resolve_device(auto) == torch.device("cpu")
    with pytest.raises(ConfigError, match="--device cuda:1: CUDA is not available on this machine; use --device cpu"):
        resolve_device("cuda:1")
    with pytest.raises(ConfigError, match="--device"):
        resolve_device("gpu")


def test_a_torchrun_process_takes_its_local_cuda_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda", local_rank=3) == torch.device("cuda", 1)
    assert resolve_device("cuda:0", local_rank=3) == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda")


def test_seeding_repeats_torch_numpy_and_python_draws() -> None:
    def draws() -> tuple[float, float, float]:
        return torch.rand(1).item(), float(np.random.rand()), random.random()

    seed_everything(7)
    first = draws()
    seed_everything(7 + 2**32)  # taken modulo 2**32, NumPy's range
    assert draws() == first


def test_rank_from_the_torchrun_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    rank = Rank.from_env()
    assert (rank.rank, rank.world_size, rank.local_rank, rank.enabled, rank.is_main) == (2, 4, 0, True, False)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ConfigError, match="RANK=4 and WORLD_SIZE=4 are inconsistent"):
        Rank.from_env()
    assert Rank().is_main and not Rank().enabled


def test_thread_count_is_restored_after_the_block() -> None:
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before


_FAULTS_SCRIPT = """
import resource, sys
import numpy as np
from medattn.runtime import retain_freed_memory
threshold = retain_freed_memory() if sys.argv[1] == "retain" else 0
faults = []
for _ in range(4):  # a training step's pattern: a large block filled, freed, and asked for again
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = np.ones(48 * 1024**2 // 8)  # 48 MiB: above glibc's largest dynamic mmap threshold (32 MiB)
    del block
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(threshold, *faults)
"""


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="retain_freed_memory sets glibc's malloc"
)
def test_retained_freed_memory_is_reused_without_page_faults() -> None:
    mine = ("MALLOC_", "GLIBC_TUNABLES", "MEDATTN_RETAIN_MEMORY")
    env = {k: v for k, v in os.environ.items() if not k.startswith(mine)}

    def faults(mode: str, **extra: str) -> tuple[int, list[int]]:
        cmd = [sys.executable, "-c", _FAULTS_SCRIPT, mode]
        out = subprocess.run(cmd, env={**env, **extra}, capture_output=True, text=True, check=True)
        threshold, *counts = (int(v) for v in out.stdout.split())
        return threshold, counts

    # counted in pages of 4 KiB or, where numpy asks for transparent huge pages, 2 MiB: compare with the first fill
    threshold, default = faults("default")
    assert threshold == 0 and default[0] > 0
    assert min(default[1:]) >= default[0] // 2  # glibc maps and unmaps it every time: each fill faults again
    threshold, kept = faults("retain")
    assert threshold in RETAIN_MMAP_THRESHOLDS
    if threshold > 48 * 1024**2:  # glibc 2.35 and later; before, the 32 MiB cap leaves a 48 MiB block mapped
        assert kept[0] > 0 and max(kept[1:]) <= kept[0] // 20  # the heap keeps it: only the first fill faults
    # the user's own settings stand, and so does the opt-out
    assert faults("retain", MALLOC_TRIM_THRESHOLD_="131072")[0] == 0
    assert faults("retain", GLIBC_TUNABLES="glibc.malloc.mmap_threshold=131072")[0] == 0
    assert faults("retain", MEDATTN_RETAIN_MEMORY="0")[0] == 0
