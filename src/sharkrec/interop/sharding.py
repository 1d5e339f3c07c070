"""sharkrec's tables as one TorchRec ``EmbeddingBagCollection`` sharded across ranks by ``DistributedModelParallel``.

:class:`TorchRecTables` is a :class:`~sharkrec.model.embedding.FieldEmbedding` (so a sharkrec
:class:`~sharkrec.model.dlrm.DLRM` takes it unchanged): one EBC table ``t<i>`` per sparse field, feature
name = field name, looked up with a ``KeyedJaggedTensor`` and read back **by name** (sharding reorders the
output ``KeyedTensor``). :func:`shard_model` wraps the DLRM in TorchRec's ``DistributedModelParallel``: the
EBC is sharded by a :func:`sharding_plan` (``table_wise``, ``row_wise`` or ``auto`` = TorchRec's planner), the
rest of the network is data-parallel (DMP wraps it in DDP), and each rank allocates only its own shards
(the EBC is built on the meta device; :func:`init_shards` fills each local shard from a per-row-block seed,
so a row's initial value does not depend on the plan or the number of ranks).

Row-wise is what the planner offers only for CUDA; :func:`sharder`'s sharder reports the CUDA list of
sharding types while keeping the CPU kernels (fbgemm's CPU TBE runs row-wise shards), and explicit plans
are built with ``construct_module_sharding_plan``. TorchRec's CPU kernels have no Adam: the tables train
with fused row-wise Adagrad (or exact SGD), applied during ``backward``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from sharkrec.data.batch import FieldIds
from sharkrec.errors import ConfigError, DataError
from sharkrec.model.embedding import FieldEmbedding

SHARD_KINDS = ("table_wise", "row_wise", "auto")
EMBEDDING_PATH = "embedding.ebc"  # where the EBC sits inside a sharkrec DLRM
_INIT_BLOCK = 4096  # rows per seeded init block
#: fbgemm's fused kernel: the optimizer steps inside backward (the default "dense" kernel leaves tables untrained)
FUSED = "fused"


class TorchRecTables(FieldEmbedding):
    """One TorchRec EBC table per sparse field: (B, F, D) field vectors from :class:`FieldIds`.

    Args:
        field_rows: rows per field, in field order.
        embedding_dim: D.
        device: ``"meta"`` (the default) allocates nothing: DMP materialises only each rank's shards.
    """

    def __init__(self, field_rows: Mapping[str, int], embedding_dim: int, device: str = "meta") -> None:
        super().__init__()
        from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, PoolingType

        self.field_names = tuple(field_rows)
        self.embedding_dim = int(embedding_dim)
        self._rows = {name: int(rows) for name, rows in field_rows.items()}
        self.table_names = tuple(f"t{i}" for i in range(len(self.field_names)))
        configs = [EmbeddingBagConfig(name=table, embedding_dim=self.embedding_dim, num_embeddings=self._rows[field],
                                      feature_names=[field], pooling=PoolingType.SUM)
                   for table, field in zip(self.table_names, self.field_names, strict=True)]
        self.ebc = EmbeddingBagCollection(tables=configs, device=torch.device(device))

    def kjt(self, sparse: Sequence[FieldIds]) -> Any:
        """A ``KeyedJaggedTensor`` (keys = field names) of one :class:`FieldIds` per field."""
        from torchrec import KeyedJaggedTensor

        if len(sparse) != len(self.field_names):
            raise DataError(f"the batch has {len(sparse)} sparse fields but the tables serve {len(self.field_names)} "
                            f"({', '.join(self.field_names)}); give one per field, in that order")
        lengths = []
        for name, ids in zip(self.field_names, sparse, strict=True):
            if ids.weights is not None:
                raise DataError(f"field {name!r} has per-id weights; sharded tables sum unweighted bags")
            if ids.values.numel() and (int(ids.values.min()) < 0 or int(ids.values.max()) >= self._rows[name]):
                raise DataError(f"field {name!r} has ids outside [0, {self._rows[name]}); encode the data with the "
                                "model's vocabularies")
            lengths.append(torch.ones(ids.values.shape[0], dtype=torch.int64) if ids.offsets is None
                           else ids.offsets[1:] - ids.offsets[:-1])
        return KeyedJaggedTensor(keys=list(self.field_names), values=torch.cat([s.values.long() for s in sparse]),
                                 lengths=torch.cat(lengths))

    def forward(self, sparse: Sequence[FieldIds]) -> Tensor:
        pooled = self.ebc(self.kjt(sparse))
        if hasattr(pooled, "wait") and not hasattr(pooled, "to_dict"):
            pooled = pooled.wait()
        by_name = pooled.to_dict()  # sharding reorders the KeyedTensor: take features by name
        return torch.stack([by_name[name] for name in self.field_names], dim=1)  # (B, F, D)

    def num_rows(self) -> dict[str, int]:
        return dict(self._rows)

    def embedding_bytes(self) -> int:
        """Bytes of the table tensors this rank holds (its local shards; a whole table when unsharded)."""
        return sum(t.numel() * t.element_size() for tensors in local_shards(self).values() for _, t in tensors)

    def sparse_parameters(self) -> list[nn.Parameter]:
        return []  # the fused optimizer updates the shards during backward


def local_shards(tables: TorchRecTables) -> dict[str, list[tuple[tuple[int, int], Tensor]]]:
    """``{field: [((row offset, column offset), local tensor)]}`` of the shards this rank holds."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    out: dict[str, list[tuple[tuple[int, int], Tensor]]] = {}
    state = tables.ebc.state_dict()
    for table, field in zip(tables.table_names, tables.field_names, strict=True):
        weight = state[f"embedding_bags.{table}.weight"]
        if isinstance(weight, ShardedTensor):
            out[field] = [((int(s.metadata.shard_offsets[0]), int(s.metadata.shard_offsets[1])), s.tensor)
                          for s in weight.local_shards()]
        else:  # unsharded or data-parallel: the whole table
            out[field] = [((0, 0), weight)]
    return out


