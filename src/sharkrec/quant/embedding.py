"""Mixed-precision embedding storage: every row lives in exactly one tier (SHARK §3.2, Eq. 5-8).

Per field ``i`` the layer holds separate pools per tier and a row map (all buffers, so the state
dict *is* the tiered storage; there is no fp32 shadow copy of low-precision rows)::

    tier_i        (R,)              int8     tier code of each row (0 fp32, 1 fp16, 2 int8, 3 int4)
    slot_i        (R,)              int32    position of the row in its tier's pool
    fp32_i        (n32, D)          float32
    fp16_i        (n16, D)          float16
    int8_i        (n8, D)           int8     + int8_scale_i (n8,) float32
    int4_i        (n4, ceil(D/2))   uint8    + int4_scale_i (n4,) float32 (two values per byte)

With a policy the layer also holds the Eq. 7 priorities of all fields in one flat ``priority``
(ΣR,) float32 (field i's rows from offset ΣR_<i), ``last_step`` (ΣR,) int32 and a step counter
(training extras, reported separately): one batch then costs one ``unique`` and one lazy update
for all fields together, which the forward pass of the same batch reuses.

Forward: the distinct rows a batch uses (all fields at once) are gathered from their pools and
dequantized into one fp32 block (U, D); field i's slice (U_i, D) is its leaf that requires grad.
Samples index the block (single-hot: one gather for all fields) or sum-pool a field's leaf
(multi-hot, ``embedding_bag``). Gradients therefore cost O(rows touched). :class:`TierOptimizer`
updates those rows in fp32 (SGD or row-wise Adagrad) and writes them back into their tier
(stochastic rounding for int8/int4 from one (N, D) draw per batch, configurable for fp16).

Hot path: reading the block, the optimizer step with the write-back, the batch's distinct rows and
a field's tier migration are each one pass of the C++ kernels in ``csrc/tier_rows.cpp``
(:mod:`sharkrec.quant.kernels`) when they build, else the same algorithm in PyTorch ops, field by
field (``use_extension = False`` or ``SHARKREC_NO_EXTENSION=1`` picks it; ``tests/quant/test_kernels.py``
checks both write the same bytes).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sharkrec import distributed
from sharkrec.data.batch import FieldIds
from sharkrec.errors import ConfigError, DataError
from sharkrec.model.embedding import FieldEmbedding, FloatEmbedding
from sharkrec.quant import codec, kernels
from sharkrec.quant.codec import Precision
from sharkrec.quant.priority import (
    FQuantPolicy,
    current_priority,
    lazy_update,
    tier_counts_for_budget,
    tiers_by_rank,
    tiers_by_threshold,
)

#: slots (U,) of a batch's rows and, per tier present, their positions in the batch (None: all of them)
TierGroups = tuple[Tensor, list[tuple[Precision, Tensor | None]]]

#: the buffers every field holds, in the order the C++ kernels (csrc/tier_rows.cpp) take them
_STORAGE = ("tier", "slot", "fp32", "fp16", "int8", "int8_scale", "int4", "int4_scale")

#: Table 1 of the paper: per-row extra words of the serving layout (precision, dimension, scale)
HEADER_BYTES = {"precision": 1, "dimension": 2, "scale": 4}


@dataclass(frozen=True)
class MemoryReport:
    """Bytes held by a :class:`MixedPrecisionEmbedding`, from the tensors themselves.

    ``embedding_bytes`` = payload + scales + row map (what the layer stores for serving-time
    lookups); ``training_bytes`` = priorities, their step stamps and optimizer state.
    ``held_bytes`` = both, equal to the nbytes of every tensor held. ``table1_bytes`` is the
    paper's serving layout: payload + the Table 1 header (1 + 2 + 4 B) on every row.
    """

    tiers: dict[str, dict[str, int]]  # tier -> {"rows", "payload_bytes", "scale_bytes"}
    row_map_bytes: int
    embedding_bytes: int
    priority_bytes: int
    optimizer_state_bytes: int
    training_bytes: int
    held_bytes: int
    table1_header_bytes: int
    table1_bytes: int
    fp32_bytes: int

    @property
    def fraction_of_fp32(self) -> float:
        return self.embedding_bytes / self.fp32_bytes if self.fp32_bytes else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["fraction_of_fp32"] = self.fraction_of_fp32
        return out


@dataclass(frozen=True)
class _FlatUnique:
    """A batch's distinct rows over all fields: ``rows`` (U,) sorted flat ids, ``inverse`` (Σnnz,) into them."""

    values: tuple[Tensor, ...]  # the batch's id tensors (to recognise the same batch in forward)
    rows: Tensor
    inverse: Tensor


@dataclass(frozen=True)
class _Batch:
    """What a training forward read: field i's rows ``rows[starts[i]:starts[i + 1]]`` (U,) and their values
    (U, D) (field i's leaf in ``touched`` is that slice); ``integer_rows`` (F,): rows in an integer tier
    (``None`` on the PyTorch path)."""

    touched: list[tuple[int, Tensor, Tensor]]
    rows: Tensor
    starts: Tensor
    values: Tensor
    integer_rows: Tensor | None


