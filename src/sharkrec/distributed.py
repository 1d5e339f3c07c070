"""Data-parallel helpers on PyTorch's own engine (``torch.distributed``; started by ``torchrun``).

Every sharkrec command runs unchanged under ``torchrun --nproc_per_node=N``: the first call to
:func:`world_size` (or :func:`init_from_env`) joins the process group torchrun describes in the
environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``), with gloo on CPU and nccl
on GPU. Outside torchrun every helper is a no-op (rank 0 of 1), so library code calls them freely.

How the library uses them (and how another stage, e.g. ``compress``, should):

- data: every rank loads the same files (same vocabularies), then keeps its shard:
  :func:`shard_for_training` (equal-length contiguous shards, so every rank runs the same number of
  steps) or :func:`shard_batches` (whole batches, for sums over samples such as importance scores);
- sums and counts: :func:`all_reduce_sum` (float64 sums stay exact enough to equal one process),
  :func:`gather_rows` to collect per-rank rows in rank order, :func:`all_gather_varsize` for tensors
  whose length differs by rank (sparse rows of a batch);
- writes: ``if is_main(): write_json(...)`` then :func:`barrier`, so files are written once.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from sharkrec.data.dataset import EncodedSplit
from sharkrec.errors import ConfigError, DataError


def init_from_env(backend: str | None = None) -> bool:
    """Join the process group torchrun describes; True when running with more than one process.

    ``backend`` defaults to gloo, and to ``"cpu:gloo,cuda:nccl"`` when CUDA is available: torch then
    sends each collective to gloo or nccl by the device of its tensors (sharkrec's trainer and
    scorers hold CPU tensors). Calling it again is a no-op.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    world = os.environ.get("WORLD_SIZE")
    if world is None or int(world) <= 1:
        return False
    missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise ConfigError(f"WORLD_SIZE={world} but {', '.join(missing)} not set; start sharkrec with "
                          "torchrun --nproc_per_node=N (it sets them)")
    if not dist.is_available():
        raise ConfigError("this torch build has no torch.distributed; install a torch wheel with it")
    chosen = backend or ("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
    dist.init_process_group(backend=chosen)
    return True


def world_size() -> int:
    """Number of processes (1 outside torchrun); joins torchrun's group on first use."""
    init_from_env()
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 outside torchrun)."""
    return dist.get_rank() if world_size() > 1 else 0


def is_distributed() -> bool:
    return world_size() > 1


def is_main() -> bool:
    """True on the one process that writes files and prints reports."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (an all-reduce of a CPU scalar, so it runs on gloo whatever the GPU backend)."""
    if is_distributed():
        dist.all_reduce(torch.zeros(1))


def all_reduce_sum(*tensors: Tensor) -> tuple[Tensor, ...]:
    """Element-wise sums over ranks of each tensor (new tensors; inputs untouched)."""
    if not is_distributed():
        return tuple(t.clone() for t in tensors)
    out = []
    for tensor in tensors:
        total = tensor.detach().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        out.append(total)
    return tuple(out)


def broadcast(tensor: Tensor, src: int = 0) -> Tensor:
    """``tensor`` as rank ``src`` holds it, on every rank (in place on the others)."""
    if is_distributed():
        dist.broadcast(tensor, src=src)
    return tensor


def all_gather_objects(payload: Any) -> list[Any]:
    """Every rank's ``payload`` (small picklable metadata between the job's own ranks), in rank order."""
    if not is_distributed():
        return [payload]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, payload)
    return gathered


