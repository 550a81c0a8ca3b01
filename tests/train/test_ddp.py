"""Data-parallel training: two Gloo processes on the CPU end with identical weights, and the loss falls."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from medattn.data.importers import load_dataset
from medattn.train.config import TrainConfig
from medattn.train.logs import read_csv
from medattn.train.trainer import train


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, port: int, data: str, out: str, config: dict[str, Any]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = train(TrainConfig.from_dict(config), load_dataset(data), out, progress=False)
        assert result.model is not None
        torch.save(result.model.state_dict(), Path(out).parent / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_stay_in_sync_and_learn(make_msd: Any, tmp_path: Path) -> None:
    data = make_msd(n=6, shape=(16, 18, 20))
    out = tmp_path / "run"
    config = TrainConfig(
        data=str(data), model="unet", widths=(8, 16), epochs=3, iterations=3, batch_size=2, lr=0.01,
        augment="none", fold="0", folds=3, tensorboard=False, device="cpu", seed=1,
    ).to_dict()  # fmt: skip
    # fork: the children inherit the imported modules (no CUDA here), which saves the start-up of two interpreters.
    mp.start_processes(_worker, args=(2, _free_port(), str(data), str(out), config), nprocs=2, start_method="fork")

    w0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert w0.keys() == w1.keys()
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    saved = torch.load(out / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(saved["model"][k], w0[k]) for k in w0)  # rank 0 wrote what both ranks hold
    assert len(saved["rng"]) == 2  # each rank's random state, for resuming with the same world size
    rows = read_csv(out / "log.csv")
    assert [r["epoch"] for r in rows] == [1, 2, 3]  # one writer: no duplicated rows
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert rows[-1]["val_dice"] is not None
