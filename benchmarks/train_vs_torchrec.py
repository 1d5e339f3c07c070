"""sharkrec's training step against TorchRec and plain PyTorch: paired, in one process, same batches.

Workload: synthetic Criteo-shaped data (26 single-hot sparse fields, 13 dense features; the
``train_throughput`` benchmark's data), DLRM with D = 16, bottom MLP (64,) → 16, dot interaction, top MLP
(256, 128) → 1, batch 512, one torch thread. Every contender trains its own copy of the same initial
weights on the same sequence of batches, each in the input form its library takes (sharkrec ``Batch``,
TorchRec ``KeyedJaggedTensor`` built before timing, plain tensors):

Row-wise Adagrad group (tables), Adagrad (dense network), plain BCE loss:

- ``sharkrec``: :class:`sharkrec.train.trainer.Trainer`'s own training step (``Trainer._step``: id checks,
  forward, backward, sparse row-wise Adagrad on the tables, Adagrad on the dense network);
- ``torchrec_fused``: ``torchrec.models.dlrm.DLRM`` over a ``FusedEmbeddingBagCollection`` (fbgemm CPU TBE,
  ``EXACT_ROWWISE_ADAGRAD`` applied inside backward);
- ``torchrec_dmp``: the same DLRM over an ``EmbeddingBagCollection`` wrapped in ``DistributedModelParallel`` in
  one process (gloo, world size 1; tables table-wise on the fused kernel, the dense part in DDP);
- ``torch_embeddingbag``: a hand-written DLRM of ``nn.EmbeddingBag(sparse=True)`` with ``torch.optim.Adagrad``
  (element-wise Adagrad on the sparse gradients).

Adam group (TorchRec's CPU kernels have no Adam): ``sharkrec_adam`` (the Trainer with ``optimizer="adam"``:
lazy Adam on the rows it touches) against ``torch_sparseadam`` (the hand-written DLRM with
``torch.optim.SparseAdam`` on the tables and ``torch.optim.Adam`` on the dense network).

Timing is ABAB: after a warm-up block each, rounds of one block of ``--block`` steps per contender, the order
reversed every other round, all in this process. Machines here are shared, so separate runs swing; the ratio of
two contenders' block times within one round is what separates the implementations. Reported per contender:
samples/s over all its timed blocks; per baseline: the median over rounds of (baseline block seconds / sharkrec
block seconds) — above 1 means sharkrec is faster — and its interquartile range.

    python benchmarks/train_vs_torchrec.py --out benchmarks/results/train_vs_torchrec.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, os.path.dirname(__file__))

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common import environment, write_results
from sharkrec.data.batch import Batch
from sharkrec.data.synthetic import SyntheticConfig, generate
from sharkrec.model import kernels
from sharkrec.model.dlrm import DLRM
from sharkrec.train.run import build_model
from sharkrec.train.trainer import TrainConfig, Trainer

BOTTOM, TOP = (64,), (256, 128)
Step = Callable[[int], float]  # batch position → loss


# ------------------------------------------------------------------------------------------ sharkrec
def sharkrec_step(model: DLRM, optimizer: str, lr: float, task_names: tuple[str, ...],
                  batches: Sequence[Batch]) -> Step:
    """The Trainer's training step, with the plain BCE loss every contender computes (no L2 terms)."""
    config = TrainConfig(optimizer=optimizer, lr=lr, embedding_l2=0.0, weight_decay=0.0, progress=False)
    trainer = Trainer(model, config, task_names)
    model.train()
    return lambda i: trainer._step(batches[i])