def broadcast_object(payload: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``payload`` (small picklable metadata) on every rank."""
    if not is_distributed():
        return payload
    box = [payload]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_varsize(tensor: Tensor) -> list[Tensor]:
    """Every rank's ``tensor`` (N_r, ...) in rank order; N_r may differ by rank, trailing dims may not."""
    if not is_distributed():
        return [tensor]
    size = torch.tensor([tensor.shape[0]], dtype=torch.int64)
    sizes = [torch.zeros_like(size) for _ in range(world_size())]
    dist.all_gather(sizes, size)
    longest = int(max(int(s) for s in sizes))
    padded = tensor.new_zeros((longest, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    return [part[: int(n)] for part, n in zip(parts, sizes, strict=True)]


def sum_rows(rows: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
    """Union over ranks of (rows (U_r,), values (U_r, ...)): sorted unique rows (U,) and summed values (U, ...).

    Used for sparse table gradients and F-Quantization row counts: every rank gets the same result.
    """
    if not is_distributed():
        unique, inverse = torch.unique(rows.long(), return_inverse=True)
        return unique, values.new_zeros((unique.shape[0], *values.shape[1:])).index_add_(0, inverse, values)
    if values.dtype == torch.float32:  # one gather: each int64 row id rides along as two float32 words (bits kept)
        width = int(torch.Size(values.shape[1:]).numel())  # 1 for (U,) values
        packed = torch.cat([rows.long().contiguous().view(torch.float32).reshape(-1, 2),
                            values.reshape(values.shape[0], width)], dim=1)  # (U, 2 + width)
        gathered = torch.cat(all_gather_varsize(packed))
        all_rows = gathered[:, :2].contiguous().view(torch.int64).reshape(-1)
        all_values = gathered[:, 2:].reshape(-1, *values.shape[1:])
    else:
        all_rows = torch.cat(all_gather_varsize(rows.long()))
        all_values = torch.cat(all_gather_varsize(values.contiguous()))
    unique, inverse = torch.unique(all_rows, return_inverse=True)
    summed = all_values.new_zeros((unique.shape[0], *all_values.shape[1:])).index_add_(0, inverse, all_values)
    return unique, summed


def gather_rows(rows: np.ndarray) -> np.ndarray:
    """Concatenate every rank's (R_r, ...) float64 rows in rank order (on every rank)."""
    if not is_distributed():
        return rows
    parts = all_gather_varsize(torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float64)))
    return torch.cat(parts).numpy()


def shard_bounds(total: int, parts: int, index: int, block: int = 1) -> tuple[int, int]:
    """[start, stop) of contiguous shard ``index`` of ``parts`` over ``total`` items cut at multiples of ``block``.

    Shards differ by at most one block; concatenated in rank order they are the items in order.
    """
    blocks = -(-total // block)
    start_block = blocks * index // parts
    stop_block = blocks * (index + 1) // parts
    return min(start_block * block, total), min(stop_block * block, total)


def shard_batches(split: EncodedSplit, batch_size: int, what: str = "split") -> EncodedSplit:
    """This rank's whole batches of ``split``: rank r's batches are batches r·k.. of one process.

    The union of all ranks' batches is exactly one process's batch sequence, so a sum over samples
    (or per-batch means weighted by batch size) gathered in rank order equals the single-process value.
    """
    parts = world_size()
    if parts == 1:
        return split
    batches = split.num_batches(batch_size)
    if batches < parts:
        raise DataError(f"the {what} has {batches} batch(es) of {batch_size}, fewer than the {parts} processes; "
                        "use a smaller --batch-size or fewer processes")
    start, stop = shard_bounds(len(split), parts, rank(), batch_size)
    return split.subset(np.arange(start, stop))


def shard_for_training(split: EncodedSplit) -> EncodedSplit:
    """This rank's equal-length contiguous shard (the last ``len % world`` samples are left out).

    Equal lengths give every rank the same number of steps per epoch, which the gradient
    all-reduce of every step needs. The global batch is ``world_size()`` x the per-process batch.
    """
    parts = world_size()
    if parts == 1:
        return split
    each = len(split) // parts
    if each == 0:
        raise DataError(f"the training split has {len(split)} samples, fewer than the {parts} processes; "
                        "give more data or use fewer processes")
    start = rank() * each
    return split.subset(np.arange(start, start + each))


def summary() -> dict[str, Any]:
    """``{"world_size", "backend"}`` for reports."""
    if not is_distributed():
        return {"world_size": 1, "backend": None}
    return {"world_size": world_size(), "backend": str(dist.get_backend())}


@contextmanager
def hold_output(out_dir: str | os.PathLike[str] | None, what: str) -> Iterator[None]:
    """Lock ``out_dir`` (:func:`sharkrec.io.output_lock`) on the rank that writes files; elsewhere, or without
    a folder, nothing."""
    from sharkrec.io import output_lock

    if out_dir is None or not is_main():
        yield
        return
    with output_lock(Path(out_dir), what):
        yield
