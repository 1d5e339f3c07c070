"""Training and evaluation throughput of a DLRM on synthetic Criteo-shaped data.

26 sparse fields (cardinalities up to 1M, Zipf values), 13 dense features, dim 16, batch 512,
top MLP 256-128, sparse embedding updates. Reports samples/s of training and evaluation and the
share of training time spent building batches (data loading) versus the model step.

    python benchmarks/train_throughput.py --out benchmarks/results/train_throughput.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, os.path.dirname(__file__))

import torch

from common import environment, write_results
from sharkrec.data.synthetic import SyntheticConfig, generate
from sharkrec.train.run import build_model
from sharkrec.train.trainer import TrainConfig, Trainer, predict


def measure(rows: int, steps: int, optimizer: str, threads: int, seed: int = 0) -> dict:
    torch.set_num_threads(threads)
    started = time.perf_counter()
    data = generate(SyntheticConfig(rows=rows, seed=seed, max_cardinality=1_000_000)).data
    generate_seconds = time.perf_counter() - started
    model = build_model(data, seed=seed, embedding_dim=16)
    config = TrainConfig(
        optimizer=optimizer,
        batch_size=512,
        epochs=100,
        max_steps=steps,
        eval_every=10**9,
        patience=0,
        progress=False,
        seed=seed,
    )
    # warm-up (allocator, lazy optimizer state), then the measured run on a fresh trainer
    Trainer(
        model,
        TrainConfig(optimizer=optimizer, max_steps=20, epochs=1, patience=0, progress=False, eval_every=10**9),
        data.schema.label_names,
    ).fit(data.train, data.valid.subset(range(512)))
    trainer = Trainer(model, config, data.schema.label_names)
    result = trainer.fit(data.train, data.valid.subset(range(512)))
    eval_started = time.perf_counter()
    predict(model, data.test, batch_size=4096)
    eval_seconds = time.perf_counter() - eval_started
    # the trainer's clock includes the final validation; subtract nothing (512 rows, negligible)
    return {
        "optimizer": optimizer,
        "threads": threads,
        "rows": rows,
        "table_rows": int(sum(data.cardinalities.values())),
        "max_table_rows": int(max(data.cardinalities.values())),
        "generate_seconds": generate_seconds,
        "train_steps": result.steps,
        "train_samples_per_second": result.samples_per_second,
        "data_loading_share": result.data_seconds / result.seconds,
        "eval_samples_per_second": len(data.test) / eval_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=600_000)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--optimizers", nargs="+", default=["adagrad", "adam"])
    parser.add_argument("--out", default="benchmarks/results/train_throughput.json")
    args = parser.parse_args()
    runs = [measure(args.rows, args.steps, opt, threads) for threads in args.threads for opt in args.optimizers]
    payload = {
        "benchmark": "train_throughput",
        "environment": environment(),
        "setup": {
            "sparse_fields": 26,
            "dense_features": 13,
            "embedding_dim": 16,
            "batch_size": 512,
            "top_mlp": [256, 128],
            "bottom_mlp": [64],
        },
        "runs": runs,
    }
    lines = [
        "| optimizer | threads | train samples/s | data loading share | eval samples/s |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['optimizer']} | {r['threads']} | {r['train_samples_per_second']:,.0f} | "
        f"{r['data_loading_share']:.1%} | {r['eval_samples_per_second']:,.0f} |"
        for r in runs
    ]
    write_results(args.out, payload, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