# ------------------------------------------------------------------------------------- plain PyTorch
class HandWrittenDLRM(nn.Module):
    """DLRM as one writes it in plain PyTorch: ``nn.EmbeddingBag(sparse=True)`` per field, dot interaction."""

    def __init__(self, source: DLRM) -> None:
        super().__init__()
        d = source.embedding_dim
        self.bags = nn.ModuleList()
        for name in source.sparse_names:
            table = source.embedding.table(name).detach()
            bag = nn.EmbeddingBag(table.shape[0], d, mode="sum", sparse=True)
            with torch.no_grad():
                bag.weight.copy_(table)
            self.bags.append(bag)
        self.bottom = _copy_mlp(source.bottom, relu_last=True)
        self.top = _copy_mlp(source.head, relu_last=False)
        fields = source.num_fields
        rows, cols = torch.triu_indices(fields, fields, offset=1)
        self.register_buffer("pairs", rows * fields + cols, persistent=False)

    def forward(self, dense: Tensor, ids: Sequence[Tensor]) -> Tensor:
        vectors = [self.bottom(dense)] + [bag(i) for bag, i in zip(self.bags, ids, strict=True)]  # F × (B, D)
        stacked = torch.stack(vectors, dim=1)  # (B, F, D)
        dots = torch.bmm(stacked, stacked.transpose(1, 2)).flatten(1).index_select(1, self.pairs)
        return self.top(torch.cat([vectors[0], dots], dim=1))  # (B, 1)


def _copy_mlp(module: nn.Module | None, relu_last: bool) -> nn.Sequential:
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)] if module is not None else []
    layers: list[nn.Module] = []
    for k, linear in enumerate(linears):
        copy = nn.Linear(linear.in_features, linear.out_features)
        with torch.no_grad():
            copy.weight.copy_(linear.weight)
            copy.bias.copy_(linear.bias)
        layers.append(copy)
        if relu_last or k < len(linears) - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def hand_written_step(source: DLRM, optimizer: str, lr: float, batches: Sequence[Batch]) -> Step:
    model = HandWrittenDLRM(source).train()
    tables = [bag.weight for bag in model.bags]
    dense = [p for name, p in model.named_parameters() if not name.startswith("bags.")]
    if optimizer == "adam":
        optimizers = [torch.optim.Adam(dense, lr=lr), torch.optim.SparseAdam(tables, lr=lr)]
    else:
        optimizers = [torch.optim.Adagrad(dense, lr=lr), torch.optim.Adagrad(tables, lr=lr)]
    inputs = [(b.dense, [f.values.view(-1, 1) for f in b.sparse], b.labels) for b in batches]

    def step(i: int) -> float:
        dense_x, ids, labels = inputs[i]
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        loss = F.binary_cross_entropy_with_logits(model(dense_x, ids), labels)
        loss.backward()
        for opt in optimizers:
            opt.step()
        return float(loss.detach())

    return step


# -------------------------------------------------------------------------------------------- TorchRec
def torchrec_available() -> str | None:
    """``None`` when torchrec and fbgemm import, else why not."""
    try:
        import fbgemm_gpu  # noqa: F401
        import torchrec  # noqa: F401
    except Exception as error:  # any import failure means: skip
        return f"{type(error).__name__}: {error}"
    return None


def _table_configs(source: DLRM) -> list[Any]:
    from torchrec import EmbeddingBagConfig, PoolingType

    return [EmbeddingBagConfig(name=f"t{k}", embedding_dim=source.embedding_dim, feature_names=[name],
                               num_embeddings=rows, pooling=PoolingType.SUM)
            for k, (name, rows) in enumerate(source.field_rows().items())]


def _torchrec_dlrm(source: DLRM, collection: nn.Module) -> nn.Module:
    """``torchrec.models.dlrm.DLRM`` over ``collection``, with ``source``'s dense weights."""
    from torchrec.models.dlrm import DLRM as TorchRecDLRM

    model = TorchRecDLRM(embedding_bag_collection=collection, dense_in_features=source.num_dense,
                         dense_arch_layer_sizes=[*BOTTOM, source.embedding_dim], over_arch_layer_sizes=[*TOP, 1])
    with torch.no_grad():
        for mine, theirs in ((source.bottom, model.dense_arch), (source.head, model.over_arch)):
            ours = [m for m in mine.modules() if isinstance(m, nn.Linear)]
            their = [m for m in theirs.modules() if isinstance(m, nn.Linear)]
            for a, b in zip(ours, their, strict=True):
                b.weight.copy_(a.weight)
                b.bias.copy_(a.bias)
    return model


