"""Time one DLRM training step on a Criteo-shaped model: can sparse updates reach 20k samples/s?

Model: 13 dense features, 26 sparse fields with Criteo Kaggle cardinalities capped at 1M rows
(5.6M rows, 356 MB fp32), D = 16, bottom MLP (64,), top MLP (256, 128), batch 512. Ids are drawn
heavy-tailed (Zipf-like, as in click logs) or uniformly (every lookup a distinct row: worst case).

    python benchmarks/dlrm_step_time.py --threads 2 --out benchmarks/results/dlrm_step_time.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from sharkrec.data.batch import Batch, FieldIds
from sharkrec.model.dlrm import DLRM, DLRMConfig
from sharkrec.model.embedding import FloatEmbedding

CRITEO_ROWS = (1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27,
               14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572)


def make_batches(field_rows: list[int], batch_size: int, count: int, distribution: str, seed: int) -> list[Batch]:
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        sparse = []
        for rows in field_rows:
            u = torch.rand(batch_size, generator=g)
            # u**3 puts most lookups on a small head of rows, as the value frequencies of click logs do
            ids = (u.pow(3) if distribution == "zipf" else u).mul(rows).long().clamp_(max=rows - 1)
            sparse.append(FieldIds(ids))
        batches.append(Batch(torch.randn(batch_size, 13, generator=g), tuple(sparse),
                             torch.randint(0, 2, (batch_size, 1), generator=g).float()))
    return batches


def time_per_batch(step: Callable[[Batch], None], batches: list[Batch], repeats: int) -> dict[str, float]:
    """Seconds per batch over ``repeats`` passes through ``batches``: fastest and median wall time, and
    the median CPU time of the process (all threads).

    On a shared machine other processes stretch wall time but hardly CPU time; with one thread the
    CPU time is the wall time the step would take on a quiet machine.
    """
    for batch in batches[:3]:
        step(batch)
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        for batch in batches:
            step(batch)
        wall.append((time.perf_counter() - start) / len(batches))
        cpu.append((time.process_time() - start_cpu) / len(batches))
    return {"min": min(wall), "median": statistics.median(wall), "cpu": statistics.median(cpu)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--max-rows", type=int, default=1_000_000)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/dlrm_step_time.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    field_rows = [min(r, args.max_rows) for r in CRITEO_ROWS]
    config = DLRMConfig(num_dense=13, field_rows=tuple((f"C{i + 1}", r) for i, r in enumerate(field_rows)),
                        embedding_dim=16, bottom_mlp=(64,), top_mlp=(256, 128))
    embedding = FloatEmbedding(dict(config.field_rows), config.embedding_dim)
    model = DLRM(config, embedding)
    unchecked = model.with_embedding(FloatEmbedding.from_tables(
        {n: embedding.table(n).detach() for n in embedding.field_names}, check_ids=False))

    def forward_backward(net: DLRM) -> Callable[[Batch], None]:
        def step(batch: Batch) -> None:
            net.zero_grad(set_to_none=True)
            F.binary_cross_entropy_with_logits(net(batch), batch.labels).backward()
        return step

    def train_step(sparse_kind: str) -> Callable[[Batch], None]:
        dense_opt = torch.optim.Adam(model.dense_parameters(), lr=0.01)
        sparse_opt: torch.optim.Optimizer = (
            torch.optim.SparseAdam(model.sparse_parameters(), lr=0.01) if sparse_kind == "sparse_adam"
            else torch.optim.Adagrad(model.sparse_parameters(), lr=0.01)
        )

        def step(batch: Batch) -> None:
            dense_opt.zero_grad(set_to_none=True)
            sparse_opt.zero_grad(set_to_none=True)
            F.binary_cross_entropy_with_logits(model(batch), batch.labels).backward()
            dense_opt.step()
            sparse_opt.step()
        return step

    def embedding_forward_backward(batch: Batch) -> None:
        model.zero_grad(set_to_none=True)
        model.embedding(batch.sparse).sum().backward()

    def mlp_forward_backward(batch: Batch) -> None:  # everything but the lookups
        model.zero_grad(set_to_none=True)
        assert model.bottom is not None
        vectors = torch.cat([model.bottom(batch.dense).unsqueeze(1), embedded[id(batch)]], dim=1)
        F.binary_cross_entropy_with_logits(model.logits_from_fields(vectors), batch.labels).backward()

    results: dict[str, object] = {
        "threads": args.threads, "batch_size": args.batch_size, "embedding_dim": 16, "fields": 26, "num_dense": 13,
        "rows": sum(field_rows), "embedding_mb": model.embedding.embedding_bytes() / 2**20,
        "torch": torch.__version__, "machine": platform.processor() or platform.machine(), "timings": {},
    }
    timings: dict[str, dict[str, float]] = {}
    for distribution in ("zipf", "uniform"):
        batches = make_batches(field_rows, args.batch_size, args.batches, distribution, seed=1)
        with torch.no_grad():
            embedded = {id(b): model.embedding(b.sparse).detach().requires_grad_(True) for b in batches}
        cases: dict[str, Callable[[Batch], None]] = {
            "forward_backward": forward_backward(model),
            "forward_backward_no_id_check": forward_backward(unchecked),
            "embedding_forward_backward": embedding_forward_backward,
            "dense_network_forward_backward": mlp_forward_backward,
            "train_step_adam_sparse_adam": train_step("sparse_adam"),
            "train_step_adam_adagrad": train_step("adagrad"),
        }
        for name, step in cases.items():
            seconds = time_per_batch(step, batches, args.repeats)
            timings[f"{distribution}/{name}"] = {
                "ms_per_batch_min": seconds["min"] * 1e3,
                "ms_per_batch_median": seconds["median"] * 1e3,
                "cpu_ms_per_batch": seconds["cpu"] * 1e3,
                "samples_per_s_best": args.batch_size / seconds["min"],
            }
            print(f"{distribution:8s} {name:34s} min {seconds['min'] * 1e3:7.2f} ms  median "
                  f"{seconds['median'] * 1e3:7.2f} ms  cpu {seconds['cpu'] * 1e3:7.2f} ms", flush=True)
        id_check = time_per_batch(lambda b: embedding._check_inputs(b.sparse), batches, args.repeats)
        timings[f"{distribution}/id_check_only"] = {"ms_per_batch_min": id_check["min"] * 1e3,
                                                     "cpu_ms_per_batch": id_check["cpu"] * 1e3}
        print(f"{distribution:8s} {'id_check_only':34s} min {id_check['min'] * 1e3:7.3f} ms  "
              f"cpu {id_check['cpu'] * 1e3:7.3f} ms", flush=True)
    results["timings"] = timings
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
