"""A small probe of the quantization stress regime: does uniform int8 / int4 lose AUC against fp32?

Synthetic Criteo-shaped data (``SyntheticConfig.stress`` with fewer rows and smaller tables), dim 32,
row-wise Adagrad at a low learning rate, one pass over the training split, one seed: every scheme
starts from the same initial model and sees the same batches. A probe, not the full benchmark
(issue 4, 6b asks for ≥ 3 seeds and millions of samples): it says whether the regime is worth
the long run.

    python benchmarks/quant_stress_probe.py --rows 1500000 --out benchmarks/results/quant_stress_probe.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, os.path.dirname(__file__))

import torch

from common import environment, train_scheme, write_results
from sharkrec.data.synthetic import SyntheticConfig, generate
from sharkrec.train.trainer import TrainConfig

SCHEMES: dict[str, tuple[str, dict[str, Any]]] = {
    "fp32": ("fp32", {}),
    "int8": ("int8", {}),
    "int4": ("int4", {}),
    "f-quant 50%": ("f-quant", {"memory_budget": 0.5, "recheck_every": 100}),
    "f-quant+int4 25%": ("f-quant", {"memory_budget": 0.25, "use_int4": True, "recheck_every": 100}),
    "random tiers+int4 25%": ("random", {"memory_budget": 0.25, "use_int4": True}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_500_000)
    parser.add_argument("--max-cardinality", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--schemes", nargs="+", default=list(SCHEMES))
    parser.add_argument("--out", default="benchmarks/results/quant_stress_probe.json")
    parser.add_argument(
        "--append",
        action="store_true",
        help="keep the other schemes' results already in --out (same settings) and add these",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    synthetic = SyntheticConfig.stress(
        rows=args.rows, max_cardinality=args.max_cardinality, seed=args.seed, ground_truth_sample=1000
    )
    data = generate(synthetic).data
    table_rows = sum(data.cardinalities.values())
    results: list[dict[str, Any]] = []
    if args.append and Path(args.out).is_file():
        previous = json.loads(Path(args.out).read_text())
        results = [r for r in previous["results"] if r["scheme"] not in args.schemes]
    for name in args.schemes:
        precision, options = SCHEMES[name]
        config = TrainConfig(
            optimizer="adagrad",
            lr=args.lr,
            batch_size=512,
            epochs=1,
            eval_every=10**9,
            patience=0,
            seed=args.seed,
            progress=False,
        )
        results.append({"scheme": name, **train_scheme(data, config, precision, options, embedding_dim=args.dim)})
        print(results[-1], flush=True)
    base = next((r for r in results if r["scheme"] == "fp32"), results[0])
    lines = [
        f"Stress probe: SyntheticConfig.stress(rows={args.rows:,}, max_cardinality={args.max_cardinality:,}), "
        f"{table_rows:,} table rows, {len(data.train):,} training samples (one pass), dim {args.dim}, "
        f"adagrad lr {args.lr}, batch 512, seed {args.seed} (one seed: no error bars).",
        "",
        "| scheme | test AUC | ΔAUC % vs fp32 | logloss | bytes / fp32 | rows moved | samples/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['scheme']} | {r['auc']:.4f} | {100 * (r['auc'] - base['auc']) / base['auc']:+.3f} | "
            f"{r['logloss']:.4f} | {r['bytes_fraction']:.3f} | {r['rows_moved']:,} | "
            f"{r['samples_per_second']:,.0f} |"
        )
    write_results(
        args.out,
        {
            "benchmark": "quant_stress_probe",
            "environment": environment(),
            "settings": vars(args),
            "table_rows": table_rows,
            "results": results,
        },
        "\n".join(lines) + "\n",
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
