"""F-Quantization vs fp32 and uniform baselines on real data (Frappe, MovieLens-100k), paired by seed.

Each method trains from the same initial model (same seed) with the same settings; F-Q runs at
a 50% memory budget with β = 0.01 and β = 0.99 (rows moved between tiers are reported).

    python benchmarks/quant_real.py --seeds 0 --out benchmarks/results/quant_real.json
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
from sharkrec.data.loading import load_data
from sharkrec.model.embedding import FloatEmbedding
from sharkrec.quant import MixedPrecisionEmbedding, build_embedding
from sharkrec.train.run import build_model, train_model
from sharkrec.train.trainer import TrainConfig

DATASETS = {
    "frappe": ("libfm", "/work/shared/data/frappe-x1-valid/frappe.validation.libfm.gz"),
    "movielens": ("movielens", "/work/shared/data/movielens-100k"),
}
METHODS: dict[str, tuple[str, dict]] = {
    "fp32": ("fp32", {}),
    "fp16": ("fp16", {}),
    "int8": ("int8", {}),
    "f-quant b=0.01": ("f-quant", {"memory_budget": 0.5, "beta": 0.01, "recheck_every": 50}),
    "f-quant b=0.99": ("f-quant", {"memory_budget": 0.5, "beta": 0.99, "recheck_every": 50}),
    "mpe": ("mpe", {"cache_fraction": 0.1, "recheck_every": 50}),
}


def run(dataset: str, seed: int, methods: list[str]) -> list[dict]:
    data = load_data(*DATASETS[dataset])
    out = []
    for method in methods:
        precision, options = METHODS[method]
        model = build_model(data, seed, embedding_dim=16)
        assert isinstance(model.embedding, FloatEmbedding)
        embedding = build_embedding(precision, model.embedding, data, **dict(options))
        steps_per_epoch = data.train.num_batches(512)
        config = TrainConfig(optimizer="adagrad", lr=0.05, embedding_l2=1e-2, epochs=30, patience=3,
                             stop_metric="logloss", eval_every=max(1, steps_per_epoch // 2), seed=seed,
                             progress=False)
        started = time.perf_counter()
        trained, report = train_model(data, config, model=model.with_embedding(embedding))
        test = next(iter(report["metrics"]["test"].values()))
        emb = trained.embedding
        out.append({"dataset": dataset, "seed": seed, "method": method, "auc": test["auc"],
                    "logloss": test["logloss"], "embedding_bytes": report["memory"]["embedding_bytes"],
                    "embedding_bytes_fp32": report["memory"]["embedding_bytes_fp32"],
                    "rows_moved": emb.rows_moved if isinstance(emb, MixedPrecisionEmbedding) else 0,
                    "samples_per_second": report["training"]["samples_per_second"],
                    "seconds": time.perf_counter() - started})
        print(out[-1], flush=True)
    return out


def markdown(rows: list[dict]) -> str:
    lines = ["| dataset | seed | method | test AUC | logloss | bytes / fp32 | rows moved | samples/s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['seed']} | {r['method']} | {r['auc']:.4f} | {r['logloss']:.4f} | "
                     f"{r['embedding_bytes'] / r['embedding_bytes_fp32']:.3f} | {r['rows_moved']} | "
                     f"{r['samples_per_second']:,.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--out", default="benchmarks/results/quant_real.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [r for d in args.datasets for s in args.seeds for r in run(d, s, args.methods)]
    write_results(args.out, {"environment": environment(), "results": rows}, markdown(rows))


if __name__ == "__main__":
    main()
