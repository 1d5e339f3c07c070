"""F-Quantization of tables sharded across ranks: row priorities and tier decisions per shard, one global budget.

Each rank holds row blocks of some tables (:mod:`sharkrec.interop.sharding`). For a trained sharded model:

1. every rank computes the Eq. 7 bracket of the rows it holds, ``α·c⁺ + c⁻`` from the vocabularies' counts
   (no decay, as :func:`sharkrec.interop.torchrec.export_artifact` does);
2. the global budget fixes how many rows of *all* tables take each tier
   (:func:`~sharkrec.quant.priority.tier_counts_for_budget`), and the cut between two tiers is found without
   moving rows: a bisection over the priority value and then over the flat row index (the tie-break of
   :func:`~sharkrec.quant.priority.tiers_by_rank`: field order, then row id), each step one all-reduce of a
   count. Every rank then knows the tier of each of its rows, exactly as one process sorting all rows would;
3. every rank quantizes its own shards into a :class:`~sharkrec.quant.embedding.MixedPrecisionEmbedding`
   (fp32 / fp16 / int8 rows, per-row scales, row map; round to nearest, so the result does not depend on
   random draws) and reports the bytes it holds in those tiers.

What TorchRec's kernels cannot do: fbgemm's TBE holds one dtype per table, not per row. So
:func:`quantize_sharded` also writes each row's *decoded* value back into the DMP's fp32 shards (the DMP
forward then equals the F-Q model's forward), and :func:`tiered_model` gives a model whose lookups read each
rank's rows from their tiers only (:class:`TieredShards`: ids all-gathered, partial pooled sums all-reduced),
so the fp32 shards can be let go. Export gathers tier codes and rows into one mixed-precision artifact.
Training with changing tiers (Eq. 7 decay, re-tiering every N batches) on sharded tables is
:mod:`sharkrec.train.sharded_fq`, which reuses :func:`tier_codes` for the global cut.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from sharkrec import distributed
from sharkrec.data.batch import FieldIds
from sharkrec.errors import ConfigError, DataError
from sharkrec.model.embedding import FieldEmbedding


@dataclass
class ShardedTiers:
    """Tier codes of this rank's shards and the bytes they hold.

    Attributes:
        codes: ``{field: [(first row, (n,) int8 tier codes)]}`` of this rank's row blocks.
        store, blocks: this rank's rows in their tiers and which row block each of its fields is.
        counts: rows per tier over all tables (most precise first), from the global budget.
        bytes_per_rank: bytes of each rank's mixed-precision shards (payload, scales, row map).
        fp32_bytes: fp32 bytes of all tables.
    """

    codes: dict[str, list[tuple[int, Tensor]]]
    counts: list[int]
    bytes_per_rank: list[int]
    fp32_bytes: int
    store: Any = None  # this rank's MixedPrecisionEmbedding of its row blocks (fields "name[first:stop]")
    blocks: tuple[tuple[str, int, int], ...] = ()  # (field, first row, rows) of each store field, in order

    def report(self) -> dict[str, Any]:
        return {"tier_counts": self.counts, "bytes_per_rank": self.bytes_per_rank, "fp32_bytes": self.fp32_bytes,
                "share_of_fp32": sum(self.bytes_per_rank) / self.fp32_bytes if self.fp32_bytes else 0.0}


def _count(mask: Tensor) -> int:
    return int(distributed.all_reduce_sum(mask.sum().to(torch.int64).reshape(1))[0])


def _cut(keys: Tensor, index: Tensor, take: int, total: int) -> tuple[int, int]:
    """(priority bits b, index cut i) so that exactly ``take`` rows over all ranks come first in the order
    (priority descending, flat index ascending): rows with key > b, and rows with key == b and index < i."""
    low, high = 0, (1 << 31) - 1  # non-negative float32 bits order like the floats
    while low < high:  # largest b with count(key >= b) >= take
        mid = (low + high + 1) // 2
        if _count(keys >= mid) >= take:
            low = mid
        else:
            high = mid - 1
    bits = low
    missing = take - _count(keys > bits)
    tied = keys == bits
    low, high = 0, total
    while low < high:  # smallest cut with count(tied and index < cut) >= missing
        mid = (low + high) // 2
        if _count(tied & (index < mid)) >= missing:
            high = mid
        else:
            low = mid + 1
    return bits, low


def global_tiers(priorities: Mapping[str, list[tuple[int, Tensor]]], field_rows: Mapping[str, int],
                 counts: list[int]) -> dict[str, list[tuple[int, Tensor]]]:
    """Tier codes of this rank's rows: ``priorities`` ``{field: [(first row, (n,) priority)]}`` of its row blocks,
    ``field_rows`` all fields' rows in model order, ``counts`` rows per tier over all fields."""
    bases, start = {}, 0
    for field, rows in field_rows.items():
        bases[field] = start
        start += rows
    total = start
    if sum(counts) != total:
        raise ConfigError(f"tier counts {counts} do not add up to the {total} rows of the tables")
    blocks = [(field, first, values) for field, parts in priorities.items() for first, values in parts]
    keys = torch.cat([priority_keys(v) for _, _, v in blocks]) if blocks else torch.zeros(0, dtype=torch.int64)
    index = torch.cat([bases[f] + first + torch.arange(v.numel()) for f, first, v in blocks]) if blocks else \
        torch.zeros(0, dtype=torch.int64)
    codes = tier_codes(keys, index, counts, total)
    out: dict[str, list[tuple[int, Tensor]]] = {}
    position = 0
    for field, first, values in blocks:
        out.setdefault(field, []).append((first, codes[position:position + values.numel()]))
        position += values.numel()
    return out