def _kjts(source: DLRM, batches: Sequence[Batch]) -> list[Any]:
    from torchrec import KeyedJaggedTensor

    names = list(source.sparse_names)
    return [KeyedJaggedTensor.from_lengths_sync(
        keys=names, values=torch.cat([f.values for f in b.sparse]),
        lengths=torch.ones(len(names) * len(b), dtype=torch.int64)) for b in batches]


def _torchrec_step(model: nn.Module, lr: float, batches: Sequence[Batch], kjts: Sequence[Any]) -> Step:
    from torchrec.optim.keyed import KeyedOptimizerWrapper
    from torchrec.optim.optimizers import in_backward_optimizer_filter

    dense = KeyedOptimizerWrapper(dict(in_backward_optimizer_filter(model.named_parameters())),
                                  lambda params: torch.optim.Adagrad(params, lr=lr))
    model.train()

    def step(i: int) -> float:
        dense.zero_grad()
        loss = F.binary_cross_entropy_with_logits(model(batches[i].dense, kjts[i]), batches[i].labels)
        loss.backward()  # the tables' row-wise Adagrad runs inside backward
        dense.step()
        return float(loss.detach())

    return step


def torchrec_fused_step(source: DLRM, lr: float, batches: Sequence[Batch]) -> Step:
    from torchrec.modules.fused_embedding_modules import FusedEmbeddingBagCollection
    from torchrec.optim import RowWiseAdagrad

    collection = FusedEmbeddingBagCollection(tables=_table_configs(source), optimizer_type=RowWiseAdagrad,
                                             optimizer_kwargs={"lr": lr, "eps": 1e-8}, device=torch.device("cpu"))
    with torch.no_grad():
        for k, name in enumerate(source.sparse_names):
            collection.state_dict()[f"embedding_bags.t{k}.weight"].copy_(source.embedding.table(name))
    return _torchrec_step(_torchrec_dlrm(source, collection), lr, batches, _kjts(source, batches))


def torchrec_dmp_step(source: DLRM, lr: float, batches: Sequence[Batch]) -> Step:
    from torchrec import EmbeddingBagCollection
    from torchrec.distributed import DistributedModelParallel
    from torchrec.distributed.sharding_plan import construct_module_sharding_plan, table_wise
    from torchrec.distributed.types import ShardingEnv, ShardingPlan

    from sharkrec.interop.sharding import FUSED, _single_group, sharder

    configs = _table_configs(source)
    model = _torchrec_dlrm(source, EmbeddingBagCollection(tables=configs, device=torch.device("meta")))
    the_sharder = sharder("adagrad", lr)  # EXACT_ROWWISE_ADAGRAD, eps 1e-8
    module_plan = construct_module_sharding_plan(
        model.sparse_arch.embedding_bag_collection, {c.name: table_wise(rank=0, compute_kernel=FUSED) for c in configs},
        sharder=the_sharder, local_size=1, world_size=1, device_type="cpu")
    dmp = DistributedModelParallel(model, env=ShardingEnv.from_process_group(_single_group()),
                                   device=torch.device("cpu"), sharders=[the_sharder],
                                   plan=ShardingPlan({"sparse_arch.embedding_bag_collection": module_plan}))
    with torch.no_grad():
        state = dmp.state_dict()
        for k, name in enumerate(source.sparse_names):
            weight = state[f"sparse_arch.embedding_bag_collection.embedding_bags.t{k}.weight"]
            local = weight.local_shards()[0].tensor if hasattr(weight, "local_shards") else weight
            local.copy_(source.embedding.table(name))
    return _torchrec_step(dmp, lr, batches, _kjts(source, batches))


