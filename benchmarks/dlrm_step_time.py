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


def time_per_batch(step: Callable[[Batch], None], batches: list[Batch], repeats: int) -> float:
    """Median seconds per batch over ``repeats`` passes through ``batches`` (after one warm-up pass)."""
    for batch in batches[:5]:
        step(batch)
    per_pass = []
    for _ in range(repeats):
        start = time.perf_counter()
        for batch in batches:
            step(batch)
        per_pass.append((time.perf_counter() - start) / len(batches))
    return statistics.median(per_pass)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--max-rows", type=int, default=1_000_000)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/dlrm_step_time.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    field_rows = [min(r, args.max_rows) for r in CRITEO_ROWS]
    config = DLRMConfig(num_dense=13, field_rows=tuple((f"C{i + 1}", r) for i, r in enumerate(field_rows)),
                        embedding_dim=16, bottom_mlp=(64,), top_mlp=(256, 128))
    model = DLRM(config)
    unchecked = model.with_embedding(FloatEmbedding.from_tables(
        {n: model.embedding.table(n).detach() for n in model.embedding.field_names}, check_ids=False))  # type: ignore[operator]

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
            timings[f"{distribution}/{name}"] = {"ms_per_batch": seconds * 1e3, "samples_per_s": args.batch_size / seconds}
            print(f"{distribution:8s} {name:34s} {seconds * 1e3:7.2f} ms  {args.batch_size / seconds:9.0f} samples/s",
                  flush=True)
    results["timings"] = timings
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