def seeded_rows(seed: int, table: int, start: int, stop: int, dim: int, std: float) -> Tensor:
    """Rows [start, stop) (stop − start, D) of table ``table`` drawn N(0, std²) from per-block seeds.

    Block b (rows [b·4096, (b+1)·4096)) always draws from seed (seed, table, b), so any shard of the
    table gets the same rows as a one-process table of the same seed.
    """
    parts = []
    for block in range(start // _INIT_BLOCK, -(-stop // _INIT_BLOCK)):
        block_seed = ((int(seed) * 1_000_003 + int(table)) * 1_000_003 + block) % (1 << 62)
        generator = torch.Generator().manual_seed(block_seed)
        rows = torch.randn(_INIT_BLOCK, dim, generator=generator) * std
        lo, hi = max(start - block * _INIT_BLOCK, 0), min(stop - block * _INIT_BLOCK, _INIT_BLOCK)
        parts.append(rows[lo:hi])
    return torch.cat(parts) if parts else torch.zeros(0, dim)


@torch.no_grad()
def init_shards(tables: TorchRecTables, seed: int, std: float = 0.01,
                source: Mapping[str, Tensor] | None = None) -> None:
    """Fill every local shard: from ``source`` tables (field → (R, D)) where given, else :func:`seeded_rows`."""
    for index, (field, shards) in enumerate(local_shards(tables).items()):
        for (row, col), tensor in shards:
            rows = source[field][row:row + tensor.shape[0]] if source is not None and field in source else \
                seeded_rows(seed, index, row, row + tensor.shape[0], tables.embedding_dim, std)
            tensor.copy_(rows[:, col:col + tensor.shape[1]])


def sharder(optimizer: str, lr: float) -> Any:
    """The EBC sharder: fused row-wise Adagrad (``adagrad`` / ``adam``; TorchRec CPU has no Adam) or exact SGD,
    and row-wise sharding offered on CPU (the planner lists it for CUDA only)."""
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.types import ShardingType

    class _Sharder(EmbeddingBagCollectionSharder):
        def sharding_types(self, compute_device_type: str) -> list[str]:
            types = super().sharding_types(compute_device_type)
            return types + [t.value for t in (ShardingType.ROW_WISE, ShardingType.TABLE_ROW_WISE)
                            if t.value not in types]

    kind = EmbOptimType.EXACT_SGD if optimizer == "sgd" else EmbOptimType.EXACT_ROWWISE_ADAGRAD
    return _Sharder(fused_params={"optimizer": kind, "learning_rate": float(lr), "eps": 1e-8})


def table_bytes(tables: TorchRecTables) -> dict[str, int]:
    """fp32 bytes of every whole table."""
    return {field: rows * tables.embedding_dim * 4 for field, rows in tables.num_rows().items()}


def sharding_plan(tables: TorchRecTables, kind: str, the_sharder: Any, world: int,
                  rank_memory: int | None = None) -> Any:
    """A ``ShardingPlan`` for the EBC at :data:`EMBEDDING_PATH`, or a one-line ConfigError when it cannot fit.

    - ``table_wise``: whole tables, largest first onto the rank holding the fewest bytes;
    - ``row_wise``: every table cut into ``world`` row blocks, one per rank;
    - ``auto``: TorchRec's ``EmbeddingShardingPlanner`` (CPU topology, ``rank_memory`` as each rank's DDR),
      limited to sharded placements (no data-parallel table: it would be replicated on every rank).

    ``rank_memory``: the bytes of table weights one rank may hold (fp32 rows; optimizer state not counted).
    """
    from torchrec.distributed.sharding_plan import construct_module_sharding_plan, row_wise, table_wise
    from torchrec.distributed.types import ShardingPlan

    if kind not in SHARD_KINDS:
        raise ConfigError(f"unknown --shard {kind!r}; use one of {', '.join(SHARD_KINDS)}")
    sizes = table_bytes(tables)
    table_of = dict(zip(tables.field_names, tables.table_names, strict=True))
    if kind == "auto":
        return _planned(tables, the_sharder, world, rank_memory)
    if kind == "table_wise":
        held = [0] * world
        placement = {}
        for field in sorted(sizes, key=lambda f: (-sizes[f], f)):
            rank = min(range(world), key=lambda r: (held[r], r))
            held[rank] += sizes[field]
            placement[table_of[field]] = table_wise(rank=rank, compute_kernel=FUSED)
        per_rank = held
        what, fix = "the largest table", "raise --rank-memory, use more processes or --shard row_wise"
    else:
        placement = {table_of[f]: row_wise(compute_kernel=FUSED) for f in sizes}
        per_rank = [sum(-(-tables.num_rows()[f] // world) * tables.embedding_dim * 4 for f in sizes)] * world
        what, fix = "a row block of every table", "raise --rank-memory or use more processes"
    if rank_memory is not None and max(per_rank) > rank_memory:
        raise ConfigError(f"--shard {kind} does not fit: rank {per_rank.index(max(per_rank))} would hold "
                          f"{max(per_rank)} table bytes ({what} included), over the per-rank cap of {rank_memory}; "
                          f"{fix}")
    module_plan = construct_module_sharding_plan(tables.ebc, placement, sharder=the_sharder, local_size=world,
                                                 world_size=world, device_type="cpu")
    return ShardingPlan({EMBEDDING_PATH: module_plan})


def _planned(tables: TorchRecTables, the_sharder: Any, world: int, rank_memory: int | None) -> Any:
    from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
    from torchrec.distributed.planner.types import ParameterConstraints, PlannerError

    options: dict[str, Any] = {"world_size": world, "compute_device": "cpu", "local_world_size": world}
    if rank_memory is not None:
        options["ddr_cap"] = int(rank_memory)
    # sharded placements only: a data-parallel table would be replicated on every rank
    allowed = ["table_wise", "row_wise", "column_wise", "table_row_wise", "table_column_wise"]
    constraints = {name: ParameterConstraints(sharding_types=allowed) for name in tables.table_names}
    planner = EmbeddingShardingPlanner(topology=Topology(**options), constraints=constraints)
    holder = nn.Module()
    holder.embedding = nn.Module()
    holder.embedding.ebc = tables.ebc
    try:
        if dist.is_initialized():
            return planner.collective_plan(holder, [the_sharder], dist.GroupMember.WORLD)
        return planner.plan(holder, [the_sharder])
    except PlannerError as error:
        first = str(error).strip().splitlines()[0].rstrip(". ") if str(error).strip() else type(error).__name__
        raise ConfigError(f"--shard auto found no plan that fits ({first[:200]}); raise --rank-memory or use more "
                          "processes") from None


class FieldsAndLogits(nn.Module):
    """What DMP wraps: batch → field vectors (B, F, D) and logits (B, T) of a sharkrec DLRM (``.model``)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Any) -> tuple[Tensor, Tensor]:
        vectors = self.model.field_vectors(batch)
        return vectors, self.model.logits_from_fields(vectors)


def shard_model(model: Any, kind: str, *, optimizer: str = "adagrad", lr: float = 0.01,
                rank_memory: int | None = None) -> tuple[Any, Any]:
    """(``DistributedModelParallel`` over ``model``'s :class:`FieldsAndLogits`, the plan): tables sharded by
    ``kind``, the dense network data-parallel (DDP). ``model`` holds one :class:`TorchRecTables` on ``meta``."""
    from sharkrec import distributed

    tables = _tables_of(model)
    the_sharder = sharder(optimizer, lr)
    plan = sharding_plan(tables, kind, the_sharder, distributed.world_size(), rank_memory)
    return wrap_sharded(model, plan, the_sharder)


def wrap_sharded(model: Any, plan: Any, the_sharder: Any) -> tuple[Any, Any]:
    """DMP over ``FieldsAndLogits(model)`` with ``plan``'s one module plan placed at the tables' path."""
    from torchrec.distributed import DistributedModelParallel
    from torchrec.distributed.types import ShardingEnv, ShardingPlan

    wrapper = FieldsAndLogits(model)
    tables = _tables_of(wrapper)
    path = next(f"{name}.ebc" for name, m in wrapper.named_modules() if m is tables)
    plan = ShardingPlan({path: next(iter(plan.plan.values()))})
    group = dist.GroupMember.WORLD if dist.is_initialized() else _single_group()
    dmp = DistributedModelParallel(wrapper, env=ShardingEnv.from_process_group(group), device=torch.device("cpu"),
                                   plan=plan, sharders=[the_sharder])
    return dmp, plan


def _tables_of(model: Any) -> TorchRecTables:
    found = [m for m in model.modules() if isinstance(m, TorchRecTables)]
    if len(found) != 1:
        raise ConfigError("the model has no TorchRecTables to shard; build it with sharkrec.train.sharded")
    return found[0]


def _single_group() -> Any:
    """A one-process gloo group (DMP needs a group even with one rank)."""
    import os

    from sharkrec.distributed import init_from_env

    init_from_env()
    if not dist.is_initialized():
        store = dist.HashStore()
        os.environ.setdefault("LOCAL_WORLD_SIZE", "1")
        dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    return dist.GroupMember.WORLD


@torch.no_grad()
def gather_tables(tables: TorchRecTables, dst: int = 0) -> dict[str, Tensor] | None:
    """The whole (R, D) tables on rank ``dst`` (``None`` elsewhere), one table at a time: every rank sends its
    local shards (row / column offsets and values) to ``dst``, which writes them into place. Only ``dst`` ever
    holds a whole table."""
    from sharkrec import distributed

    world, rank = distributed.world_size(), distributed.rank()
    out: dict[str, Tensor] | None = {} if rank == dst else None
    for field, shards in local_shards(tables).items():
        header = torch.tensor([[r, c, t.shape[0], t.shape[1]] for (r, c), t in shards], dtype=torch.int64)
        payload = torch.cat([t.detach().float().reshape(-1) for _, t in shards]) if shards else torch.zeros(0)
        if world == 1:
            headers, payloads = [header.reshape(-1, 4)], [payload]
        else:
            headers = distributed.all_gather_varsize(header.reshape(-1, 4))  # a few ints per rank
            sizes = [int((h[:, 2] * h[:, 3]).sum()) for h in headers]
            padded = torch.zeros(max(sizes))
            padded[: payload.numel()] = payload
            received = [torch.zeros(max(sizes)) for _ in range(world)] if rank == dst else None
            dist.gather(padded, received, dst=dst)
            payloads = [part[:n] for part, n in zip(received, sizes, strict=True)] if received is not None else []
        if out is None:
            continue
        whole = torch.zeros(tables.num_rows()[field], tables.embedding_dim)
        for head, flat in zip(headers, payloads, strict=True):
            start = 0
            for r, c, n, d in head.tolist():
                whole[r:r + n, c:c + d] = flat[start:start + n * d].reshape(n, d)
                start += n * d
        out[field] = whole
    return out
