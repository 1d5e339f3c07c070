"""``compress`` (F-Permutation + F-Quantization, budget split searched) on real data: SHARK's Table 4 shape.

For each dataset and seed: train the fp32 DLRM with the recipe of benchmarks/train_real.py, then
``compress(target_memory=0.3, max_auc_drop=0.0015)``. Reported per seed and as mean ± std: test AUC
before / after, relative drop, embedding bytes (from the tensors held) as a share of fp32, the
chosen split of the budget, how many trainings the search took against the full grid, seconds per
stage.

    python benchmarks/compress_real.py --seeds 0 1 2 --out benchmarks/results/compress_real.json
    python benchmarks/compress_real.py --seeds 0 1 2 --target-memory 0.5 --max-removed 0 \
        --out benchmarks/results/compress_fq_only_50.json     # F-Quantization alone, fine-tuned from fp32
    python benchmarks/compress_real.py --seeds 0 1 2 --target-memory 0.2 --cluster-rows-ratio 0.5 \
        --out benchmarks/results/compress_saec_20.json        # Saec stage, then pruning + F-Quantization
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, os.path.dirname(__file__))

import numpy as np
import torch

from common import environment, recipe_config, recipe_fine_tune, write_results
from quant_real import DATASETS
from sharkrec.compress import CompressConfig, compress
from sharkrec.data.loading import load_data
from sharkrec.errors import ConfigError
from sharkrec.train.run import train_model


def run(dataset: str, seed: int, target: float, max_auc_drop: float, max_trainings: int,
        max_removed: int | None = None, cluster_rows_ratio: float | None = None) -> dict[str, Any]:
    fmt, path, settings, eval_every = DATASETS[dataset]
    data = load_data(fmt, path)
    config = recipe_config(data, settings, eval_every, seed)
    tick = time.perf_counter()
    model, _report = train_model(data, config, model_options={"embedding_dim": 16})
    train_seconds = time.perf_counter() - tick
    fine_tune = recipe_fine_tune(data, settings, eval_every, seed)
    result = compress(model, data, CompressConfig(target_memory=target, max_auc_drop=max_auc_drop,
                                                  max_trainings=max_trainings, fine_tune=fine_tune, seed=seed,
                                                  max_removed=max_removed, cluster_rows_ratio=cluster_rows_ratio))
    rep = result.report
    task = data.schema.label_names[0]
    row = {
        "dataset": dataset, "seed": seed, "task": task,
        "fp32_auc": rep["metrics_before"]["test"][task]["auc"], "auc": rep["metrics"]["test"][task]["auc"],
        "fp32_logloss": rep["metrics_before"]["test"][task]["logloss"],
        "logloss": rep["metrics"]["test"][task]["logloss"],
        "auc_drop_pct": 100 * rep["auc_drop"]["test"][task],
        "valid_auc_drop_pct": 100 * rep["auc_drop"]["valid"][task],
        "bytes": rep["bytes"], "share_of_fp32": rep["bytes"]["share_of_fp32"],
        "chosen": rep["chosen"]["label"] + (" after Saec" if rep.get("cluster") else ""),
        "removed": rep["chosen"]["removed"],
        "met_max_auc_drop": rep["met_max_auc_drop"],
        "trainings": rep["search"]["trainings"], "grid_size": rep["search"]["grid_size"],
        "seconds": {**rep["seconds"], "fp32_training": train_seconds},
        "trained": rep["search"]["trained"],
    }
    print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items() if k != "trained"}, flush=True)
    return row


def markdown(rows: list[dict[str, Any]], target: float, max_auc_drop: float) -> str:
    lines = [
        f"`compress(target_memory={target}, max_auc_drop={max_auc_drop})` after training the fp32 DLRM (dim 16) with "
        "the recipe of benchmarks/train_real.py. ΔAUC: relative test AUC change of the compressed model vs the same "
        "seed's fp32 model (%). Bytes: embedding bytes held (payload, scales, row map, constants of removed fields) / "
        "fp32 bytes.",
        "",
        "| dataset | seed | fp32 test AUC | compressed test AUC | ΔAUC % | bytes / fp32 | chosen | trainings / grid "
        "| seconds (importance, search, train) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "infeasible" in r:
            lines.append(f"| {r['dataset']} | {r['seed']} | – | – | – | – | infeasible: {r['infeasible']} | – | – |")
            continue
        s = r["seconds"]
        lines.append(f"| {r['dataset']} | {r['seed']} | {r['fp32_auc']:.4f} | {r['auc']:.4f} "
                     f"| {-r['auc_drop_pct']:+.3f} | {r['share_of_fp32']:.3f} | {r['chosen']} "
                     f"| {r['trainings']} / {r['grid_size']} "
                     f"| {s['importance']:.1f}, {s['search']:.1f}, {s['train']:.1f} |")
    lines += ["", "| dataset | seeds | ΔAUC % mean ± std | max bytes / fp32 | trainings (mean) | grid |",
              "|---|---|---|---|---|---|"]
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        sub = [r for r in rows if r["dataset"] == dataset and "infeasible" not in r]
        if not sub:
            lines.append(f"| {dataset} | 0 | infeasible | – | – | – |")
            continue
        drops = np.array([-r["auc_drop_pct"] for r in sub])
        std = drops.std(ddof=1) if len(drops) > 1 else 0.0
        lines.append(f"| {dataset} | {len(sub)} | {drops.mean():+.3f} ± {std:.3f} | "
                     f"{max(r['share_of_fp32'] for r in sub):.3f} | {np.mean([r['trainings'] for r in sub]):.1f} | "
                     f"{sub[0]['grid_size']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["frappe", "movielens"], choices=sorted(DATASETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--target-memory", type=float, default=0.3)
    parser.add_argument("--max-auc-drop", type=float, default=0.0015)
    parser.add_argument("--max-trainings", type=int, default=3)
    parser.add_argument("--max-removed", type=int, default=None,
                        help="Remove at most this many fields (0: F-Quantization alone).")
    parser.add_argument("--cluster-rows-ratio", type=float, default=None,
                        help="Add the Saec stage: cluster each field to this share of its rows first.")
    parser.add_argument("--out", default="benchmarks/results/compress_real.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for dataset in args.datasets:
        for seed in args.seeds:
            try:
                rows.append(run(dataset, seed, args.target_memory, args.max_auc_drop, args.max_trainings,
                                args.max_removed, args.cluster_rows_ratio))
            except ConfigError as error:  # the budget cannot be reached on this dataset: say so, go on
                print(f"{dataset} seed {seed}: {error}", flush=True)
                rows.append({"dataset": dataset, "seed": seed, "infeasible": str(error)})
    payload = {"benchmark": "compress_real", "environment": environment(), "target_memory": args.target_memory,
               "max_auc_drop": args.max_auc_drop, "max_removed": args.max_removed,
               "cluster_rows_ratio": args.cluster_rows_ratio, "results": rows}
    write_results(args.out, payload, markdown(rows, args.target_memory, args.max_auc_drop))
    print(markdown(rows, args.target_memory, args.max_auc_drop))


if __name__ == "__main__":
    main()
