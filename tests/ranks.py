"""Run a function in N local processes joined by a gloo process group (what torchrun sets up), in tests."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _entry(rank: int, worker: Callable[..., Any], world: int, port: int, out: str, args: tuple[Any, ...]) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_WAIT_POLICY="PASSIVE")
    torch.set_num_threads(1)
    try:
        result = worker(*args)
        torch.save(result, Path(out) / f"rank{rank}.pt")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_ranks(worker: Callable[..., Any], out: Path, *args: Any, world: int = 2) -> list[Any]:
    """``worker(*args)`` on ranks 0..world-1 (gloo, CPU); returns each rank's return value in rank order.

    ``worker`` must be a module-level function (it is pickled into the child processes).
    """
    out.mkdir(parents=True, exist_ok=True)
    mp.start_processes(_entry, args=(worker, world, free_port(), str(out), args), nprocs=world, join=True,
                       start_method="fork")
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world)]