# ------------------------------------------------------------------------------------------- timing
def paired_rounds(steps: dict[str, Step], count: int, rounds: int, block: int
                  ) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, float]]:
    """Wall and CPU seconds of every timed block per contender: one warm-up block each, then ``rounds`` rounds of
    one block each (order reversed every other round); every contender walks the same batch sequence. Also the
    loss of each contender's last warm-up step (the same math gives the same loss there; later, float-order
    differences between implementations grow, as they do between any two sum orders over many steps)."""
    names = list(steps)
    cursor = dict.fromkeys(names, 0)
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}

    last_loss: dict[str, float] = {}

    def run_block(name: str) -> tuple[float, float]:
        started, started_cpu = time.perf_counter(), time.process_time()
        for _ in range(block):
            last_loss[name] = steps[name](cursor[name] % count)
            cursor[name] += 1
        return time.perf_counter() - started, time.process_time() - started_cpu

    for name in names:
        run_block(name)
    warm_losses = dict(last_loss)
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            seconds, cpu_seconds = run_block(name)
            wall[name].append(seconds)
            cpu[name].append(cpu_seconds)
        print(f"  round {r + 1}/{rounds}: " + ", ".join(f"{n} {wall[n][-1] * 1e3 / block:.2f} ms" for n in names),
              flush=True)
    return wall, cpu, warm_losses


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, median, q3


def paired(times: dict[str, list[float]], ours: str) -> dict[str, dict[str, Any]]:
    """Per baseline: median and quartiles over rounds of baseline seconds / ours (> 1: ours faster)."""
    out = {}
    for name, theirs in times.items():
        if name == ours:
            continue
        ratios = [a / b for a, b in zip(theirs, times[ours], strict=True)]
        q1, median, q3 = quartiles(ratios)
        out[name] = {"median_ratio": median, "q1": q1, "q3": q3, "iqr": q3 - q1, "rounds": len(ratios),
                     "rounds_faster": sum(r > 1 for r in ratios)}
    return out


