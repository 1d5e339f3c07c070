"""Train, score, prune and export a sharkrec DLRM whose tables are sharded across torchrun ranks (TorchRec DMP).

``sharkrec train --shard table_wise|row_wise|auto`` runs :func:`train_sharded`: the DLRM's tables are one
TorchRec ``EmbeddingBagCollection`` (:class:`~sharkrec.interop.sharding.TorchRecTables`) sharded by
``DistributedModelParallel``; the dense network is data-parallel (DDP inside DMP). Each rank holds only its
shards (``report["memory"]["embedding_bytes_per_rank"]``: bytes of the local shard tensors).

Batches (W ranks, per-rank batch B): every epoch one seeded permutation of the whole training split (the
same on every rank) is cut into global batches of W·B samples; rank r takes the r-th B of each. The last
partial global batch is left out. One process with batch W·B therefore sees exactly the same global batches,
and because DMP averages the table gradients over ranks like DDP averages the dense ones, a W-rank run and a
1-process run of batch W·B take the same steps (within float rounding; ``tests/train/test_sharded.py``).

Export gathers the shards table by table onto rank 0 (:func:`~sharkrec.interop.sharding.gather_tables`) and
writes one ordinary sharkrec model file (fp32 tables, or a pruned layer around them) and its serving
artifact: ``sharkrec.load``, ``export`` and serving read them unchanged. F-Permutation (:func:`field_scores`)
and pruning (:func:`prune_sharded`) work on the sharded model; F-Quantization of its shards after training is
:mod:`sharkrec.quant.sharded`, during training :mod:`sharkrec.train.sharded_fq`. Validation, early stopping,
checkpoints and ``--resume``: :mod:`sharkrec.train.sharded_loop`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from sharkrec import distributed
from sharkrec.data.dataset import EncodedSplit, PreparedData
from sharkrec.errors import ConfigError, DataError
from sharkrec.interop.sharding import TorchRecTables, gather_tables, init_shards, local_shards, shard_model, table_bytes
from sharkrec.io import write_json
from sharkrec.model.dlrm import DLRM
from sharkrec.model.embedding import FloatEmbedding, layers, replace_storage
from sharkrec.train.metrics import task_metrics
from sharkrec.train.trainer import TrainConfig

REPORT_FILE = "report.json"
MODEL_FILE = "model.pt"
ARTIFACT_DIR = "artifact"


class ShardedDLRM:
    """A sharkrec DLRM with TorchRec-sharded tables: ``dmp`` (for training steps) and ``model`` (its inner DLRM:
    ``field_vectors`` / ``logits_from_fields``, collective: every rank must call them in step)."""

    def __init__(self, dmp: Any, plan: Any, kind: str) -> None:
        self.dmp = dmp
        self.plan = plan
        self.kind = kind

    @property
    def model(self) -> DLRM:
        return self.dmp.module.model

    @property
    def tables(self) -> TorchRecTables:
        return next(m for m in self.model.modules() if isinstance(m, TorchRecTables))

    def sharding(self) -> dict[str, Any]:
        """``{field: {"type", "ranks", "kernel"}}`` of the plan."""
        module_plan = next(iter(self.plan.plan.values()))
        names = dict(zip(self.tables.table_names, self.tables.field_names, strict=True))
        return {names[t]: {"type": p.sharding_type, "ranks": list(p.ranks or []), "kernel": p.compute_kernel}
                for t, p in module_plan.items()}

    # ---------------------------------------------------------------- the training loop's interface
    def observe(self, batch: Any) -> None:
        """Nothing to count before an fp32 step."""

    def forward(self, batch: Any) -> tuple[Tensor, Tensor]:
        return self.dmp(batch)

    def table_optimizer(self, config: Any) -> None:
        return None  # fused into the kernels

    def signature(self) -> dict[str, Any]:
        return {"kind": self.kind, "world": distributed.world_size(), "plan": self.sharding()}

    @torch.no_grad()
    def table_state(self, optimizer: Any = None) -> dict[str, Any]:
        """This rank's shards and their fused optimizer state (copies)."""
        rows = {field: [t.detach().clone() for _, t in shards] for field, shards in local_shards(self.tables).items()}
        return {"rows": rows, "optimizer": {key: {name: [t.clone() for t in _local(value)]
                                                  for name, value in state.items()}
                                            for key, state in self.dmp.fused_optimizer.state_dict()["state"].items()}}

    @torch.no_grad()
    def load_table_state(self, state: dict[str, Any], optimizer: Any = None) -> None:
        for field, shards in local_shards(self.tables).items():
            for (_, tensor), saved in zip(shards, state["rows"][field], strict=True):
                tensor.copy_(saved)
        for key, entries in self.dmp.fused_optimizer.state_dict()["state"].items():
            for name, value in entries.items():
                for tensor, saved in zip(_local(value), state["optimizer"][key][name], strict=True):
                    tensor.copy_(saved)

    def memory(self) -> dict[str, Any]:
        """Bytes of table tensors each rank holds (gathered), next to the fp32 bytes of the whole tables."""
        held = torch.tensor([self.tables.embedding_bytes()], dtype=torch.int64)
        per_rank = [int(t) for t in distributed.all_gather_varsize(held)]
        total = sum(table_bytes(self.tables).values())
        constants = sum(int(t.numel() * t.element_size()) for layer in layers(self.model.embedding)
                        for t in layer.constant_vectors().values())
        rows = sum(self.tables.num_rows().values())
        return {"embedding_bytes": sum(per_rank) + constants, "embedding_bytes_fp32": total, "embedding_rows": rows,
                "embedding_bytes_per_rank": per_rank, "constant_bytes": constants,
                "share_per_rank": [b / total if total else 0.0 for b in per_rank]}


