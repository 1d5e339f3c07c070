"""Training samples/s of every precision scheme relative to fp32, paired in one process, on synthetic Criteo data.

One process, one data set, one initial model per scheme (seed 0): 26 sparse fields (Zipf values),
13 dense, dim 16, batch 512, row-wise Adagrad, one thread. Each scheme gets a warm-up run; then every
round measures blocks of ``--steps`` steps in the order fp32, A, fp32, B, fp32, ... (ABAB), and a
scheme's paired ratio in that round is its samples/s over the mean of the two fp32 blocks around it,
so load from other processes on a shared machine hits both sides of a pair alike. Reported: the median
paired ratio over ``--rounds`` rounds and its interquartile range, next to the target of issue 17
(f-quant 50% >= 0.9x, f-quant+int4 30% >= 0.85x).

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


#: issue 17's targets (samples/s relative to fp32)
TARGETS = {"f-quant 50%": 0.9, "f-quant+int4 30%": 0.85}


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(q25, median, q75), linear interpolation."""
    ordered = torch.tensor(sorted(values), dtype=torch.float64)
    q = torch.quantile(ordered, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
    return float(q[0]), float(q[1]), float(q[2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300_000, help="synthetic samples (tables: up to rows/4 each)")
    parser.add_argument("--steps", type=int, default=50, help="steps per block (50: one re-tier of f-quant each)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--schemes", nargs="+", default=[s for s in SCHEMES if s != "fp32"])
    parser.add_argument("--out", default="benchmarks/results/quant_throughput.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    schemes = [s for s in args.schemes if s != "fp32"]
    data = generate(SyntheticConfig(rows=args.rows, seed=0, ground_truth_sample=1000)).data
    models = {}
    for name in ["fp32", *schemes]:
        precision, options = SCHEMES[name]
        model = build_model(data, seed=0, embedding_dim=16)
        assert isinstance(model.embedding, FloatEmbedding)
        models[name] = model.with_embedding(build_embedding(precision, model.embedding, data, **options))
        train_seconds(models[name], data, 20)  # warm-up: allocator, optimizer state, first re-tier
    blocks: dict[str, list[float]] = {name: [] for name in ["fp32", *schemes]}
    ratios: dict[str, list[float]] = {name: [] for name in schemes}
    started = time.perf_counter()
    for round_index in range(args.rounds):
        before = train_seconds(models["fp32"], data, args.steps)["samples_per_second"]
        blocks["fp32"].append(before)
        for name in schemes:
            speed = train_seconds(models[name], data, args.steps)["samples_per_second"]
            after = train_seconds(models["fp32"], data, args.steps)["samples_per_second"]
            blocks[name].append(speed)
            blocks["fp32"].append(after)
            ratios[name].append(speed / ((before + after) / 2))
            before = after
        print(f"round {round_index + 1}/{args.rounds} ({time.perf_counter() - started:.0f}s):",
              ", ".join(f"{n} {ratios[n][-1]:.2f}x" for n in schemes), flush=True)
    results = [{"scheme": "fp32", "samples_per_second_median": quartiles(blocks["fp32"])[1],
                "relative_to_fp32": 1.0, "iqr": [1.0, 1.0], "target": None, "paired_ratios": [],
                "blocks_samples_per_second": blocks["fp32"], "embedding_share_of_fp32": 1.0}]
    for name in schemes:
        low, median, high = quartiles(ratios[name])
        results.append({
            "scheme": name,
            "samples_per_second_median": quartiles(blocks[name])[1],
            "relative_to_fp32": median,
            "iqr": [low, high],
            "target": TARGETS.get(name),
            "meets_target": None if name not in TARGETS else median >= TARGETS[name],
            "paired_ratios": ratios[name],
            "blocks_samples_per_second": blocks[name],
            "embedding_share_of_fp32": models[name].embedding.embedding_bytes()
            / (sum(data.cardinalities.values()) * 16 * 4),
        })
    lines = [
        f"{args.rows:,} synthetic samples, {sum(data.cardinalities.values()):,} table rows, 26 fields, dim 16, "
        f"batch 512, adagrad, 1 thread; {args.rounds} rounds of ABAB blocks (fp32, scheme, fp32, ...) of "
        f"{args.steps} steps in one process; vs fp32 = median paired ratio (scheme block / mean of the fp32 "
        "blocks around it), IQR over rounds.",
        "",
        "| scheme | vs fp32 (median) | IQR | target | samples/s (median block) | bytes / fp32 |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        target = "—" if r["target"] is None else f"≥ {r['target']:.2f}x ({'met' if r['meets_target'] else 'missed'})"
        lines.append(
            f"| {r['scheme']} | {r['relative_to_fp32']:.2f}x | {r['iqr'][0]:.2f}–{r['iqr'][1]:.2f} | {target} | "
            f"{r['samples_per_second_median']:,.0f} | {r['embedding_share_of_fp32']:.3f} |"
        )
    write_results(
        args.out,
        {"benchmark": "quant_throughput", "environment": environment(), "settings": vars(args), "results": results},
        "\n".join(lines) + "\n",
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
