"""F-Quantization *during training* on tables sharded across torchrun ranks (SHARK §3.2, Eq. 7-8).

``sharkrec train --shard table_wise|row_wise --precision f-quant`` runs :func:`train_sharded_fq`. Each rank holds
only its row blocks, each row in its tier (a :class:`~sharkrec.quant.embedding.MixedPrecisionEmbedding` of the
blocks, no fp32 copy of low-precision rows); the dense network is data-parallel (DDP).

One step (W ranks, per-rank batch B, the global batches of :func:`~sharkrec.train.sharded.global_batches`):

1. every rank's ids, bag lengths and positive flags are all-gathered (the global batch, rank order);
2. Eq. 7 per shard: each rank updates the decayed priority ``w ← (1 − β)·w + β·(α·c⁺ + c⁻)`` of the rows it
   holds from the global batch's counts (lazy decay, as the one-process store); every ``recheck_every`` steps
   Eq. 8 re-tiers all rows under the **global** budget: the cut between tiers is found by the all-reduced
   bisection of :func:`sharkrec.quant.sharded.tier_codes`, so each row gets the tier one process sorting all
   rows gives it, and every rank migrates only its own rows;
3. lookup: each rank pools the ids of the global batch that fall in its blocks (a (U, D) fp32 leaf of the rows
   read from their tiers), the partial (W·B, F, D) sums are all-reduced, each rank keeps its B samples;
4. backward: rank r's loss depends on its own samples only, so the gradient of the partial sums is the sum over
   ranks of each rank's gradient of the summed tensor (non-zero in its own samples), divided by W because DDP's
   averaged loss is the mean over ranks: one all-reduce of the (W·B, F, D) gradient. Each rank's leaves then
   hold the exact gradient of its rows, and the store's row-wise optimizer
   (:meth:`~sharkrec.quant.embedding.MixedPrecisionEmbedding.make_sparse_optimizer`: SGD or row-wise Adagrad)
   steps them and re-quantizes each into its tier.

Stochastic rounding draws are a keyed hash of (seed, step, purpose, flat row id, column) (:func:`row_uniforms`),
not of a generator's position, so a row rounds the same whatever rank holds it: a W-rank run equals a 1-process
run of batch W·B (tier codes identical; outputs within float rounding; ``tests/train/test_sharded_fq.py``).

Blocks: ``table_wise`` places whole tables as the fp32 plan does (:func:`~sharkrec.interop.sharding.sharding_plan`);
``row_wise`` gives rank r the rows ``r, r + W, r + 2W, ...`` of every table (strided, not TorchRec's contiguous
blocks: vocabularies are sorted by count, so contiguous blocks would put the hot fp32 / fp16 rows on rank 0).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from sharkrec import distributed
from sharkrec.data.batch import FieldIds
from sharkrec.data.dataset import PreparedData
from sharkrec.errors import ConfigError, DataError
from sharkrec.model.embedding import FieldEmbedding, FloatEmbedding
from sharkrec.quant.priority import FQuantPolicy, lazy_update, tier_counts_for_budget

FQ_KINDS = ("table_wise", "row_wise")
_MASK = 0xFFFFFFFF


def _mix(x: Tensor) -> Tensor:
    """A 32-bit integer hash (int64 tensor of values < 2³²; products stay below 2⁶³)."""
    x = ((x >> 16) ^ x) * 0x45D9F3B & _MASK
    x = ((x >> 16) ^ x) * 0x45D9F3B & _MASK
    return (x >> 16) ^ x


def row_uniforms(seed: int, step: int, purpose: int, rows: Tensor, dim: int) -> Tensor:
    """(U, D) float32 uniform [0, 1) draws keyed by (seed, step, purpose, flat row id (U,), column)."""
    head = _mix(torch.tensor((int(seed) & _MASK) ^ 0x9E3779B9, dtype=torch.int64))
    head = _mix(head ^ (int(step) & _MASK))
    head = _mix(head ^ int(purpose))
    rows = rows.long()
    keyed = _mix(_mix(head ^ (rows & _MASK)) ^ (rows >> 32))  # (U,)
    columns = _mix(torch.arange(dim, dtype=torch.int64) * 0x61C88647 & _MASK)  # (D,)
    draws = _mix(keyed.unsqueeze(1) ^ columns.unsqueeze(0))  # (U, D)
    return (draws >> 8).float() / float(1 << 24)


@dataclass(frozen=True)
class Block:
    """Rows ``first, first + stride, ...`` (``count`` of them) of table ``field``, held by one rank."""

    field: str
    first: int
    count: int
    stride: int = 1

    @property
    def name(self) -> str:
        return f"{self.field}[{self.first}::{self.stride}]"

    def rows(self) -> Tensor:
        """(count,) global row ids."""
        return self.first + self.stride * torch.arange(self.count, dtype=torch.int64)

    def local(self, values: Tensor) -> tuple[Tensor, Tensor]:
        """(mask of ``values`` this block holds, their local row ids)."""
        shifted = values - self.first
        held = (shifted >= 0) & (shifted % self.stride == 0) & (shifted < self.count * self.stride)
        return held, shifted[held] // self.stride


def plan_blocks(field_rows: Mapping[str, int], dim: int, kind: str, world: int,
                rank_memory: int | None = None) -> list[list[Block]]:
    """Every rank's blocks (see the module docstring); a plan over ``rank_memory`` fp32 bytes is a ConfigError."""
    from sharkrec.interop.sharding import TorchRecTables, sharder, sharding_plan

    if kind not in FQ_KINDS:
        raise ConfigError(f"--shard {kind} with --precision f-quant is not supported; use --shard "
                          f"{' or '.join(FQ_KINDS)} (F-Quantization keeps whole rows on one rank)")
    blocks: list[list[Block]] = [[] for _ in range(world)]
    if kind == "table_wise":  # the fp32 plan's placement (and its --rank-memory check)
        tables = TorchRecTables(field_rows, dim)
        module_plan = next(iter(sharding_plan(tables, kind, sharder("sgd", 0.01), world, rank_memory).plan.values()))
        for table, field in zip(tables.table_names, tables.field_names, strict=True):
            blocks[int(module_plan[table].ranks[0])].append(Block(field, 0, int(field_rows[field])))
        return blocks
    for field, rows in field_rows.items():
        for rank in range(world):
            count = max(0, -(-(int(rows) - rank) // world))
            if count:
                blocks[rank].append(Block(field, rank, count, world))
    held = [sum(b.count for b in parts) * dim * 4 for parts in blocks]
    if rank_memory is not None and max(held) > rank_memory:
        raise ConfigError(f"--shard row_wise does not fit: rank {held.index(max(held))} would hold {max(held)} table "
                          f"bytes (fp32 rows of every table), over the per-rank cap of {rank_memory}; raise "
                          "--rank-memory or use more processes")
    return blocks


class _SumOverRanks(torch.autograd.Function):
    """Forward: the all-reduced sum of every rank's partial (N, F, D). Backward: the gradient of a rank's partial
    is the sum over ranks of their gradients of the result (each from its own samples), over W (DDP's mean)."""

    @staticmethod
    def forward(ctx: Any, partial: Tensor) -> Tensor:  # type: ignore[override]
        summed = partial.clone()
        if distributed.is_distributed():
            dist.all_reduce(summed)
        return summed

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        if distributed.is_distributed():
            dist.all_reduce(grad)
            grad /= distributed.world_size()
        return grad


class TieredTrainingTables(FieldEmbedding):
    """This rank's row blocks in their F-Q tiers, trained in place (see the module docstring).

    Args:
        field_rows: rows of every table (all ranks), in field order.
        embedding_dim: D.
        blocks: this rank's blocks.
        policy: the F-Q policy (its memory budget is global: over all ranks' rows).
        seed: key of the stochastic rounding draws.
    """

    def __init__(self, field_rows: Mapping[str, int], embedding_dim: int, blocks: Sequence[Block],
                 policy: FQuantPolicy, seed: int = 0) -> None:
        super().__init__()
        from sharkrec.quant.embedding import MixedPrecisionEmbedding

        if policy.memory_budget is None and policy.tier_fractions is None:
            raise ConfigError("sharded F-Quantization needs a global budget: give --memory-budget (e.g. 0.5)")
        self.field_names = tuple(field_rows)
        self.embedding_dim = int(embedding_dim)
        self._rows = {name: int(rows) for name, rows in field_rows.items()}
        self.blocks = tuple(blocks)
        self.policy = policy
        self.seed = int(seed)
        bases, start = {}, 0
        for name, rows in self._rows.items():
            bases[name] = start
            start += rows
        self.total_rows = start
        #: (n,) flat row index (all tables, model order) of each row this rank holds, in store order
        self.flat_index = torch.cat([bases[b.field] + b.rows() for b in self.blocks]) if self.blocks else \
            torch.zeros(0, dtype=torch.int64)
        self.store = MixedPrecisionEmbedding({b.name: b.count for b in self.blocks}, self.embedding_dim,
                                             policy=policy, initial="fp32") if self.blocks else None
        if self.store is not None:
            self.store.row_noise = self._noise
        self._offsets = [0]
        for block in self.blocks:
            self._offsets.append(self._offsets[-1] + block.count)
        self._gathered: tuple[Tensor, list[int], list[tuple[Tensor, Tensor]], Tensor] | None = None
        self.rows_moved = 0
        self.steps = 0  # batches observed (the same on every rank, also one without rows)

    # ------------------------------------------------------------ build
    def _noise(self, field: int, rows: Tensor, dim: int, purpose: int) -> Tensor:
        return row_uniforms(self.seed, self.steps, purpose, self.flat_index[self._offsets[field] + rows.long()], dim)

    @torch.no_grad()
    def fill(self, values: Sequence[Tensor], priorities: Sequence[Tensor]) -> None:
        """Start: block k's (count, D) fp32 ``values`` and Eq. 7 ``priorities``; every row in the lowest tier,
        then the global Eq. 8 tiers (as :func:`sharkrec.quant.build.build_embedding` does for f-quant).
        Collective."""
        store = self.store
        if store is not None:
            for k, (block, rows) in enumerate(zip(self.blocks, values, strict=True)):
                if tuple(rows.shape) != (block.count, self.embedding_dim):
                    raise ConfigError(f"block {block.name} needs ({block.count}, {self.embedding_dim}) rows")
                store._buffers[f"fp32_{k}"] = rows.detach().float().clone()
                store.set_tiers(k, torch.full((block.count,), self.policy.lowest.code, dtype=torch.int8))
            store.set_priorities(priorities)
        self.retier()
        self.rows_moved = 0

    # ------------------------------------------------------------ Eq. 7-8
    def _gather(self, sparse: Sequence[FieldIds], labels: Tensor | None) -> None:
        """All ranks' ids and bag lengths per field, and positive flags (the global batch, rank order)."""
        if len(sparse) != len(self.field_names):
            raise DataError(f"the batch has {len(sparse)} sparse fields, the tables serve {len(self.field_names)}")
        size = sparse[0].batch_size() if sparse else 0
        sizes = [int(t) for t in distributed.all_gather_varsize(torch.tensor([size]))]
        fields = []
        for name, ids in zip(self.field_names, sparse, strict=True):
            if ids.weights is not None:
                raise DataError(f"field {name!r} has per-id weights; sharded tables sum unweighted bags")
            lengths = torch.ones(ids.values.shape[0], dtype=torch.int64) if ids.offsets is None else \
                ids.offsets[1:] - ids.offsets[:-1]
            fields.append((torch.cat(distributed.all_gather_varsize(ids.values.long())),
                           torch.cat(distributed.all_gather_varsize(lengths.long()))))
        positive = torch.zeros(0, dtype=torch.bool) if labels is None else \
            torch.cat(distributed.all_gather_varsize((labels > 0.5).any(dim=1)))
        key = sparse[0].values if sparse else torch.zeros(0)
        self._gathered = (key, sizes, fields, positive)

    @torch.no_grad()
    def observe_batch(self, sparse: Sequence[FieldIds], labels: Tensor) -> None:
        """Eq. 7 for this rank's rows from the global batch's counts; Eq. 8 (global) every ``recheck_every``."""
        self._gathered = None
        self._gather(sparse, labels)
        assert self._gathered is not None
        _, _, fields, positive = self._gathered
        self.steps += 1
        step = self.steps
        if self.store is not None:
            self.store._buffer("step").fill_(step)
            flat_rows, flat_weights = [], []
            for k, block in enumerate(self.blocks):
                values, lengths = fields[self.field_names.index(block.field)]
                flags = torch.repeat_interleave(positive, lengths, output_size=values.numel())
                held, local = block.local(values)
                if local.numel() == 0:
                    continue
                rows, inverse = torch.unique(local, return_inverse=True)
                per_value = torch.where(flags[held], float(self.policy.alpha), 1.0).float()
                flat_rows.append(rows + self._offsets[k])
                flat_weights.append(torch.zeros(rows.shape[0]).index_add_(0, inverse, per_value))
            if flat_rows:
                lazy_update(self.store._buffer("priority"), self.store._buffer("last_step"), torch.cat(flat_rows),
                            torch.cat(flat_weights), step, self.policy.keep, self.policy.gain)
        if step % self.policy.recheck_every == 0:
            self.retier()

    @torch.no_grad()
    def retier(self) -> int:
        """Eq. 8 under the global budget for every row (collective); this rank migrates its own rows."""
        from sharkrec.quant.sharded import priority_keys, tier_codes

        counts = tier_counts_for_budget(self.total_rows, self.embedding_dim, self.policy)
        if self.store is None:
            tier_codes(torch.zeros(0, dtype=torch.int64), self.flat_index, counts, self.total_rows)
            return 0
        priorities = self.store.priorities()
        keys = priority_keys(torch.cat(priorities)) if priorities else torch.zeros(0, dtype=torch.int64)
        codes = tier_codes(keys, self.flat_index, counts, self.total_rows)
        codes = torch.tensor([t.code for t in self.policy.tiers], dtype=torch.int8)[codes.long()]
        moved = sum(self.store.set_tiers(k, codes[self._offsets[k]:self._offsets[k + 1]])
                    for k in range(len(self.blocks)))
        self.rows_moved += moved
        return moved

    # ------------------------------------------------------------ lookup
    def forward(self, sparse: Sequence[FieldIds]) -> Tensor:
        """(B, F, D) field vectors of this rank's samples. Collective."""
        cached = self._gathered
        if cached is None or not sparse or cached[0] is not sparse[0].values:
            self._gather(sparse, None)
        assert self._gathered is not None
        _, sizes, fields, _ = self._gathered
        self._gathered = None
        total, mine = sum(sizes), sum(sizes[:distributed.rank()])
        store = self.store
        record = torch.is_grad_enabled() and self.training and store is not None
        per_field: dict[int, list[Tensor]] = {}
        if store is not None:
            store._touched, store._groups = [], {}
            for k, block in enumerate(self.blocks):
                position = self.field_names.index(block.field)
                values, lengths = fields[position]
                sample = torch.repeat_interleave(torch.arange(total), lengths, output_size=values.numel())
                held, local = block.local(values)
                if local.numel() == 0:
                    continue
                rows, inverse = torch.unique(local, return_inverse=True)
                groups = store.tier_groups(k, rows)
                with torch.no_grad():
                    leaf = store.read_rows(k, rows, groups)  # (U, D) fp32 from the tiers
                if record:
                    leaf.requires_grad_(True)
                    store._touched.append((k, rows, leaf))
                    store._groups[k] = groups
                offsets = torch.zeros(total + 1, dtype=torch.int64)
                offsets[1:] = torch.cumsum(torch.bincount(sample[held], minlength=total), 0)
                pooled = F.embedding_bag(inverse, leaf, offsets, mode="sum", include_last_offset=True)  # (N, D)
                per_field.setdefault(position, []).append(pooled)
        zeros = torch.zeros(total, self.embedding_dim)
        columns = [torch.stack(per_field[f]).sum(0) if f in per_field else zeros for f in range(len(self.field_names))]
        partial = torch.stack(columns, dim=1)  # (N, F, D)
        if torch.is_grad_enabled() and self.training and not partial.requires_grad:
            partial.requires_grad_(True)  # a rank without rows in this batch still joins the backward all-reduce
        summed = _SumOverRanks.apply(partial)
        return summed[mine:mine + sizes[distributed.rank()]]

    # ------------------------------------------------------------ training and accounting
    def make_sparse_optimizer(self, kind: str, lr: float) -> Any:
        """The store's row-wise optimizer (SGD or row-wise Adagrad, re-quantizing into each row's tier)."""
        return None if self.store is None else self.store.make_sparse_optimizer(kind, lr)

    def sparse_parameters(self) -> list[Any]:
        return []

    def num_rows(self) -> dict[str, int]:
        return dict(self._rows)

    def embedding_bytes(self) -> int:
        """Bytes of this rank's rows in their tiers (payload, scales, row map)."""
        return 0 if self.store is None else int(self.store.embedding_bytes())

    def training_bytes(self) -> int:
        """Bytes of this rank's priorities, step stamps and optimizer state."""
        return 0 if self.store is None else int(self.store.memory_report().training_bytes)

    def tier_rows(self) -> list[int]:
        """Rows per tier this rank holds (fp32, fp16, int8, int4)."""
        if self.store is None:
            return [0, 0, 0, 0]
        return [v["rows"] for v in self.store.memory_report().tiers.values()]


def block_priorities(data: PreparedData, blocks: Sequence[Block], alpha: float, batch_size: int) -> list[Tensor]:
    """Eq. 7's warm start (:func:`sharkrec.quant.build.expected_priorities`, global batch ``batch_size``) of the
    rows of each block."""
    from sharkrec.quant.build import expected_priorities

    fields = sorted({b.field for b in blocks})
    whole = dict(zip(fields, expected_priorities(data, alpha, batch_size, fields), strict=True)) if fields else {}
    return [whole[b.field][b.rows()] for b in blocks]


@torch.no_grad()
def gather_quantized(tables: TieredTrainingTables, dst: int = 0) -> Any:
    """On rank ``dst``: a MixedPrecisionEmbedding of all tables (every row in its tier, values as held);
    ``None`` elsewhere. Each rank sends its rows to ``dst`` only, one table at a time. Collective."""
    from sharkrec.quant.embedding import MixedPrecisionEmbedding

    rank = distributed.rank()
    whole_rows: dict[str, Tensor] = {}
    whole_codes: dict[str, Tensor] = {}
    store = tables.store
    held_codes = store.tier_of_rows() if store is not None else {}
    for field, rows in tables.num_rows().items():
        ids, values, codes = [torch.zeros(0, dtype=torch.int64)], [torch.zeros(0, tables.embedding_dim)], \
            [torch.zeros(0, dtype=torch.int8)]
        for k, block in enumerate(tables.blocks):
            if block.field == field and store is not None:
                ids.append(block.rows())
                values.append(store.read_rows(k, torch.arange(block.count)))
                codes.append(held_codes[block.name])
        packed = torch.cat([torch.cat(ids).double().unsqueeze(1), torch.cat(codes).double().unsqueeze(1),
                            torch.cat(values).double()], dim=1)  # (n, 2 + D): row id, tier code, values
        parts = _gather_to(packed, dst)
        if rank != dst:
            continue
        merged = torch.cat(parts)
        order = merged[:, 0].long()
        table, plan = torch.zeros(rows, tables.embedding_dim), torch.zeros(rows, dtype=torch.int8)
        table[order] = merged[:, 2:].float()
        plan[order] = merged[:, 1].to(torch.int8)
        whole_rows[field], whole_codes[field] = table, plan
    if rank != dst:
        return None
    return MixedPrecisionEmbedding.from_float(FloatEmbedding.from_tables(whole_rows), whole_codes,
                                              stochastic_int=False)


def _gather_to(tensor: Tensor, dst: int) -> list[Tensor]:
    """Every rank's (N_r, C) ``tensor`` on ``dst`` in rank order (``[]`` elsewhere)."""
    if not distributed.is_distributed():
        return [tensor]
    sizes = [int(t) for t in distributed.all_gather_varsize(torch.tensor([tensor.shape[0]]))]
    padded = tensor.new_zeros((max(sizes), *tensor.shape[1:]))
    padded[:tensor.shape[0]] = tensor
    received = [torch.empty_like(padded) for _ in sizes] if distributed.rank() == dst else None
    dist.gather(padded.contiguous(), received, dst=dst)
    return [part[:n] for part, n in zip(received, sizes, strict=True)] if received is not None else []


def fq_policy(options: Mapping[str, Any]) -> FQuantPolicy:
    """The :class:`FQuantPolicy` of ``--precision f-quant`` options (one-line ConfigError for a bad one)."""
    try:
        return FQuantPolicy(**dict(options))
    except TypeError as exc:
        raise ConfigError(f"bad f-quant option for sharded tables ({exc}); see FQuantPolicy for the options") from None




def initial_rows(seed: int, table: int, block: Block, dim: int, std: float = 0.01) -> Tensor:
    """(count, D) initial values of ``block``'s rows: :func:`~sharkrec.interop.sharding.seeded_rows` of table
    ``table`` (the fp32 plan's per-block seeds), read 4096 rows at a time for a strided block."""
    from sharkrec.interop.sharding import seeded_rows

    if block.stride == 1:
        return seeded_rows(seed, table, block.first, block.first + block.count, dim, std)
    stop = block.first + (block.count - 1) * block.stride + 1
    parts, chunk = [], 4096 * block.stride
    for start in range(0, stop, chunk):
        rows = seeded_rows(seed, table, start, min(start + chunk, stop), dim, std)
        offset = (block.first - start) % block.stride
        parts.append(rows[offset::block.stride])
    return torch.cat(parts)


class ShardedFQModel:
    """A DLRM whose tables are :class:`TieredTrainingTables` (``model``), its dense network under DDP
    (``forward``), and the plan."""

    def __init__(self, model: Any, tables: TieredTrainingTables, kind: str, blocks: list[list[Block]]) -> None:
        import inspect

        from torch.nn.parallel import DistributedDataParallel

        from sharkrec.interop.sharding import FieldsAndLogits

        self.model, self.tables, self.kind, self.blocks = model, tables, kind, blocks
        self.wrapper = FieldsAndLogits(model)
        self.ddp: Any = None
        if distributed.is_distributed():
            ignored = [f"model.{n}" for n, _ in model.named_parameters() if n.startswith("embedding.")]
            ignored += [f"model.{n}" for n, _ in model.named_buffers() if n.startswith("embedding.")]
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self.wrapper, ignored)
            newer = "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters
            self.ddp = DistributedDataParallel(self.wrapper, **{"forward_sync_buffers" if newer
                                                                else "broadcast_buffers": False})

    def forward(self, batch: Any) -> tuple[Tensor, Tensor]:
        """(B, F, D) field vectors and (B, T) logits; dense gradients averaged over ranks in backward."""
        return self.ddp(batch) if self.ddp is not None else self.wrapper(batch)

    # ---------------------------------------------------------------- the training loop's interface
    def observe(self, batch: Any) -> None:
        """Eq. 7 (and Eq. 8 every ``recheck_every`` steps) from the global batch, before its forward."""
        self.tables.observe_batch(batch.sparse, batch.labels)

    def table_optimizer(self, config: Any) -> Any:
        return self.tables.make_sparse_optimizer(config.optimizer.value, config.embedding_lr or config.lr)

    def signature(self) -> dict[str, Any]:
        plan = [[[b.field, b.first, b.count, b.stride] for b in parts] for parts in self.blocks]
        return {"kind": self.kind, "world": distributed.world_size(), "plan": plan,
                "policy": self.tables.policy.to_dict()}

    def table_state(self, optimizer: Any = None) -> dict[str, Any]:
        """This rank's rows in their tiers, priorities and row optimizer state (copies)."""
        store = self.tables.store
        return {"store": None if store is None else {k: v.clone() for k, v in store.state_dict().items()},
                "optimizer": None if optimizer is None else copy.deepcopy(optimizer.state_dict()),
                "steps": self.tables.steps, "rows_moved": self.tables.rows_moved}

    def load_table_state(self, state: dict[str, Any], optimizer: Any = None) -> None:
        store = self.tables.store
        if store is not None:
            store.load_state_dict(state["store"])
            store._groups.clear()
        if optimizer is not None:
            optimizer.load_state_dict(state["optimizer"])
        self.tables.steps, self.tables.rows_moved = int(state["steps"]), int(state["rows_moved"])

    def memory(self) -> dict[str, Any]:
        """Bytes each rank holds in its tiers (gathered), tier rows per rank, next to the fp32 bytes."""
        tables = self.tables
        stats = torch.tensor([tables.embedding_bytes(), tables.training_bytes(), tables.rows_moved,
                              *tables.tier_rows()], dtype=torch.int64)
        rows = [t[0].tolist() for t in distributed.all_gather_varsize(stats.unsqueeze(0))]
        fp32 = tables.total_rows * tables.embedding_dim * 4
        per_rank = [r[0] for r in rows]
        return {"embedding_bytes": sum(per_rank), "embedding_bytes_fp32": fp32, "embedding_rows": tables.total_rows,
                "embedding_bytes_per_rank": per_rank, "share_per_rank": [b / fp32 for b in per_rank],
                "share_of_fp32": sum(per_rank) / fp32, "training_bytes_per_rank": [r[1] for r in rows],
                "tier_rows_per_rank": [r[3:] for r in rows], "rows_moved": sum(r[2] for r in rows),
                "tier_counts": tier_counts_for_budget(tables.total_rows, tables.embedding_dim, tables.policy)}

    def sharding(self) -> dict[str, Any]:
        """``{field: {"type", "ranks", "stride"}}`` of the plan."""
        out: dict[str, Any] = {}
        for rank, parts in enumerate(self.blocks):
            for block in parts:
                entry = out.setdefault(block.field, {"type": self.kind, "ranks": [], "stride": block.stride,
                                                     "kernel": "sharkrec-tiers"})
                entry["ranks"].append(rank)
        return out


def build_sharded_fq(data: PreparedData, kind: str, policy: FQuantPolicy, *, seed: int = 0,
                     global_batch: int = 512, rank_memory: int | None = None,
                     model_options: dict[str, Any] | None = None) -> ShardedFQModel:
    """A fresh DLRM for ``data``: this rank's blocks of ``kind`` in their F-Q tiers (seeded values, warm-started
    priorities of a ``global_batch``, global Eq. 8 tiers); dense weights seeded by ``seed``. Collective."""
    from sharkrec.model.dlrm import DLRM
    from sharkrec.train.run import model_config_for

    config = model_config_for(data, **(model_options or {}))
    rows = dict(config.field_rows)
    blocks = plan_blocks(rows, config.embedding_dim, kind, distributed.world_size(), rank_memory)
    mine = blocks[distributed.rank()]
    tables = TieredTrainingTables(rows, config.embedding_dim, mine, policy, seed)
    fields = list(rows)
    tables.fill([initial_rows(seed, fields.index(b.field), b, config.embedding_dim) for b in mine],
                block_priorities(data, mine, policy.alpha, global_batch))
    torch.manual_seed(seed)
    model = DLRM(config, embedding=tables)
    return ShardedFQModel(model, tables, kind, blocks)


def export_fq(sharded: ShardedFQModel) -> Any:
    """On rank 0: a plain sharkrec DLRM whose tables are one MixedPrecisionEmbedding of every rank's rows in their
    tiers (``None`` elsewhere). Collective."""
    store = gather_quantized(sharded.tables)
    if store is None:
        return None
    return sharded.model.with_embedding(store).eval()


def train_sharded_fq(data: PreparedData, config: Any, out_dir: str | Path | None = None, *, shard: str,
                     policy_options: Mapping[str, Any] | None = None, rank_memory: int | None = None,
                     model_options: dict[str, Any] | None = None, resume: bool = False
                     ) -> tuple[ShardedFQModel, dict[str, Any]]:
    """``sharkrec train --shard ... --precision f-quant``: build, train, evaluate, report per-rank bytes in tiers;
    with ``out_dir`` rank 0 writes ``model.pt`` (the gathered F-Q model), ``artifact/`` and ``report.json``."""
    from sharkrec.train.sharded import finish_run
    from sharkrec.train.sharded_loop import run_training

    started = time.perf_counter()
    policy = fq_policy(policy_options or {"memory_budget": 0.5})
    with distributed.hold_output(out_dir, "train"):
        sharded = build_sharded_fq(data, shard, policy, seed=config.seed,
                                   global_batch=config.batch_size * distributed.world_size(),
                                   rank_memory=rank_memory, model_options=model_options)
        training = run_training(sharded, data, config, out_dir, resume)
        report = finish_run(sharded, data, config, out_dir, training, export_fq(sharded), started,
                            sharding={"kind": shard, "rank_memory": rank_memory,
                                      "embedding_optimizer": config.optimizer.value},
                            model_config={"train": config.to_dict(), "model": sharded.model.config.to_dict(),
                                          "precision": {"scheme": "f-quant", **policy.to_dict()}})
        distributed.barrier()
    return sharded, report