def _local(value: Any) -> list[Tensor]:
    """The local tensors of a (sharded) optimizer state value."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    if isinstance(value, ShardedTensor):
        return [s.tensor for s in value.local_shards()]
    return [value] if isinstance(value, Tensor) else []


def build_sharded(data: PreparedData, kind: str, *, seed: int = 0, optimizer: str = "adagrad", lr: float = 0.05,
                  rank_memory: int | None = None, model_options: dict[str, Any] | None = None) -> ShardedDLRM:
    """A fresh DLRM for ``data`` with its tables sharded by ``kind`` (dense weights seeded by ``seed``)."""
    from sharkrec.train.run import model_config_for

    config = model_config_for(data, **(model_options or {}))
    torch.manual_seed(seed)
    model = DLRM(config, embedding=TorchRecTables(dict(config.field_rows), config.embedding_dim))
    dmp, plan = shard_model(model, kind, optimizer=optimizer, lr=lr, rank_memory=rank_memory)
    sharded = ShardedDLRM(dmp, plan, kind)
    init_shards(sharded.tables, seed)
    return sharded


def shard_trained(model: DLRM, kind: str, rank_memory: int | None = None) -> ShardedDLRM:
    """A trained one-process DLRM with fp32 tables (e.g. a loaded ``model.pt``) sharded by ``kind``: dense weights
    copied, every rank copies its shards from ``model``'s tables (which the caller can then let go)."""
    if model.embedding.kind != "float":
        raise ConfigError(f"--shard scores a model with fp32 tables; this one has {model.embedding.kind!r} tables: "
                          "score it without --shard")
    tables = TorchRecTables(model.embedding.num_rows(), model.embedding.embedding_dim)
    clone = _rebuilt(model, tables)
    dmp, plan = shard_model(clone, kind, rank_memory=rank_memory)
    sharded = ShardedDLRM(dmp, plan, kind)
    init_shards(sharded.tables, 0, source={f: model.embedding.table(f) for f in tables.field_names})
    return sharded


def global_batches(split: EncodedSplit, batch_size: int, epoch: int, seed: int) -> list[Tensor]:
    """This rank's sample indices of every global batch of one epoch (see the module docstring)."""
    world, rank = distributed.world_size(), distributed.rank()
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed * 1000 + epoch))
    step = world * batch_size
    count = len(split) // step
    if count == 0:
        raise DataError(f"the training split has {len(split)} samples, fewer than one global batch of {world} x "
                        f"{batch_size}; use a smaller --batch-size or fewer processes")
    return [order[k * step + rank * batch_size:k * step + (rank + 1) * batch_size] for k in range(count)]


