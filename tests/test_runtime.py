"""Device resolution, seeding, the rank type and the thread count: one home for every command."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from medattn.errors import ConfigError
from medattn.runtime import Rank, resolve_device, seed_everything, torch_threads


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
