"""One-pass lookup over the packed per-row layout: every row read in its own precision.

At load time the tiers of every kept field are concatenated into four shared pools::

    fp32  (n32, D) float32        fp16  (n16, D) float16
    int8  (n8, 4 + D) uint8       float32 scale, then D int8 codes         (SHARK Table 1 row:
    int4  (n4, 4 + ceil(D/2))     float32 scale, then packed nibbles        header word + payload)

A field's local slot ``s`` (tier-ordered, hottest first, see :mod:`sharkrec.export.tables`) lies in
tier ``t`` when ``ends[f, t-1] <= s < ends[f, t]`` and reads pool row ``s + shift[f, t]``: an affine
map per (field, tier), no per-row remap table. :func:`gather` reads a (B, F) slot matrix into
(B, F, D) float32 in one pass; :meth:`PackedPools.bag` sums one multi-hot field's bags. Both use
the C++ kernel (``csrc/tiered_gather.cpp``, built once with
``torch.utils.cpp_extension`` and cached) when a compiler is available, else :func:`gather_torch`,
the same layout read with PyTorch ops (the tests check both agree). ``SHARKREC_NO_EXTENSION=1``
forces the PyTorch path.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sharkrec.errors import DataError
from sharkrec.export.tables import TIERS, FieldTables
from sharkrec.extensions import build, disabled
from sharkrec.quant import codec
from sharkrec.quant.codec import Precision

_SOURCE = Path(__file__).with_name("csrc") / "tiered_gather.cpp"


@functools.lru_cache(maxsize=1)
def _build() -> Any | None:
    return build("sharkrec_tiered_gather", _SOURCE)


def extension() -> Any | None:
    """The compiled kernel module, or ``None`` (no compiler, build failed, or SHARKREC_NO_EXTENSION=1)."""
    return None if disabled() else _build()


def _header_rows(scale: Tensor, payload: Tensor) -> Tensor:
    """(n,) float32 scales + (n, W) codes → (n, 4 + W) uint8 rows: the scale word, then the codes."""
    return torch.cat([scale.float().contiguous().view(torch.uint8).reshape(-1, 4), payload.view(torch.uint8)], dim=1)


@dataclass(frozen=True)
class PackedPools:
    """The shared pools and per-field tier maps of the single-hot fields (see the module docstring).

    ``ends``, ``shift``: (F, 4) int64; ``fp32`` (n32, D), ``fp16`` (n16, D), ``int8`` (n8, 4 + D) uint8,
    ``int4`` (n4, 4 + ceil(D/2)) uint8 (an empty tier has 0 rows).
    """

    names: tuple[str, ...]
    ends: Tensor
    shift: Tensor
    fp32: Tensor
    fp16: Tensor
    int8: Tensor
    int4: Tensor
    dim: int

    @classmethod
    def build(cls, tables: Sequence[FieldTables], dim: int) -> PackedPools:
        parts: dict[Precision, list[Tensor]] = {tier: [] for tier in TIERS}
        filled = dict.fromkeys(TIERS, 0)
        ends = torch.zeros(len(tables), 4, dtype=torch.int64)
        shift = torch.zeros(len(tables), 4, dtype=torch.int64)
        for f, field in enumerate(tables):
            by_tier = {pool.precision: pool for pool in field.tiers}
            start = 0
            for t, tier in enumerate(TIERS):
                pool = by_tier.get(tier)
                rows = 0 if pool is None else pool.rows
                ends[f, t] = start + rows
                shift[f, t] = filled[tier] - start
                if pool is not None:
                    if tier in (Precision.INT8, Precision.INT4):
                        assert pool.scale is not None
                        parts[tier].append(_header_rows(pool.scale, pool.payload))
                    else:
                        parts[tier].append(pool.payload)
                filled[tier] += rows
                start += rows
        widths = {Precision.FP32: dim, Precision.FP16: dim, Precision.INT8: 4 + dim, Precision.INT4: 4 + (dim + 1) // 2}
        dtypes = {Precision.FP32: torch.float32, Precision.FP16: torch.float16, Precision.INT8: torch.uint8,
                  Precision.INT4: torch.uint8}
        pools = {tier: torch.cat(parts[tier]).contiguous() if parts[tier]
                 else torch.zeros(0, widths[tier], dtype=dtypes[tier]) for tier in TIERS}
        return cls(tuple(t.name for t in tables), ends, shift, pools[Precision.FP32], pools[Precision.FP16],
                   pools[Precision.INT8], pools[Precision.INT4], dim)

    def tensors(self) -> dict[str, Tensor]:
        """The pools and tier maps by name (what :meth:`from_tensors` reads back)."""
        return {"fp32": self.fp32, "fp16": self.fp16, "int8": self.int8, "int4": self.int4, "ends": self.ends,
                "shift": self.shift}

    @classmethod
    def from_tensors(cls, names: Sequence[str], tensors: dict[str, Tensor], dim: int) -> PackedPools:
        """Pools over tensors written by :meth:`tensors` (e.g. mapped from a serving cache file, not copied)."""
        ends, shift = tensors["ends"], tensors["shift"]
        if ends.shape != (len(names), 4) or shift.shape != (len(names), 4):
            raise DataError(f"packed pools hold tier maps of shape {tuple(ends.shape)} for {len(names)} fields")
        return cls(tuple(names), ends, shift, tensors["fp32"], tensors["fp16"], tensors["int8"], tensors["int4"], dim)

    @property
    def nbytes(self) -> int:
        """Bytes of the four pools (payloads and per-row scale words; ends/shift are 64 bytes a field)."""
        return sum(t.numel() * t.element_size() for t in (self.fp32, self.fp16, self.int8, self.int4))

    def gather(self, slots: Tensor, out: Tensor | None = None, columns: Tensor | None = None, *,
               use_extension: bool = True) -> Tensor:
        """(B, F) int64 local slots → (B, F, D) float32; a slot outside its field raises :class:`DataError`.

        ``out``: where to write, (B, C, D) float32 with a contiguous last dimension (a view into a
        larger matrix is fine: the network's field vectors are then filled without a copy); field
        ``f`` goes to column ``columns[f]`` ((F,) int64, default ``0..F-1``).
        """
        slots = slots.contiguous()
        if columns is None:
            columns = torch.arange(slots.shape[1])
        module = extension() if use_extension else None
        if module is None:
            values = self.gather_torch(slots)
            return values if out is None else out.index_copy_(1, columns, values)
        if out is None:
            out = torch.empty(slots.shape[0], slots.shape[1], self.dim)
        bad = module.tiered_gather(slots, self.ends, self.shift, self.fp32, self.fp16, self.int8, self.int4,
                                   self.dim, out, columns)
        if bad >= 0:
            self._raise_bad(bad % slots.shape[1])
        return out

    def select(self, names: Sequence[str]) -> PackedPools:
        """The same pools (shared, not copied) with the tier maps of ``names`` only, in that order."""
        rows = torch.tensor([self.names.index(name) for name in names], dtype=torch.int64)
        return replace(self, names=tuple(names), ends=self.ends.index_select(0, rows).contiguous(),
                       shift=self.shift.index_select(0, rows).contiguous())

    def bag(self, values: Tensor, offsets: Tensor, field: int, out: Tensor | None = None, *,
            weights: Tensor | None = None, use_extension: bool = True) -> Tensor:
        """(B, D) sums of the bags of field ``field``: (nnz,) local slots cut by (B + 1,) ``offsets``, each
        row times its (nnz,) ``weights`` when given (read as a one-column gather, weighed, then summed)."""
        values, offsets = values.long().contiguous(), offsets.long().contiguous()
        if weights is not None:
            sums = self._weighted_bag(values, offsets, weights, field, use_extension)
            return sums if out is None else out.copy_(sums)
        module = extension() if use_extension else None
        if module is None:
            sums = self.bag_torch(values, offsets, field)
            return sums if out is None else out.copy_(sums)
        if out is None:
            out = torch.empty(offsets.shape[0] - 1, self.dim)
        bad = module.tiered_bag(values, offsets, self.ends[field], self.shift[field], self.fp32, self.fp16, self.int8,
                                self.int4, self.dim, out)
        if bad >= 0:
            self._raise_bad(field)
        return out

    def _weighted_bag(self, values: Tensor, offsets: Tensor, weights: Tensor, field: int, use_extension: bool
                      ) -> Tensor:
        if weights.shape != values.shape:
            raise DataError(f"field {self.names[field]!r} has {weights.numel()} bag weights for {values.numel()} ids; "
                            "give one weight per id")
        single = self.select([self.names[field]])
        rows = single.gather(values.unsqueeze(1), use_extension=use_extension).squeeze(1)  # (nnz, D)
        lengths = (offsets[1:] - offsets[:-1]).clamp(min=0)
        owner = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
        start = int(offsets[0]) if offsets.numel() else 0
        picked = slice(start, start + len(owner))
        weighed = rows[picked] * weights[picked].float().unsqueeze(1)
        return torch.zeros(len(lengths), self.dim).index_add_(0, owner, weighed)

    def bag_torch(self, values: Tensor, offsets: Tensor, field: int) -> Tensor:
        """:meth:`bag` with PyTorch ops: the field's rows read as a one-column gather, then summed per bag."""
        if values.numel() and (int(values.min()) < 0 or int(values.max()) >= int(self.ends[field, 3])):
            self._raise_bad(field)
        single = self.select([self.names[field]])
        rows = single.gather_torch(values.unsqueeze(1)).squeeze(1)  # (nnz, D)
        lengths = (offsets[1:] - offsets[:-1]).clamp(min=0)
        owner = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
        return torch.zeros(len(lengths), self.dim).index_add_(0, owner, rows[offsets[0]:offsets[0] + len(owner)])

    def gather_torch(self, slots: Tensor) -> Tensor:
        """The same result as the kernel with PyTorch ops (tier by comparisons, one masked read per tier)."""
        batch, fields = slots.shape
        limits = self.ends[:, 3].unsqueeze(0)  # (1, F)
        outside = (slots < 0) | (slots >= limits)
        if bool(outside.any()):
            self._raise_bad(int(outside.nonzero()[0, 1]))
        tier = (slots.unsqueeze(2) >= self.ends[:, :3].unsqueeze(0)).sum(2)  # (B, F)
        rows = slots + self.shift.unsqueeze(0).expand(batch, -1, -1).gather(2, tier.unsqueeze(2)).squeeze(2)
        out = torch.empty(batch * fields, self.dim)
        flat_tier, flat_rows = tier.reshape(-1), rows.reshape(-1)
        for t, pool in enumerate((self.fp32, self.fp16, self.int8, self.int4)):
            where = (flat_tier == t).nonzero().squeeze(1)
            if where.numel() == 0:
                continue
            stored = pool.index_select(0, flat_rows.index_select(0, where))
            if t < 2:
                values = stored.float()
            else:
                scale = stored[:, :4].reshape(-1).view(torch.float32)  # (n,) the header words
                codes = stored[:, 4:].contiguous()
                values = (codec.dequantize_symmetric(codes.view(torch.int8), scale) if t == 2
                          else codec.dequantize_int4(codes, scale, self.dim))
            out.index_copy_(0, where, values)
        return out.view(batch, fields, self.dim)

    def _raise_bad(self, field: int) -> None:
        raise DataError(f"field {self.names[field]!r} has slots outside 0..{int(self.ends[field, 3]) - 1}; "
                        "encode raw values with the artifact's vocabularies (ServingModel.encode)")