def fit(sharded: ShardedDLRM, data: PreparedData, config: TrainConfig, out_dir: str | Path | None = None,
        resume: bool = False) -> dict[str, Any]:
    """Train (:func:`sharkrec.train.sharded_loop.run_training`: validation, early stopping, checkpoints); the
    tables' fused optimizer steps inside ``backward``."""
    from sharkrec.train.sharded_loop import run_training

    return run_training(sharded, data, config, out_dir, resume)


@torch.no_grad()
def predict(model: Any, split: EncodedSplit, batch_size: int = 8192) -> np.ndarray:
    """Probabilities (N, T) of the whole split; every rank calls it with the same split (lookups are collective)."""
    was = model.training
    model.eval()
    out = [torch.sigmoid(model(b)) for b in split.batches(batch_size)]
    model.train(was)
    return torch.cat(out).numpy() if out else np.zeros((0, split.num_tasks), dtype=np.float32)


def export_model(sharded: ShardedDLRM) -> DLRM | None:
    """On rank 0: a plain sharkrec DLRM (fp32 tables gathered from every rank, the same wrappers around them);
    ``None`` on the other ranks. Collective."""
    tables = gather_tables(sharded.tables)
    if tables is None:
        return None
    store = FloatEmbedding.from_tables(tables)
    model = sharded.model
    return model.with_embedding(replace_storage(model.embedding, store)).eval()


def finish_run(sharded: Any, data: PreparedData, config: TrainConfig, out_dir: str | Path | None,
               training: dict[str, Any], exported: Any, started: float, *, sharding: dict[str, Any],
               model_config: dict[str, Any]) -> dict[str, Any]:
    """The end of a sharded training run (fp32 or F-Q): valid / test metrics of the sharded model, per-rank
    bytes, the largest difference of the gathered ``exported`` model (rank 0) from the sharded one, and on
    rank 0 with ``out_dir``: ``model.pt``, ``artifact/`` (what ``sharkrec.load`` reads) and ``report.json``."""
    from sharkrec.export.artifact import save_artifact
    from sharkrec.train.checkpoint import save_model

    metrics, outputs = {}, {}
    for name in ("valid", "test"):
        split = data.split(name)
        if len(split):
            outputs[name] = predict(sharded.model, split, config.eval_batch_size)
            metrics[name] = task_metrics(split.labels.numpy(), outputs[name], data.schema.label_names)
    report: dict[str, Any] = {
        "command": "train", "metrics": metrics, "memory": sharded.memory(), "training": training,
        "sharding": {"kind": sharding["kind"], "tables": sharded.sharding(), **sharding},
        "config": model_config, "distributed": distributed.summary(),
    }
    if exported is not None and "test" in outputs:  # the saved model answers like the sharded one
        one = predict(exported, data.test, config.eval_batch_size)
        report["export_max_abs_diff"] = float(np.abs(one - outputs["test"]).max())
    report["seconds"] = time.perf_counter() - started
    if out_dir is not None and exported is not None:
        out = Path(out_dir)
        save_model(out / MODEL_FILE, exported, data.schema, data.vocabularies,
                   info={"train_config": config.to_dict(), "metrics": metrics, "sharding": report["sharding"]})
        save_artifact(exported, data.schema, data.vocabularies, out / ARTIFACT_DIR)
        write_json(out / REPORT_FILE, report)
    return report


def train_sharded(data: PreparedData, config: TrainConfig, out_dir: str | Path | None = None, *, shard: str,
                  rank_memory: int | None = None, model_options: dict[str, Any] | None = None,
                  resume: bool = False) -> tuple[ShardedDLRM, dict[str, Any]]:
    """``sharkrec train --shard``: build, train, evaluate (test and valid), report per-rank bytes; with ``out_dir``
    rank 0 writes ``model.pt`` (the gathered model), ``artifact/`` (its serving artifact) and ``report.json``."""
    started = time.perf_counter()
    with distributed.hold_output(out_dir, "train"):
        sharded = build_sharded(data, shard, seed=config.seed, optimizer=config.optimizer.value,
                                lr=config.embedding_lr or config.lr, rank_memory=rank_memory,
                                model_options=model_options)
        training = fit(sharded, data, config, out_dir, resume)
        optimizer = "sgd" if config.optimizer.value == "sgd" else "rowwise-adagrad"
        report = finish_run(sharded, data, config, out_dir, training, export_model(sharded), started,
                            sharding={"kind": shard, "rank_memory": rank_memory, "embedding_optimizer": optimizer},
                            model_config={"train": config.to_dict(), "model": sharded.model.config.to_dict()})
        distributed.barrier()
    return sharded, report


