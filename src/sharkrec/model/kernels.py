"""The training step's C++ kernels (``csrc/train_kernels.cpp``), built once and cached, with PyTorch fallbacks.

- :func:`pair_dots` / its autograd: DLRM's dot interaction of (B, F, D) field vectors → (B, F(F-1)/2), one pass
  over the upper triangle forward and one backward (``torch.bmm`` computes the full F × F square and its
  backward two more);
- ``rowwise_adagrad`` / ``lazy_adam`` (used by :mod:`sharkrec.train.optim`): the sparse gradients of all tables
  applied in one call, duplicates summed per row without coalescing a sparse tensor per table.

:func:`extension` is ``None`` when no compiler is available, the build failed or ``SHARKREC_NO_EXTENSION=1``;
every caller then runs the same arithmetic with PyTorch ops (the tests check both agree).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sharkrec.extensions import build, disabled

_SOURCE = Path(__file__).with_name("csrc") / "train_kernels.cpp"
_NAME = "sharkrec_train_kernels"


@functools.lru_cache(maxsize=1)
def _build() -> Any | None:
    return build(_NAME, _SOURCE) if _SOURCE.is_file() else None


def extension() -> Any | None:
    """The compiled kernel module, or ``None`` (no compiler or source, build failed, or SHARKREC_NO_EXTENSION=1)."""
    return None if disabled() else _build()


class _PairDots(torch.autograd.Function):
    """(B, F, D) → (B, P) dots of the pairs i < j (or (B, D + P): field 0's vector first), gradient by the kernel."""

    @staticmethod
    def forward(ctx: Any, vectors: Tensor, dense_first: bool) -> Tensor:  # type: ignore[override]
        module = extension()
        assert module is not None
        ctx.save_for_backward(vectors)
        ctx.dense_first = dense_first
        return module.pair_dots(vectors, dense_first)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (vectors,) = ctx.saved_tensors
        module = extension()
        assert module is not None
        return module.pair_dots_backward(grad, vectors, ctx.dense_first), None


def pair_dots(vectors: Tensor, pair_index: Tensor, *, dense_first: bool = False, use_extension: bool = True) -> Tensor:
    """(B, F, D) field vectors → (B, P) dot products ``<v_i, v_j>`` of the pairs i < j, row-major upper-triangle
    order (``pair_index`` = ``i * F + j`` of :func:`torch.triu_indices` (F, F, 1), used by the PyTorch path);
    with ``dense_first``, (B, D + P): field 0's vector (DLRM's dense field), then the dots.

    The kernel runs while training (gradients on, float32 on CPU, outside torch.compile / torch.export); inference
    keeps ``torch.bmm``, so predictions are bit-identical to the serving engine's and to earlier releases.
    """
    if use_extension and vectors.requires_grad and torch.is_grad_enabled() and vectors.dtype == torch.float32 \
            and vectors.device.type == "cpu" and _eager(vectors) and extension() is not None:
        return _PairDots.apply(vectors, dense_first)
    dots = torch.bmm(vectors, vectors.transpose(1, 2))  # (B, F, F)
    pairs = dots.flatten(1).index_select(1, pair_index)  # (B, P)
    return torch.cat([vectors[:, 0], pairs], dim=1) if dense_first else pairs


class _BadIds(Exception):
    """An id outside its table in field ``field`` (nothing was looked up)."""

    def __init__(self, field: int) -> None:
        super().__init__(field)
        self.field = field


def _gather(tables: tuple[Tensor, ...], ids: list[Tensor]) -> Tensor:
    module = extension()
    assert module is not None
    out = torch.empty(ids[0].shape[0], len(tables), tables[0].shape[1])
    bad = int(module.gather_fields([t.detach() for t in tables], ids, out))
    if bad >= 0:
        raise _BadIds(bad)
    return out


class _SingleHotLookup(torch.autograd.Function):
    """S tables' single-hot lookups → (B, S, D); gradients: one sparse COO tensor per table."""

    @staticmethod
    def forward(ctx: Any, ids: list[Tensor], *tables: Tensor) -> Tensor:  # type: ignore[override]
        ctx.ids = ids
        ctx.rows = [int(t.shape[0]) for t in tables]
        return _gather(tables, ids)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        module = extension()
        assert module is not None
        return (None, *module.field_gradients(grad, ctx.ids, ctx.rows))  # any strides: the kernel copies once


def lookup_single_hot(tables: list[Tensor], ids: list[Tensor]) -> tuple[Tensor | None, int] | None:
    """(B, S, D) rows ``tables[f][ids[f]]`` in one kernel pass over S contiguous float32 CPU tables and (B,) int64
    ids, and -1; ``(None, f)`` when field ``f`` holds an id outside its table (nothing was read); ``None`` where the
    kernel does not apply (no extension, other dtypes or devices, tracing). With gradients on, each table receives
    the uncoalesced sparse COO gradient ``F.embedding(ids, table, sparse=True)`` would give it.
    """
    if not tables or any(t.dtype != torch.float32 or t.device.type != "cpu" or not t.is_contiguous() or t.ndim != 2
                         or t.shape[1] != tables[0].shape[1] for t in tables):
        return None
    if any(not i.is_contiguous() or i.device.type != "cpu" or not _eager(i) for i in ids) or extension() is None:
        return None
    try:
        if torch.is_grad_enabled() and any(t.requires_grad for t in tables):
            return _SingleHotLookup.apply(ids, *tables), -1
        return _gather(tuple(tables), ids), -1
    except _BadIds as error:
        return None, error.field


def _eager(tensor: Tensor) -> bool:
    """A plain tensor outside torch.compile / torch.export (whose fake and proxy tensors a kernel cannot read)."""
    if type(tensor) is not Tensor:
        return False
    compiler = torch.compiler
    return not (compiler.is_compiling() or getattr(compiler, "is_exporting", lambda: False)())