def summarize(wall: dict[str, list[float]], cpu: dict[str, list[float]], ours: str, batch_size: int,
              block: int) -> dict[str, Any]:
    """samples/s (wall, all timed blocks), median ms per step, and the paired ratios on wall and on CPU time (one
    thread: CPU time leaves out the time other processes on the machine took the core)."""
    return {
        "samples_per_second": {n: batch_size * block * len(t) / sum(t) for n, t in wall.items()},
        "ms_per_step_median": {n: statistics.median(t) * 1e3 / block for n, t in wall.items()},
        "cpu_ms_per_step_median": {n: statistics.median(t) * 1e3 / block for n, t in cpu.items()},
        "vs": paired(wall, ours),
        "vs_cpu": paired(cpu, ours),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=600_000, help="synthetic samples (tables up to rows/4 values)")
    parser.add_argument("--batches", type=int, default=100, help="distinct batches the contenders cycle through")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--block", type=int, default=25, help="steps per timed block")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--groups", nargs="+", default=["adagrad", "adam"], choices=["adagrad", "adam"])
    parser.add_argument("--out", default="benchmarks/results/train_vs_torchrec.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = generate(SyntheticConfig(rows=args.rows, seed=0, max_cardinality=1_000_000)).data
    names = data.schema.label_names
    batches = [b for _, b in zip(range(args.batches), data.train.batches(512, shuffle=True, seed=0), strict=False)]
    source = build_model(data, seed=0, embedding_dim=16, bottom_mlp=BOTTOM, top_mlp=TOP)

    def fresh() -> DLRM:
        import copy

        return copy.deepcopy(source)

    if kernels.extension() is None:
        print("note: sharkrec's C++ training kernels are not built (no compiler, or SHARKREC_NO_EXTENSION=1): "
              "sharkrec runs its PyTorch fallbacks", flush=True)
    skipped = torchrec_available()
    if skipped is not None:
        print(f"note: TorchRec contenders skipped (torchrec / fbgemm_gpu not importable: {skipped}); install with "
              "pip install --no-deps fbgemm-gpu-cpu==1.8.0 torchrec==1.8.0", flush=True)
    groups: dict[str, dict[str, Any]] = {}
    for group in args.groups:
        if group == "adagrad":
            steps: dict[str, Step] = {"sharkrec": sharkrec_step(fresh(), "adagrad", args.lr, names, batches)}
            if skipped is None:
                steps["torchrec_fused"] = torchrec_fused_step(source, args.lr, batches)
                steps["torchrec_dmp"] = torchrec_dmp_step(source, args.lr, batches)
            steps["torch_embeddingbag"] = hand_written_step(source, "adagrad", args.lr, batches)
            ours = "sharkrec"
        else:
            steps = {"sharkrec_adam": sharkrec_step(fresh(), "adam", args.lr, names, batches),
                     "torch_sparseadam": hand_written_step(source, "adam", args.lr, batches)}
            ours = "sharkrec_adam"
        print(f"{group}: {', '.join(steps)}", flush=True)
        wall, cpu, warm_losses = paired_rounds(steps, len(batches), args.rounds, args.block)
        groups[group] = {"ours": ours, **summarize(wall, cpu, ours, 512, args.block), "block_seconds": wall,
                         "block_cpu_seconds": cpu, f"loss_at_step_{args.block}": warm_losses}
    payload = {
        "benchmark": "train_vs_torchrec",
        "environment": environment(),
        "setup": {"rows": args.rows, "batch_size": 512, "embedding_dim": 16, "bottom_mlp": list(BOTTOM),
                  "top_mlp": list(TOP), "sparse_fields": len(data.cardinalities), "dense_features": 13,
                  "table_rows": int(sum(data.cardinalities.values())), "threads": args.threads, "lr": args.lr,
                  "block_steps": args.block, "rounds": args.rounds, "distinct_batches": len(batches),
                  "loss": "BCE (no L2 terms)", "torchrec_skipped": skipped,
                  "sharkrec_kernels": kernels.extension() is not None},
        "groups": groups,
    }
    write_results(args.out, payload, markdown(payload))
    print(markdown(payload))


def markdown(payload: dict[str, Any]) -> str:
    setup = payload["setup"]
    lines = [f"DLRM D={setup['embedding_dim']}, batch {setup['batch_size']}, {setup['threads']} thread(s), "
             f"{setup['rounds']} ABAB rounds of {setup['block_steps']} steps, same batches and initial weights. "
             "Ratio = baseline block time / sharkrec block time in the same round (> 1: sharkrec faster), median "
             "and IQR over rounds; wall clock, and CPU time of the process (robust to other load on the cores).", "",
             "| group | contender | samples/s | ms/step | sharkrec vs this (wall) | IQR | sharkrec vs this (CPU) |"
             " IQR |", "|---|---|---:|---:|---:|---|---:|---|"]
    for group, result in payload["groups"].items():
        for name, rate in result["samples_per_second"].items():
            cells = []
            for key in ("vs", "vs_cpu"):
                vs = result[key].get(name)
                cells += ["—", "—"] if vs is None else [f"{vs['median_ratio']:.3f}x", f"{vs['q1']:.3f}–{vs['q3']:.3f}"]
            lines.append(f"| {group} | {name} | {rate:,.0f} | {result['ms_per_step_median'][name]:.2f} | "
                         + " | ".join(cells) + " |")
    if setup["torchrec_skipped"]:
        lines += ["", f"TorchRec contenders skipped: {setup['torchrec_skipped']}"]
    if not setup["sharkrec_kernels"]:
        lines += ["", "sharkrec ran without its C++ training kernels (PyTorch fallbacks)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