def lockstep(split: EncodedSplit, batch_size: int) -> tuple[list[Any], int]:
    """This rank's whole batches (:func:`~sharkrec.distributed.shard_batches`), padded with copies of its first
    batch to the longest rank's count (sharded lookups are collective: every rank must look up in step), and
    how many are real."""
    local = distributed.shard_batches(split, batch_size, "scored split")
    batches = list(local.batches(batch_size, shuffle=False))
    longest = _max_over_ranks(len(batches)) if distributed.is_distributed() else len(batches)
    return batches + [batches[0]] * (longest - len(batches)), len(batches)


def _max_over_ranks(value: int) -> int:
    tensor = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor)


def field_scores(sharded: ShardedDLRM | DLRM, split: EncodedSplit, *, batch_size: int = 4096,
                 method: str = "taylor2") -> Any:
    """F-Permutation (``taylor``, ``taylor-abs`` or ``taylor2``) of a sharded model (a :class:`ShardedDLRM`, or a
    DLRM whose lookups are collective, e.g. :func:`sharkrec.quant.sharded.tiered_model`): the same sums as
    :mod:`sharkrec.importance.taylor` (E_i, Σ_i all-reduced, per-block means gathered in rank order), so the
    scores equal one process's on the gathered model."""
    from sharkrec.importance.base import block_means, block_size, make_result
    from sharkrec.importance.taylor import logit_jacobians, taylor_terms

    if method not in ("taylor", "taylor-abs", "taylor2"):
        raise ConfigError(f"a sharded model is scored with taylor, taylor-abs or taylor2, not {method!r}")
    model = sharded.model if isinstance(sharded, ShardedDLRM) else sharded
    model.eval()
    started = time.perf_counter()
    batches, real = lockstep(split, batch_size)
    # statistics pass (as taylor.field_statistics): shifted sums in float64, all-reduced
    total = outer = shift = None
    for number, batch in enumerate(batches):
        with torch.no_grad():
            vectors = model.field_vectors(batch)
        if shift is None:
            shift = distributed.broadcast(vectors.mean(0).contiguous())
        if number >= real:
            continue
        centred = (vectors - shift).transpose(0, 1)  # (F, B, D)
        batch_outer = torch.bmm(centred.transpose(1, 2), centred).double()
        batch_total = centred.double().sum(1)
        total = batch_total if total is None else total + batch_total
        outer = batch_outer if outer is None else outer + batch_outer
    assert total is not None and outer is not None and shift is not None
    held = float(sum(len(b) for b in batches[:real]))  # this rank's samples
    total, outer, count = distributed.all_reduce_sum(total, outer, torch.tensor(held, dtype=torch.float64))
    centred_mean = total / count
    covariance = outer / count - torch.einsum("fd,fe->fde", centred_mean, centred_mean)
    mean = centred_mean + shift.double()
    weights_t = torch.ones(model.num_tasks)
    block = block_size(len(split), batch_size)
    rows, sizes = [], []
    for number, batch in enumerate(batches):
        with torch.no_grad():
            vectors = model.field_vectors(batch)
        if number >= real:
            continue
        logits, jacobians = logit_jacobians(model, vectors)
        terms = taylor_terms(logits, batch.labels, vectors, jacobians, mean, covariance, None, weights_t)
        means, counts = block_means(terms[method], block)
        rows.append(means)
        sizes.append(counts)
    weights = distributed.gather_rows(np.concatenate(sizes))
    raw = distributed.gather_rows(np.concatenate(rows))
    positions = list(range(model.num_fields))
    return make_result(method, model.field_names, positions, raw, weights, len(split),
                       time.perf_counter() - started, 2.0 + model.num_tasks)