def priority_keys(values: Tensor) -> Tensor:
    """(n,) int64 sort keys of non-negative float32 priorities (their bits order like the floats)."""
    keys = values.float().contiguous().view(torch.int32).long()
    if bool((keys < 0).any()):
        raise ConfigError("row priorities must be non-negative (Eq. 7's bracket is)")
    return keys


def tier_codes(keys: Tensor, index: Tensor, counts: Sequence[int], total: int) -> Tensor:
    """(n,) int8 tier codes of this rank's rows: ``keys`` (:func:`priority_keys`) and ``index`` (flat row index over
    all tables, the tie-break) of its rows, ``counts`` rows per tier over all ranks' ``total`` rows. Collective:
    the same order as one process sorting all rows (priority descending, then flat index)."""
    codes = torch.zeros(keys.numel(), dtype=torch.int8)
    taken = 0
    for count in counts[:-1]:  # rows outside the first `taken` hottest move one tier down per boundary
        taken += count
        if taken >= total:
            break
        if taken == 0:
            codes += 1
            continue
        bits, cut = _cut(keys, index, taken, total)
        inside = (keys > bits) | ((keys == bits) & (index < cut))
        codes += (~inside).to(torch.int8)
    return codes


def row_priorities(vocabularies: Mapping[str, Any], field: str, first: int, rows: int, alpha: float) -> Tensor:
    """Eq. 7's bracket α·c⁺ + c⁻ (no decay) of rows [first, first + rows) of ``field`` (float32)."""
    vocabulary = vocabularies[field]
    counts = torch.as_tensor(vocabulary.counts_[first:first + rows], dtype=torch.float64)
    positive = torch.as_tensor(vocabulary.positive_counts_[first:first + rows], dtype=torch.float64)
    if counts.numel() != rows:
        raise ConfigError(f"vocabulary of {field!r} has {len(vocabulary.counts_)} counts, the table more rows; "
                          "quantize with the vocabularies the model was trained with")
    return (alpha * positive + (counts - positive)).float()


