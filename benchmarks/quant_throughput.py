"""Training samples/s of every precision scheme relative to fp32, on synthetic Criteo-shaped data.

One process, one data set, one initial model per scheme (seed 0): 26 sparse fields (Zipf values),
13 dense, dim 16, batch 512, row-wise Adagrad. Each scheme gets a warm-up run, then ``--rounds``
measured runs of ``--steps`` steps, the schemes interleaved round by round so that load from other
processes hits them alike; the best round counts (the least disturbed one).

    python benchmarks/quant_throughput.py --out benchmarks/results/quant_throughput.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, os.path.dirname(__file__))

import torch

from common import environment, write_results
from sharkrec.data.synthetic import SyntheticConfig, generate
from sharkrec.model.dlrm import DLRM
from sharkrec.model.embedding import FloatEmbedding
from sharkrec.quant import build_embedding
from sharkrec.train.run import build_model
from sharkrec.train.trainer import TrainConfig, Trainer

SCHEMES: dict[str, tuple[str, dict[str, Any]]] = {
    "fp32": ("fp32", {}),
    "fp16": ("fp16", {}),
    "int8": ("int8", {}),
    "int4": ("int4", {}),
    "f-quant 50%": ("f-quant", {"memory_budget": 0.5, "recheck_every": 50}),
    "f-quant+int4 30%": ("f-quant", {"memory_budget": 0.3, "use_int4": True, "recheck_every": 50}),
    "random tiers 50%": ("random", {"memory_budget": 0.5}),
    "mpe": ("mpe", {"cache_fraction": 0.1, "recheck_every": 50}),
    "alpt": ("alpt", {}),
}


def train_seconds(model: DLRM, data: Any, steps: int) -> dict[str, float]:
    config = TrainConfig(
        optimizer="adagrad",
        lr=0.05,
        batch_size=512,
        epochs=100,
        max_steps=steps,
        eval_every=10**9,
        patience=0,
        progress=False,
    )
    result = Trainer(model, config, data.schema.label_names).fit(data.train, data.valid.subset(range(512)))
    return {"samples_per_second": result.samples_per_second, "data_share": result.data_seconds / result.seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300_000, help="synthetic samples (tables: up to rows/4 each)")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--schemes", nargs="+", default=list(SCHEMES))
    parser.add_argument("--out", default="benchmarks/results/quant_throughput.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = generate(SyntheticConfig(rows=args.rows, seed=0, ground_truth_sample=1000)).data
    models = {}
    for name in args.schemes:
        precision, options = SCHEMES[name]
        model = build_model(data, seed=0, embedding_dim=16)
        assert isinstance(model.embedding, FloatEmbedding)
        models[name] = model.with_embedding(build_embedding(precision, model.embedding, data, **options))
        train_seconds(models[name], data, 20)  # warm-up: allocator, optimizer state, first re-tier
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in args.schemes}
    for _ in range(args.rounds):
        for name in args.schemes:
            started = time.perf_counter()
            rounds[name].append(train_seconds(models[name], data, args.steps))
            print(
                name, round(rounds[name][-1]["samples_per_second"]), f"{time.perf_counter() - started:.1f}s", flush=True
            )
    best = {name: max(r, key=lambda x: x["samples_per_second"]) for name, r in rounds.items()}
    base = best.get("fp32", next(iter(best.values())))["samples_per_second"]
    results = [
        {
            "scheme": name,
            "samples_per_second": b["samples_per_second"],
            "relative_to_fp32": b["samples_per_second"] / base,
            "data_share": b["data_share"],
            "rounds": [r["samples_per_second"] for r in rounds[name]],
            "embedding_share_of_fp32": models[name].embedding.embedding_bytes()
            / (sum(data.cardinalities.values()) * 16 * 4),
        }
        for name, b in best.items()
    ]
    lines = [
        f"{args.rows:,} synthetic samples, {sum(data.cardinalities.values()):,} table rows, 26 fields, dim 16, "
        f"batch 512, adagrad, 1 thread; best of {args.rounds} interleaved rounds of {args.steps} steps.",
        "",
        "| scheme | samples/s | vs fp32 | bytes / fp32 | rounds (samples/s) |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['scheme']} | {r['samples_per_second']:,.0f} | {r['relative_to_fp32']:.2f}x | "
            f"{r['embedding_share_of_fp32']:.3f} | {', '.join(f'{x:,.0f}' for x in r['rounds'])} |"
        )
    write_results(
        args.out,
        {"benchmark": "quant_throughput", "environment": environment(), "settings": vars(args), "results": results},
        "\n".join(lines) + "\n",
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