def prune_sharded(sharded: ShardedDLRM, remove: list[str], split: EncodedSplit, *, batch_size: int = 4096,
                  optimizer: str = "adagrad", lr: float = 0.05) -> ShardedDLRM:
    """The model without the tables of ``remove``: the plan loses those tables (the kept ones keep their ranks
    and shards, copied locally, no gather) and each removed field answers its mean vector E[v_i] over ``split``.
    """
    from torchrec.distributed.sharding_plan import construct_module_sharding_plan
    from torchrec.distributed.types import ShardingPlan

    from sharkrec.interop.sharding import sharder, wrap_sharded
    from sharkrec.prune.embedding import PrunedEmbedding

    model, tables = sharded.model, sharded.tables
    unknown = [f for f in remove if f not in tables.field_names]
    if unknown:
        raise ConfigError(f"cannot remove {unknown}: not a table of the sharded model; tables: "
                          f"{', '.join(tables.field_names)}")
    kept = [f for f in tables.field_names if f not in remove]
    if not kept:
        raise ConfigError("pruning would remove every table; keep at least one field")
    means = _field_means(model, split, batch_size)
    offset = model.num_fields - model.embedding.num_fields  # the dense field comes first
    constants = {f: means[offset + model.embedding.field_names.index(f)].float() for f in remove}
    constants.update({f: v for layer in layers(model.embedding) for f, v in layer.constant_vectors().items()})
    new_tables = TorchRecTables({f: tables.num_rows()[f] for f in kept}, tables.embedding_dim)
    old_plan = next(iter(sharded.plan.plan.values()))
    old_name = dict(zip(tables.field_names, tables.table_names, strict=True))
    new_name = dict(zip(new_tables.field_names, new_tables.table_names, strict=True))
    the_sharder = sharder(optimizer, lr)
    placement = {new_name[f]: _same_sharding(old_plan[old_name[f]]) for f in kept}
    module_plan = construct_module_sharding_plan(new_tables.ebc, placement, sharder=the_sharder,
                                                 local_size=distributed.world_size(),
                                                 world_size=distributed.world_size(), device_type="cpu")
    all_fields = tuple(model.embedding.field_names)
    embedding = PrunedEmbedding(all_fields, new_tables, {f: constants[f] for f in all_fields if f in constants})
    dmp, plan = wrap_sharded(_rebuilt(model, embedding), ShardingPlan({"": module_plan}), the_sharder)
    result = ShardedDLRM(dmp, plan, sharded.kind)
    old_shards = local_shards(tables)
    with torch.no_grad():  # the kept tables keep their ranks and row blocks: every shard is copied where it is
        for field, shards in local_shards(result.tables).items():
            for (_, tensor), (_, source) in zip(shards, old_shards[field], strict=True):
                tensor.copy_(source)
    return result


def _same_sharding(parameter_sharding: Any) -> Any:
    from torchrec.distributed.sharding_plan import row_wise, table_wise

    from sharkrec.interop.sharding import FUSED

    if parameter_sharding.sharding_type == "table_wise":
        return table_wise(rank=int(parameter_sharding.ranks[0]), compute_kernel=FUSED)
    if parameter_sharding.sharding_type == "row_wise":
        return row_wise(compute_kernel=FUSED)
    raise ConfigError(f"pruning re-plans table_wise and row_wise tables, not {parameter_sharding.sharding_type}; "
                      "train with --shard table_wise or row_wise")


def _rebuilt(model: DLRM, embedding: Any) -> DLRM:
    """``model``'s dense weights (copied) around a new embedding layer (not yet sharded)."""
    import copy

    clone = DLRM(model.config, embedding=embedding)
    with torch.no_grad():
        dense = {k: v for k, v in model.state_dict().items() if not k.startswith("embedding.")}
        own = clone.state_dict()
        for key, value in dense.items():
            own[key].copy_(copy.deepcopy(value))
    return clone


@torch.no_grad()
def _field_means(model: DLRM, split: EncodedSplit, batch_size: int) -> Tensor:
    """E over ``split`` of every field vector (F, D), float64, all-reduced (lockstep batches)."""
    batches, real = lockstep(split, batch_size)
    total = None
    for number, batch in enumerate(batches):
        vectors = model.field_vectors(batch).double().sum(0)
        if number < real:
            total = vectors if total is None else total + vectors
    assert total is not None
    held = float(sum(len(b) for b in batches[:real]))
    total, count = distributed.all_reduce_sum(total, torch.tensor(held, dtype=torch.float64))
    return total / count