@torch.no_grad()
def quantize_sharded(sharded: Any, vocabularies: Mapping[str, Any], *, memory_budget: float = 0.5,
                     alpha: float = 2.0, use_int4: bool = False) -> ShardedTiers:
    """F-Quantize a :class:`~sharkrec.train.sharded.ShardedDLRM` in place (see the module docstring)."""
    from sharkrec.interop.sharding import local_shards
    from sharkrec.model.embedding import FloatEmbedding
    from sharkrec.quant.embedding import MixedPrecisionEmbedding
    from sharkrec.quant.priority import FQuantPolicy, tier_counts_for_budget

    tables = sharded.tables
    shards = local_shards(tables)
    for field, parts in shards.items():
        if any(col != 0 or t.shape[1] != tables.embedding_dim for (_, col), t in parts):
            raise ConfigError(f"table {field!r} is split by columns; F-Quantization keeps whole rows: shard it "
                              "table_wise or row_wise")
    policy = FQuantPolicy(memory_budget=memory_budget, alpha=alpha, use_int4=use_int4)
    rows = tables.num_rows()
    counts = tier_counts_for_budget(sum(rows.values()), tables.embedding_dim, policy)
    priorities = {field: [(row, row_priorities(vocabularies, field, row, t.shape[0], alpha)) for (row, _), t in parts]
                  for field, parts in shards.items()}
    codes = global_tiers(priorities, rows, counts)
    names, blocks, plan = [], {}, {}
    for field, parts in shards.items():
        for ((row, _), tensor), (_, block_codes) in zip(parts, codes.get(field, []), strict=True):
            name = f"{field}[{row}:{row + tensor.shape[0]}]"
            names.append((name, tensor))
            blocks[name] = tensor.detach().float()
            plan[name] = block_codes
    held, mixed = 0, None
    if blocks:
        mixed = MixedPrecisionEmbedding.from_float(FloatEmbedding.from_tables(blocks), plan, policy=policy,
                                                   stochastic_int=False)
        held = int(mixed.embedding_bytes())
        decoded = mixed.to_float()
        for name, tensor in names:  # the sharded lookup answers the decoded rows: forward = the F-Q model's
            tensor.copy_(decoded.table(name))
    per_rank = [int(t) for t in distributed.all_gather_varsize(torch.tensor([held], dtype=torch.int64))]
    spans = tuple((field, row, int(t.shape[0])) for field, parts in shards.items() for (row, _), t in parts)
    return ShardedTiers(codes, counts, per_rank, sum(rows.values()) * tables.embedding_dim * 4, mixed, spans)


def gather_codes(tiers: ShardedTiers, field_rows: Mapping[str, int], dst: int = 0) -> dict[str, Tensor] | None:
    """The (R,) tier codes of every whole table on rank ``dst`` (``None`` elsewhere)."""
    out: dict[str, Tensor] | None = {} if distributed.rank() == dst else None
    for field, rows in field_rows.items():
        parts = tiers.codes.get(field, [])
        starts = torch.tensor([first for first, _ in parts], dtype=torch.int64)
        lengths = torch.tensor([c.numel() for _, c in parts], dtype=torch.int64)
        flat = torch.cat([c.long() for _, c in parts]) if parts else torch.zeros(0, dtype=torch.int64)
        header = distributed.all_gather_varsize(torch.stack([starts, lengths], 1) if parts else
                                                torch.zeros(0, 2, dtype=torch.int64))
        values = distributed.all_gather_varsize(flat)
        if out is None:
            continue
        whole = torch.zeros(rows, dtype=torch.int8)
        for head, codes in zip(header, values, strict=True):
            position = 0
            for first, length in head.tolist():
                whole[first:first + length] = codes[position:position + length].to(torch.int8)
                position += length
        out[field] = whole
    return out


def export_quantized(sharded: Any, tiers: ShardedTiers) -> Any:
    """On rank 0: a sharkrec DLRM whose tables are a MixedPrecisionEmbedding of the gathered rows in their tiers
    (``None`` elsewhere). Collective."""
    from sharkrec.interop.sharding import gather_tables
    from sharkrec.model.embedding import FloatEmbedding, replace_storage
    from sharkrec.quant.embedding import MixedPrecisionEmbedding

    tables = gather_tables(sharded.tables)
    plan = gather_codes(tiers, sharded.tables.num_rows())
    if tables is None or plan is None:
        return None
    mixed = MixedPrecisionEmbedding.from_float(FloatEmbedding.from_tables(tables), plan, stochastic_int=False)
    model = sharded.model
    return model.with_embedding(replace_storage(model.embedding, mixed)).eval()