class _SampleRows(torch.autograd.Function):
    """(B·F, D) rows ``block[index]`` of a (U, D) block whose field slices are the ``leaves``; the backward
    pass sums the incoming (B·F, D) gradient into one (U, D) block (one index_add) and hands each leaf its
    slice, instead of one gather and one scatter per field."""

    @staticmethod
    def forward(ctx: Any, index: Tensor, block: Tensor, *leaves: Tensor) -> Tensor:
        ctx.save_for_backward(index)
        ctx.sizes = [int(leaf.shape[0]) for leaf in leaves]
        return block.index_select(0, index)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        (index,) = ctx.saved_tensors
        summed = grad.new_zeros(sum(ctx.sizes), grad.shape[1]).index_add_(0, index, grad)
        return None, None, *torch.split(summed, ctx.sizes)


def _nbytes(tensor: Tensor) -> int:
    return tensor.numel() * tensor.element_size()


class MixedPrecisionEmbedding(FieldEmbedding):
    """Row-wise mixed-precision tables; a drop-in :class:`FieldEmbedding` (kind ``"mixed"``).

    Build it with :meth:`from_float`. Without a policy the tiers are fixed (fp16 / int8 everywhere);
    with an :class:`FQuantPolicy` rows are scored by Eq. 7 in :meth:`observe_batch` and moved
    between tiers by Eq. 8 every ``policy.recheck_every`` batches.

    Args:
        field_rows: rows per sparse field, in field order.
        embedding_dim: D.
        policy: how priorities and tiers evolve during training; ``None`` keeps tiers fixed.
        initial: tier of every row at construction.
        stochastic_int: stochastic rounding when writing int8/int4 rows (default on).
        stochastic_fp16: stochastic rounding when writing fp16 rows (default round-to-nearest).
        check_ids: raise :class:`DataError` for ids outside a field's rows.
    """

    kind: ClassVar[str] = "mixed"

    def __init__(self, field_rows: Mapping[str, int], embedding_dim: int, *, policy: FQuantPolicy | None = None,
                 initial: Precision | str = Precision.INT8, stochastic_int: bool = True,
                 stochastic_fp16: bool = False, check_ids: bool = True) -> None:
        super().__init__()
        if embedding_dim < 1:
            raise ConfigError(f"embedding_dim is {embedding_dim}; use 1 or more")
        for name, rows in field_rows.items():
            if int(rows) < 1:
                raise ConfigError(f"field {name!r} has {rows} rows; every table needs at least 1 row")
        self.field_names = tuple(field_rows)
        self.embedding_dim = int(embedding_dim)
        self.policy = policy
        self.stochastic_int = bool(stochastic_int)
        self.stochastic_fp16 = bool(stochastic_fp16)
        self.check_ids = bool(check_ids)
        self.rows_moved = 0  # rows that changed tier since construction (not saved)
        self._touched: list[tuple[int, Tensor, Tensor]] = []  # (field, rows (U,), leaf (U, D)) of the last forward
        self._groups: dict[int, TierGroups] = {}  # per field: where the last forward's rows live (for the step)
        self._unique: _FlatUnique | None = None  # distinct rows of the observed batch, for its forward pass
        self._batch: _Batch | None = None  # what the last training forward read (for TierOptimizer's fused step)
        #: read and write rows with the C++ kernels when they build (False: the PyTorch path, e.g. to compare)
        self.use_extension = True
        self._optimizer_ref: weakref.ref[TierOptimizer] | None = None
        #: optional draws for stochastic rounding: ``row_noise(field, rows (U,), D, purpose)`` → (U, D) uniform
        #: [0, 1), purpose 0 = an optimizer write, 1 = a tier move; ``None``: torch's global generator. A keyed
        #: function of the row (sharkrec.train.sharded_fq) makes the draws independent of where the row lives.
        self.row_noise: Any = None
        start = Precision.parse(initial)
        d, half = self.embedding_dim, (self.embedding_dim + 1) // 2
        for i, rows in enumerate(int(r) for r in field_rows.values()):
            counts = {t: (rows if t is start else 0) for t in Precision}
            self.register_buffer(f"tier_{i}", torch.full((rows,), start.code, dtype=torch.int8))
            self.register_buffer(f"slot_{i}", torch.arange(rows, dtype=torch.int32))
            self.register_buffer(f"fp32_{i}", torch.zeros(counts[Precision.FP32], d))
            self.register_buffer(f"fp16_{i}", torch.zeros(counts[Precision.FP16], d, dtype=torch.float16))
            self.register_buffer(f"int8_{i}", torch.zeros(counts[Precision.INT8], d, dtype=torch.int8))
            self.register_buffer(f"int8_scale_{i}", torch.zeros(counts[Precision.INT8]))
            self.register_buffer(f"int4_{i}", torch.full((counts[Precision.INT4], half), 0x88, dtype=torch.uint8))
            self.register_buffer(f"int4_scale_{i}", torch.zeros(counts[Precision.INT4]))
        total_rows = sum(int(r) for r in field_rows.values())
        self._row_bases = [0]  # field i's rows start at _row_bases[i] in the flat priority vector
        for rows in field_rows.values():
            self._row_bases.append(self._row_bases[-1] + int(rows))
        self._row_base_tensor = torch.tensor(self._row_bases)  # (F + 1,) the same, for the per-batch searches
        if policy is not None:
            self.register_buffer("priority", torch.zeros(total_rows))
            self.register_buffer("last_step", torch.zeros(total_rows, dtype=torch.int32))
            self.register_buffer("step", torch.zeros((), dtype=torch.int64))

    # ---------------------------------------------------------------- build / save
    @classmethod
    def from_float(cls, embedding: FloatEmbedding, plan: Precision | str | Mapping[str, Tensor] = Precision.INT8,
                   policy: FQuantPolicy | None = None, **options: Any) -> MixedPrecisionEmbedding:
        """Quantize a float embedding row by row (TorchRec's ``from_float``).

        ``plan`` is one precision for every row, or per field a (R,) tensor of tier codes
        (:attr:`Precision.code`). ``options`` go to the constructor (rounding, check_ids).
        """
        rows = embedding.num_rows()
        module = cls(rows, embedding.embedding_dim, policy=policy, check_ids=embedding.check_ids,
                     initial=Precision.FP32, **options)
        with torch.no_grad():
            for i, name in enumerate(embedding.field_names):
                module._buffers[f"fp32_{i}"] = embedding.table(name).detach().float().clone()
                if isinstance(plan, Mapping):
                    if name not in plan or tuple(plan[name].shape) != (rows[name],):
                        raise ConfigError(f"the plan has no ({rows[name]},) tier codes for field {name!r}; "
                                          "give one code per row of every field")
                    codes = plan[name].to(torch.int8)
                else:
                    codes = torch.full((rows[name],), Precision.parse(plan).code, dtype=torch.int8)
                module.set_tiers(i, codes)
        module.rows_moved = 0
        return module

    def row_storage(self, field_name: str) -> tuple[Tensor, dict[Any, tuple[Tensor, Tensor | None, Tensor]]]:
        """(R,) tier codes and per tier (pool, scale or None, (R,) slot of each row) of one field (for export)."""
        if field_name not in self.field_names:
            raise ConfigError(f"field {field_name!r} has no tables; known fields: {', '.join(self.field_names)}")
        field = self.field_names.index(field_name)
        buffers = dict(self.named_buffers())
        slots = buffers[f"slot_{field}"].long()
        pools = {tier: (buffers[f"{tier.value}_{field}"], buffers.get(f"{tier.value}_scale_{field}"), slots)
                 for tier in Precision}
        return buffers[f"tier_{field}"].clone(), pools

    def to_float(self) -> FloatEmbedding:
        """An fp32 :class:`FloatEmbedding` holding the dequantized rows (for comparison)."""
        return FloatEmbedding.from_tables({name: self.read_rows(i, torch.arange(rows))
                                           for i, (name, rows) in enumerate(self.num_rows().items())},
                                          check_ids=self.check_ids)

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "field_rows": self.num_rows(), "embedding_dim": self.embedding_dim,
                "policy": None if self.policy is None else self.policy.to_dict(),
                "stochastic_int": self.stochastic_int, "stochastic_fp16": self.stochastic_fp16,
                "check_ids": self.check_ids}

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> MixedPrecisionEmbedding:
        policy = spec.get("policy")
        return cls(dict(spec["field_rows"]), int(spec["embedding_dim"]),
                   policy=None if policy is None else FQuantPolicy.from_dict(policy),
                   stochastic_int=bool(spec.get("stochastic_int", True)),
                   stochastic_fp16=bool(spec.get("stochastic_fp16", False)),
                   check_ids=bool(spec.get("check_ids", True)))

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # pools change size when rows migrate: take the saved shapes before copying
        for name, buffer in list(self._buffers.items()):
            saved = state_dict.get(prefix + name)
            if buffer is not None and isinstance(saved, Tensor) and saved.shape != buffer.shape:
                self._buffers[name] = torch.empty(saved.shape, dtype=buffer.dtype)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ---------------------------------------------------------------- row storage
    def _buffer(self, name: str) -> Tensor:
        buffer = self._buffers[name]
        assert buffer is not None
        return buffer

    def tier_groups(self, field: int, rows: Tensor) -> TierGroups:
        """Slots (U,) int64 of ``rows`` (U,) and, per tier present, the positions (or ``None``: all)."""
        tiers = self._buffer(f"tier_{field}").index_select(0, rows)
        slots = self._buffer(f"slot_{field}").index_select(0, rows).long()
        counts = torch.bincount(tiers.long(), minlength=len(Precision)).tolist()
        present = [code for code, count in enumerate(counts) if count]
        if len(present) == 1:
            return slots, [(Precision.from_code(present[0]), None)]
        order = torch.argsort(tiers)
        groups: list[tuple[Precision, Tensor | None]] = []
        start = 0
        for code in present:
            groups.append((Precision.from_code(code), order[start:start + counts[code]]))
            start += counts[code]
        return slots, groups

    def read_rows(self, field: int, rows: Tensor, groups: TierGroups | None = None) -> Tensor:
        """(U, D) float32 values of ``rows`` (U,) of field ``field``, dequantized from their tiers."""
        slots, by_tier = groups if groups is not None else self.tier_groups(field, rows)
        if len(by_tier) == 1:
            return self._decode(field, by_tier[0][0], slots)
        out = torch.empty(rows.shape[0], self.embedding_dim)
        for tier, where in by_tier:
            assert where is not None
            out.index_copy_(0, where, self._decode(field, tier, slots.index_select(0, where)))
        return out

    def write_rows(self, field: int, rows: Tensor, values: Tensor, groups: TierGroups | None = None,
                   noise: Tensor | None = None) -> None:
        """Store (U, D) float32 ``values`` into ``rows`` (U,) of field ``field``, each in its own tier.

        ``groups``: :meth:`tier_groups` of ``rows`` if the caller has them (valid until tiers change).
        ``noise``: (U, D) uniform draws for the stochastic rounding of the integer-tier rows (default: drawn
        here, from :attr:`row_noise` or torch's global generator).
        """
        slots, by_tier = groups if groups is not None else self.tier_groups(field, rows)
        for tier, where in by_tier:
            tier_values = values if where is None else values.index_select(0, where)
            tier_slots = slots if where is None else slots.index_select(0, where)
            keyed = None  # the rows' ids, only when keyed rounding draws need them (not on the plain hot path)
            if self.row_noise is not None:
                keyed = rows if where is None else rows.index_select(0, where)
            tier_noise = None
            if noise is not None and tier.max_level:
                tier_noise = noise if where is None else noise.index_select(0, where)
            payload, scales = self._encode(tier, tier_values, field, keyed, noise=tier_noise)
            self._buffer(f"{tier.value}_{field}").index_copy_(0, tier_slots, payload)
            if scales is not None:
                self._buffer(f"{tier.value}_scale_{field}").index_copy_(0, tier_slots, scales)

    def _decode(self, field: int, tier: Precision, slots: Tensor) -> Tensor:
        payload = self._buffer(f"{tier.value}_{field}").index_select(0, slots)
        if tier is Precision.FP32:
            return payload
        if tier is Precision.FP16:
            return payload.float()
        scales = self._buffer(f"{tier.value}_scale_{field}").index_select(0, slots)
        if tier is Precision.INT8:
            return codec.dequantize_symmetric(payload, scales)
        return codec.dequantize_int4(payload, scales, self.embedding_dim)

    def _encode(self, tier: Precision, values: Tensor, field: int = 0, rows: Tensor | None = None,
                purpose: int = 0, noise: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        if tier is Precision.FP32:
            return values.float(), None
        stochastic = self.stochastic_fp16 if tier is Precision.FP16 else self.stochastic_int
        if stochastic and noise is None and self.row_noise is not None and rows is not None:
            noise = self.row_noise(field, rows, values.shape[1], purpose)
        if tier is Precision.FP16:
            return codec.to_fp16(values, stochastic, noise), None
        if tier is Precision.INT8:
            return codec.quantize_int8(values, stochastic, noise)
        return codec.quantize_int4(values, stochastic, noise)

    @torch.no_grad()
    def set_tiers(self, field: int, codes: Tensor) -> int:
        """Move the rows of field ``field`` to the tiers ``codes`` (R,) int8; returns rows moved.

        Rows that keep their tier keep their stored bytes; a row that changes tier is re-encoded
        from its current (dequantized) value, the moved rows that land in an integer tier rounded with one
        (M, D) draw in row order (:attr:`row_noise` purpose 1, else torch's generator). Pools are rebuilt in
        row order: O(R·D), one C++ pass when the kernels build.
        """
        self._groups.clear()  # slots change: cached tier groups of the last forward are stale
        self._batch = None  # and so are its integer-row counts: a step after this one goes field by field
        old_tiers = self._buffer(f"tier_{field}")
        codes = codes.to(torch.int8).contiguous()
        changed = codes != old_tiers
        moved_rows = int(changed.sum())
        if moved_rows == 0:
            return 0
        self.rows_moved += moved_rows
        into_integer = changed & (codes >= Precision.INT8.code)  # (R,) moved rows that are rounded
        noise = None
        if self.stochastic_int and bool(into_integer.any()):
            moved_integer = into_integer.nonzero().squeeze(1)
            noise = (self.row_noise(field, moved_integer, self.embedding_dim, 1) if self.row_noise is not None
                     else torch.rand(moved_integer.shape[0], self.embedding_dim))  # (M, D)
        module = self._kernels()
        if module is not None and not self.stochastic_fp16:
            storage = [self._buffer(f"{kind}_{field}") for kind in _STORAGE]
            rebuilt = module.migrate_field(*storage, codes, _NO_NOISE if noise is None else noise.float().contiguous(),
                                           noise is not None, self.embedding_dim)
            for kind, tensor in zip(_STORAGE[1:], rebuilt, strict=True):
                self._buffers[f"{kind}_{field}"] = tensor
            self._buffers[f"tier_{field}"] = codes.clone()
            return moved_rows
        noise_row = torch.cumsum(into_integer, 0) - 1  # (R,) the noise row of each moved integer row
        old_slots = self._buffer(f"slot_{field}").long()
        new_slots = torch.empty_like(old_slots)
        pools: dict[str, Tensor] = {}
        for tier in Precision:
            members = (codes == tier.code).nonzero().squeeze(1)  # (n_t,) row ids
            new_slots[members] = torch.arange(members.shape[0])
            payload = self._buffer(f"{tier.value}_{field}")
            scales = self._buffers.get(f"{tier.value}_scale_{field}")
            kept = members[~changed[members]]
            moved = members[changed[members]]
            new_payload = payload.new_empty((members.shape[0], *payload.shape[1:]))
            position_kept = (~changed[members]).nonzero().squeeze(1)
            position_moved = changed[members].nonzero().squeeze(1)
            new_payload[position_kept] = payload.index_select(0, old_slots[kept])
            tier_noise = None if noise is None or not tier.max_level else noise.index_select(0, noise_row[moved])
            encoded, encoded_scales = self._encode(tier, self.read_rows(field, moved), field, moved, purpose=1,
                                                   noise=tier_noise)
            new_payload[position_moved] = encoded
            pools[f"{tier.value}_{field}"] = new_payload
            if scales is not None:
                new_scales = scales.new_empty(members.shape[0])
                new_scales[position_kept] = scales.index_select(0, old_slots[kept])
                if encoded_scales is not None:
                    new_scales[position_moved] = encoded_scales
                pools[f"{tier.value}_scale_{field}"] = new_scales
        self._buffers.update(pools)
        self._buffers[f"tier_{field}"] = codes.clone()
        self._buffers[f"slot_{field}"] = new_slots.to(torch.int32)
        return moved_rows

    def tier_of_rows(self) -> dict[str, Tensor]:
        """Per field the (R,) int8 tier codes (a copy: the current precision plan)."""
        return {name: self._buffer(f"tier_{i}").clone() for i, name in enumerate(self.field_names)}

    # ---------------------------------------------------------------- priorities (Eq. 7-8)
    def priorities(self) -> list[Tensor]:
        """Per field (R,) float32 priorities after the batches seen so far (lazy decay applied)."""
        if self.policy is None:
            raise ConfigError("this embedding has no priority policy; build it with an FQuantPolicy")
        flat = current_priority(self._buffer("priority"), self._buffer("last_step"), int(self._buffer("step")),
                                self.policy.keep)
        return list(torch.split(flat, list(self.num_rows().values())))

    def set_priorities(self, values: Sequence[Tensor]) -> None:
        """Replace every row's priority (e.g. a warm start from data counts) as of the current step."""
        if self.policy is None:
            raise ConfigError("this embedding has no priority policy; build it with an FQuantPolicy")
        self._buffer("priority").copy_(torch.cat([v.float() for v in values]))
        self._buffer("last_step").fill_(int(self._buffer("step")))

    @torch.no_grad()
    def observe_batch(self, sparse: Sequence[FieldIds], labels: Tensor) -> None:
        """Eq. 7 for the rows this batch uses (lazy decay), then Eq. 8 every ``recheck_every`` batches.

        A sample is positive when any task label is 1. ``labels``: (B, T).
        """
        if self.policy is None:
            return
        step_buffer = self._buffer("step")
        step_buffer += 1
        step = int(step_buffer)
        positive = (labels > 0.5).any(dim=1)  # (B,)
        self._check_field_count(sparse)
        seen = self._flat_unique(sparse)  # (U,) rows of all fields, (Σnnz,) inverse; ids checked
        rows, inverse = seen.rows, seen.inverse
        single_hot = all(ids.offsets is None for ids in sparse)
        if single_hot:  # value k of the field-major batch belongs to sample k mod B
            flags = positive  # (B,)
        else:
            flags = torch.cat([positive if ids.offsets is None else
                               torch.repeat_interleave(positive, ids.offsets[1:] - ids.offsets[:-1]) for ids in sparse])
        module = self._kernels()
        if module is not None and not distributed.is_distributed():  # the weights and Eq. 7 in one pass
            module.observe_rows(self._buffer("priority"), self._buffer("last_step"), rows, inverse, flags,
                                float(self.policy.alpha), step, float(self.policy.keep), float(self.policy.gain))
        else:
            if single_hot:
                flags = positive.repeat(len(sparse))  # (F·B,) the sample of every value, field-major
            per_value = torch.where(flags, float(self.policy.alpha), 1.0).float()
            weights = torch.zeros(rows.shape[0]).index_add_(0, inverse, per_value)  # α·c⁺ + c⁻ per row
            counted_rows, counted = rows, weights
            if distributed.is_distributed():  # torchrun: counts of the global batch, so every rank holds the same tiers
                counted_rows, counted = distributed.sum_rows(rows, weights)
            lazy_update(self._buffer("priority"), self._buffer("last_step"), counted_rows, counted, step,
                        self.policy.keep, self.policy.gain)
        self._unique = seen  # for the same batch's forward
        if step % self.policy.recheck_every == 0:
            self.retier()

    @torch.no_grad()
    def retier(self) -> int:
        """Assign every row its Eq. 8 tier from the current priorities and migrate; returns rows moved."""
        policy = self.policy
        if policy is None:
            return 0
        priorities = self.priorities()
        if policy.memory_budget is None and policy.tier_fractions is None:
            codes = [tiers_by_threshold(p, policy) for p in priorities]
        else:
            counts = tier_counts_for_budget(sum(self.num_rows().values()), self.embedding_dim, policy)
            codes = tiers_by_rank(priorities, counts)
        return sum(self.set_tiers(i, c) for i, c in enumerate(codes))

    # ---------------------------------------------------------------- lookup
    def forward(self, sparse: Sequence[FieldIds]) -> Tensor:
        """(B, F, D) field vectors; see :meth:`FieldEmbedding.forward`.

        All fields' rows are read in one pass (the C++ kernel, else field by field with PyTorch ops) into
        one (U, D) block; field ``i``'s leaf is its slice (U_i, D), so gradients stay per field.
        """
        self._check_field_count(sparse)
        record = torch.is_grad_enabled() and self.training
        self._touched = []
        self._groups = {}
        self._batch = None
        seen, self._unique = self._unique, None
        if seen is None or len(seen.values) != len(sparse) or any(
                a is not ids.values for a, ids in zip(seen.values, sparse, strict=True)):
            seen = self._flat_unique(sparse)  # checks the ids (observe_batch did for its batch)
        rows_per_field = torch.searchsorted(seen.rows, self._row_base_tensor)  # (F + 1,) block starts
        starts = rows_per_field.tolist()
        counts = rows_per_field.diff()  # (F,) unique rows per field
        bases = self._row_base_tensor[:-1]
        total = int(seen.rows.shape[0])
        local = seen.rows - torch.repeat_interleave(bases, counts, output_size=total)  # (U,) row ids per field
        values = torch.empty(total, self.embedding_dim)  # (U, D) float32
        module = self._kernels()
        integer_rows = None
        if module is not None:
            integer_rows = module.gather_rows(local, rows_per_field, *self._storage_lists(), self.embedding_dim,
                                              values)  # (F,) rows in an integer tier
        leaves = []
        for i in range(len(sparse)):
            rows, leaf = local[starts[i]:starts[i + 1]], values[starts[i]:starts[i + 1]]
            if module is None:
                groups = self.tier_groups(i, rows)
                leaf.copy_(self.read_rows(i, rows, groups))
                if record:
                    self._groups[i] = groups
            if record:
                leaf.requires_grad_(True)
                self._touched.append((i, rows, leaf))
            leaves.append(leaf)
        if record:
            self._batch = _Batch(self._touched, local, rows_per_field, values, integer_rows)
        batch_size = sparse[0].batch_size() if sparse else 0
        if all(ids.offsets is None and ids.values.shape[0] == batch_size for ids in sparse):
            # single-hot: one gather of all (B, F) rows from the block, one scatter back in the backward pass
            sample_major = seen.inverse.view(len(sparse), batch_size).t().reshape(-1)  # (B·F,) into the block
            return _SampleRows.apply(sample_major, values, *leaves).view(batch_size, len(sparse), self.embedding_dim)
        lengths = torch.tensor([int(ids.values.shape[0]) for ids in sparse])
        inverse = seen.inverse - torch.repeat_interleave(rows_per_field[:-1], lengths,
                                                         output_size=seen.inverse.shape[0])  # (Σnnz,) per field
        value_starts = [0, *torch.cumsum(lengths, 0).tolist()]
        vectors = []
        for i, ids in enumerate(sparse):
            leaf = leaves[i]
            field_inverse = inverse[value_starts[i]:value_starts[i + 1]]  # (nnz,) positions in the leaf
            if ids.offsets is None:
                vectors.append(leaf.index_select(0, field_inverse))  # (B, D)
            else:
                vectors.append(F.embedding_bag(field_inverse, leaf, ids.offsets, mode="sum", include_last_offset=True,
                                               per_sample_weights=ids.weights))  # (B, D)
        return torch.stack(vectors, dim=1)  # (B, F, D)

    def _flat_unique(self, sparse: Sequence[FieldIds]) -> _FlatUnique:
        """The batch's distinct rows in the flat row space of all fields (field i's from ``_row_bases[i]``);
        raises :class:`DataError` for an id outside its field (with ``check_ids``; the kernel always checks,
        in the same pass that flattens the ids and finds the distinct rows)."""
        module = self._kernels()
        if module is not None:
            rows, inverse, bad = module.flat_unique_fields([ids.values.long().contiguous() for ids in sparse],
                                                           self._row_bases)
            if int(bad) >= 0:
                self._raise_bad_ids(int(bad))
            return _FlatUnique(tuple(ids.values for ids in sparse), rows, inverse)
        local = torch.cat([ids.values for ids in sparse]).long()  # (Σnnz,) field-major
        lengths = torch.tensor([int(ids.values.shape[0]) for ids in sparse])
        if self.check_ids and local.numel():
            limits = self._row_base_tensor.diff()  # (F,) rows per field
            bad = (local < 0) | (local >= torch.repeat_interleave(limits, lengths, output_size=local.shape[0]))
            if bool(bad.any()):  # one host synchronisation for all fields
                first = int(bad.nonzero()[0, 0])
                self._raise_bad_ids(int(torch.searchsorted(lengths.cumsum(0), torch.tensor(first), right=True)))
        flat = local + torch.repeat_interleave(self._row_base_tensor[:-1], lengths, output_size=local.shape[0])
        rows, inverse = torch.unique(flat, return_inverse=True)
        return _FlatUnique(tuple(ids.values for ids in sparse), rows, inverse)

    def _raise_bad_ids(self, field: int) -> None:
        rows = self._row_bases[field + 1] - self._row_bases[field]
        raise DataError(f"field {self.field_names[field]!r} has ids outside 0..{rows - 1}; encode the data with the "
                        "vocabulary the model was built with")

    def _kernels(self) -> Any | None:
        """The compiled kernels when this layer may use them (see :attr:`use_extension`), else ``None``."""
        return kernels.extension() if self.use_extension else None

    def _storage_lists(self) -> list[list[Tensor]]:
        """Per buffer kind of :data:`_STORAGE`, every field's tensor (the kernels' storage arguments)."""
        names = self.__dict__.get("_storage_names")
        if names is None or len(names[0]) != self.num_fields:  # the names once per layer: formatting them cost more
            names = [[f"{kind}_{i}" for i in range(self.num_fields)] for kind in _STORAGE]
            self.__dict__["_storage_names"] = names
        buffers = self._buffers
        return [[buffers[name] for name in kind] for kind in names]  # type: ignore[misc]

    @torch.no_grad()
    def sync_gradients(self, world: int) -> None:
        """Under torchrun: the rows every rank read in its last forward pass, each with its mean gradient over
        the ranks, all fields in one gather; every rank then updates the same union of rows."""
        if world <= 1:
            return
        bases = self._row_bases  # field i's rows start at bases[i] of the flat row space
        rows = [torch.zeros(0, dtype=torch.int64)]
        grads = [torch.zeros(0, self.embedding_dim)]
        for field, field_rows, leaf in self._touched:
            rows.append(field_rows.long() + bases[field])
            grads.append(leaf.grad if leaf.grad is not None else torch.zeros_like(leaf))
        all_rows, summed = distributed.sum_rows(torch.cat(rows), torch.cat(grads))
        starts = torch.searchsorted(all_rows, torch.tensor(bases)).tolist()
        merged = []
        for field in range(self.num_fields):
            field_rows = all_rows[starts[field]:starts[field + 1]] - bases[field]
            if field_rows.numel() == 0:
                continue
            groups = self.tier_groups(field, field_rows)
            values = self.read_rows(field, field_rows, groups)  # (U, D): identical on every rank
            values.grad = summed[starts[field]:starts[field + 1]] / world
            self._groups[field] = groups
            merged.append((field, field_rows, values))
        self._touched = merged

    def _check_field_count(self, sparse: Sequence[FieldIds]) -> None:
        if len(sparse) != self.num_fields:
            raise DataError(f"the batch has {len(sparse)} sparse fields but the embedding has {self.num_fields} "
                            f"({', '.join(self.field_names)}); build the batch with the model's schema")

    # ---------------------------------------------------------------- training
    def make_sparse_optimizer(self, kind: str, lr: float) -> TierOptimizer:
        optimizer = TierOptimizer(self, kind, lr)
        self._optimizer_ref = weakref.ref(optimizer)
        return optimizer

    def sparse_parameters(self) -> list[nn.Parameter]:
        return []

    # ---------------------------------------------------------------- accounting
    def num_rows(self) -> dict[str, int]:
        return {name: int(self._buffer(f"tier_{i}").shape[0]) for i, name in enumerate(self.field_names)}

    def memory_report(self) -> MemoryReport:
        """Bytes per tier, row map and training extras, all from the tensors held."""
        tiers: dict[str, dict[str, int]] = {}
        for tier in Precision:
            payload = [self._buffer(f"{tier.value}_{i}") for i in range(self.num_fields)]
            scales = [self._buffers.get(f"{tier.value}_scale_{i}") for i in range(self.num_fields)]
            tiers[tier.value] = {"rows": sum(int(p.shape[0]) for p in payload),
                                 "payload_bytes": sum(_nbytes(p) for p in payload),
                                 "scale_bytes": sum(_nbytes(s) for s in scales if s is not None)}
        row_map = sum(_nbytes(self._buffer(f"{kind}_{i}")) for kind in ("tier", "slot") for i in range(self.num_fields))
        embedding = row_map + sum(t["payload_bytes"] + t["scale_bytes"] for t in tiers.values())
        priority = 0
        if self.policy is not None:
            priority = sum(_nbytes(self._buffer(name)) for name in ("priority", "last_step", "step"))
        optimizer = self._optimizer_ref() if self._optimizer_ref is not None else None
        optimizer_bytes = optimizer.state_bytes() if optimizer is not None else 0
        total_rows = sum(self.num_rows().values())
        header = total_rows * sum(HEADER_BYTES.values())
        payload_total = sum(t["payload_bytes"] for t in tiers.values())
        return MemoryReport(tiers=tiers, row_map_bytes=row_map, embedding_bytes=embedding, priority_bytes=priority,
                            optimizer_state_bytes=optimizer_bytes, training_bytes=priority + optimizer_bytes,
                            held_bytes=embedding + priority + optimizer_bytes, table1_header_bytes=header,
                            table1_bytes=payload_total + header, fp32_bytes=total_rows * self.embedding_dim * 4)

    def embedding_bytes(self) -> int:
        return self.memory_report().embedding_bytes

    def extra_repr(self) -> str:
        counts = {t: v["rows"] for t, v in self.memory_report().tiers.items() if v["rows"]}
        return f"fields={self.num_fields}, dim={self.embedding_dim}, rows_per_tier={counts}"


class TierOptimizer(torch.optim.Optimizer):
    """Updates the rows the last forward pass touched, in fp32, and writes them back to their tiers.

    After this layer's own forward pass every field is stepped in one kernel call (:meth:`_step_batch`);
    rows gathered elsewhere (sharded training), keyed rounding draws (:attr:`MixedPrecisionEmbedding.row_noise`),
    stochastic fp16 or a subclass's own write rule (ALPT) are stepped field by field.

    ``sgd``: ``e_r ← e_r − lr·g_r``. ``adagrad`` (row-wise, as :class:`RowWiseAdagrad`):
    ``G_r += mean(g_r²)``; ``e_r ← e_r − lr·g_r / (sqrt(G_r) + eps)`` with G (R,) float32 per field,
    indexed by row id (so it survives tier migrations) and saved in :meth:`state_dict`.
    """

    KINDS = ("sgd", "adagrad")

    def __init__(self, embedding: MixedPrecisionEmbedding, kind: str, lr: float, eps: float = 1e-8) -> None:
        if kind not in self.KINDS:
            raise ConfigError(f"mixed-precision embeddings train with optimizer sgd or adagrad, not {kind!r}; "
                              "use --optimizer adagrad")
        if not (lr > 0 and math.isfinite(lr)):
            raise ConfigError(f"learning rate {lr} must be positive")
        self._anchor = torch.zeros(0)  # torch optimizers need one tensor; state hangs off it
        super().__init__([self._anchor], {"lr": lr, "eps": eps, "kind": kind})
        self.embedding = embedding
        if kind == "adagrad":
            state = self.state[self._anchor]
            for i, rows in enumerate(embedding.num_rows().values()):
                state[f"sum_{i}"] = torch.zeros(rows)

    def state_bytes(self) -> int:
        return sum(_nbytes(v) for v in self.state[self._anchor].values() if isinstance(v, Tensor))

    def zero_grad(self, set_to_none: bool = True) -> None:
        for _, _, leaf in self.embedding._touched:
            leaf.grad = None

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        embedding = self.embedding
        batch = embedding._batch
        if batch is not None and batch.touched is embedding._touched and self._steps_whole_batch():
            self._step_batch(batch)
        else:  # a subclass's own write rule, keyed rounding draws or rows gathered elsewhere: field by field
            for field, rows, leaf in embedding._touched:
                if leaf.grad is not None:
                    self._store(field, rows, self._updated(field, rows, leaf.detach(), leaf.grad), leaf.grad)
        embedding._touched = []
        embedding._batch = None

    def _steps_whole_batch(self) -> bool:
        """The batch step applies: the plain write rule, integer rounding drawn from torch's generator and
        fp16 rounded to nearest (the kernel's rules)."""
        embedding = self.embedding
        return (type(self)._store is TierOptimizer._store and embedding.row_noise is None
                and type(embedding).write_rows is MixedPrecisionEmbedding.write_rows
                and not embedding.stochastic_fp16)

    def _updated(self, field: int, rows: Tensor, values: Tensor, grad: Tensor) -> Tensor:
        """(U, D) rows after one SGD / row-wise Adagrad step (accumulators of ``rows`` updated in place)."""
        group = self.param_groups[0]
        if group["kind"] != "adagrad":
            return values - group["lr"] * grad
        sums = self.state[self._anchor][f"sum_{field}"]
        accumulator = sums.index_select(0, rows) + grad.pow(2).mean(1)
        sums.index_copy_(0, rows, accumulator)
        return values - group["lr"] * (grad / (accumulator.sqrt().unsqueeze(1) + group["eps"]))

    def _step_batch(self, batch: _Batch) -> None:
        """Every field's step in one pass: one (N, D) draw of rounding noise for the N integer-tier rows with
        a gradient (in row order), then the C++ kernel, else the same algorithm field by field."""
        embedding = self.embedding
        group = self.param_groups[0]
        dim = embedding.embedding_dim
        grads: list[Tensor | None] = [None] * embedding.num_fields
        for field, _, leaf in batch.touched:
            grads[field] = leaf.grad
        module = embedding._kernels()
        if module is None or batch.integer_rows is None:
            self._step_batch_torch(batch, grads)
            return
        noise = _NO_NOISE
        if embedding.stochastic_int:
            per_field = batch.integer_rows.tolist()
            needed = sum(n for n, grad in zip(per_field, grads, strict=True) if grad is not None)
            noise = torch.rand(needed, dim) if needed else _NO_NOISE
        state = self.state[self._anchor]
        accumulators = [state[f"sum_{i}"] for i in range(embedding.num_fields)] if group["kind"] == "adagrad" else []
        module.step_rows(batch.rows, batch.starts, batch.values, [_NO_NOISE if g is None else g for g in grads],
                         accumulators, float(group["lr"]), float(group["eps"]), noise, embedding.stochastic_int,
                         *embedding._storage_lists(), dim)

    def _step_batch_torch(self, batch: _Batch, grads: list[Tensor | None]) -> None:
        """:meth:`_step_batch` with PyTorch ops (the same noise rows, the same arithmetic)."""
        embedding = self.embedding
        dim = embedding.embedding_dim
        integer = []  # per field with a gradient: (U_i,) bool, the row is in an integer tier
        for field, rows, _ in batch.touched:
            if grads[field] is not None:
                integer.append(embedding._buffer(f"tier_{field}").index_select(0, rows) >= Precision.INT8.code)
        needed = int(sum(int(m.sum()) for m in integer))
        noise = torch.rand(needed, dim) if embedding.stochastic_int and needed else None
        used = 0
        masks = iter(integer)
        for field, rows, leaf in batch.touched:
            grad = grads[field]
            if grad is None:
                continue
            mask = next(masks)
            row_noise = None
            if noise is not None:
                count = int(mask.sum())
                row_noise = torch.zeros(rows.shape[0], dim)
                row_noise[mask] = noise[used:used + count]
                used += count
            values = self._updated(field, rows, leaf.detach(), grad)
            embedding.write_rows(field, rows, values, embedding._groups.get(field), noise=row_noise)

    def _store(self, field: int, rows: Tensor, values: Tensor, grad: Tensor) -> None:
        """Write the updated fp32 rows (U, D) back into their tiers; ``grad`` (U, D) is dL/d(row)."""
        self.embedding.write_rows(field, rows, values, self.embedding._groups.get(field))


_NO_NOISE = torch.zeros(0, 0)