class TieredShards(FieldEmbedding):
    """Serving-side sharded tables whose rows stay in their F-Q tiers: each rank holds only its
    :class:`~sharkrec.quant.embedding.MixedPrecisionEmbedding` of its row blocks (no fp32 copy).

    A lookup (collective: every rank calls it in step) all-gathers every rank's ids per field, each rank pools
    the ids that fall in its row blocks for all ranks' samples (zeros elsewhere), the partial (B_all, F, D) sums
    are all-reduced, and each rank keeps its own samples. Eval / scoring only: no gradients flow to the tiers.
    """

    def __init__(self, field_rows: Mapping[str, int], embedding_dim: int, tiers: ShardedTiers) -> None:
        super().__init__()
        self.field_names = tuple(field_rows)
        self.embedding_dim = int(embedding_dim)
        self._rows = {name: int(rows) for name, rows in field_rows.items()}
        self.store = tiers.store
        self.blocks = tiers.blocks

    def forward(self, sparse: Sequence[FieldIds]) -> Tensor:
        if len(sparse) != len(self.field_names):
            raise DataError(f"the batch has {len(sparse)} sparse fields, the tables serve {len(self.field_names)}")
        sizes = [int(t) for t in distributed.all_gather_varsize(torch.tensor([sparse[0].batch_size()]))] if \
            sparse else [0]
        total, mine = sum(sizes), sum(sizes[:distributed.rank()])
        gathered = []  # per field: (all ranks' ids, (B_all,) bag lengths)
        for ids in sparse:
            lengths = torch.ones(ids.values.shape[0], dtype=torch.int64) if ids.offsets is None else \
                ids.offsets[1:] - ids.offsets[:-1]
            gathered.append((torch.cat(distributed.all_gather_varsize(ids.values.long())),
                             torch.cat(distributed.all_gather_varsize(lengths.long()))))
        partial = torch.zeros(total, len(self.field_names), self.embedding_dim)
        if self.store is not None:
            block_ids = []
            for field, first, count in self.blocks:
                values, lengths = gathered[self.field_names.index(field)]
                sample = torch.repeat_interleave(torch.arange(total), lengths, output_size=values.numel())
                held = (values >= first) & (values < first + count)
                offsets = torch.zeros(total + 1, dtype=torch.int64)
                offsets[1:] = torch.cumsum(torch.bincount(sample[held], minlength=total), 0)
                block_ids.append(FieldIds(values[held] - first, offsets))
            with torch.no_grad():
                pooled = self.store(block_ids)  # (B_all, blocks, D)
            for k, (field, _, _) in enumerate(self.blocks):
                partial[:, self.field_names.index(field)] += pooled[:, k]
        (summed,) = distributed.all_reduce_sum(partial)
        return summed[mine:mine + sizes[distributed.rank()]]  # (B, F, D) of this rank's samples

    def num_rows(self) -> dict[str, int]:
        return dict(self._rows)

    def embedding_bytes(self) -> int:
        """Bytes of this rank's rows in their tiers (payload, scales, row map)."""
        return 0 if self.store is None else int(self.store.embedding_bytes())

    def sparse_parameters(self) -> list[Any]:
        return []


def tiered_model(sharded: Any, tiers: ShardedTiers) -> Any:
    """``sharded``'s DLRM (dense weights copied, wrappers such as pruning kept) whose tables are
    :class:`TieredShards`: this rank's rows in their tiers only. The fp32 shards can then be let go."""
    from sharkrec.model.embedding import replace_storage

    tables = sharded.tables
    model = sharded.model
    layer = replace_storage(model.embedding, TieredShards(tables.num_rows(), tables.embedding_dim, tiers))
    return model.with_embedding(layer).eval()
