"""F-Quantization vs fp32 and every baseline on real data (Frappe, MovieLens-100k, Criteo sample).

Each method trains from the same initial model (same seed) with the same settings, so results
are paired by seed: the summary gives ΔAUC % = 100·(AUC − AUC_fp32)/AUC_fp32 per seed, then
mean ± std over seeds, next to bytes / fp32 (from memory_report), rows moved between tiers and
samples/s relative to the same seed's fp32 run.

Methods: fp32, fp16, int8 and int4 everywhere; F-Q at a 50% budget (β = 0.01 and 0.99); random
tiers with F-Q's tier counts (equal bytes, the control); MPE (10% fp32 LFU cache, rest int8);
ALPT (int8, learned per-row step); and with the int4 tier F-Q at a 30% budget next to random
tiers at 30% and int4 everywhere. (At dim 16 a 25% budget is infeasible: an int4 row costs
8 B payload + 4 B scale + 5 B row map = 26.6% of its 64 fp32 bytes.)

    python benchmarks/quant_real.py --seeds 0 1 2 --out benchmarks/results/quant_real.json
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

import numpy as np
import torch

from common import environment, train_scheme, write_results
from sharkrec.data.loading import load_data
from sharkrec.train.trainer import TrainConfig

SHARED = "/work/shared/data"
# name -> (format, path, train settings, eval_every or None for twice an epoch)
DATASETS: dict[str, tuple[str, str, dict[str, Any], int | None]] = {
    "frappe": (
        "libfm",
        f"{SHARED}/frappe-x1-valid/frappe.validation.libfm.gz",
        {"optimizer": "adagrad", "lr": 0.05, "embedding_l2": 1e-2},
        None,
    ),
    "movielens": (
        "movielens",
        f"{SHARED}/movielens-100k",
        {"optimizer": "adagrad", "lr": 0.05, "embedding_l2": 1e-2},
        None,
    ),
    # recipe of benchmarks/train_real.py (391 test rows: AUC noise about ±0.01)
    "criteo": (
        "criteo",
        f"{SHARED}/criteo-kaggle-head8k",
        {"optimizer": "adagrad", "lr": 0.01, "embedding_l2": 3e-2},
        5,
    ),
}
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "fp32": ("fp32", {}),
    "fp16": ("fp16", {}),
    "int8": ("int8", {}),
    "int4": ("int4", {}),
    "f-quant 50% b=0.01": ("f-quant", {"memory_budget": 0.5, "beta": 0.01, "recheck_every": 50}),
    "f-quant 50% b=0.99": ("f-quant", {"memory_budget": 0.5, "beta": 0.99, "recheck_every": 50}),
    "random tiers 50%": ("random", {"memory_budget": 0.5}),
    "mpe": ("mpe", {"cache_fraction": 0.1, "recheck_every": 50}),
    "alpt": ("alpt", {"step_lr": 0.1}),
    "f-quant+int4 30%": ("f-quant", {"memory_budget": 0.3, "use_int4": True, "beta": 0.01, "recheck_every": 50}),
    "random tiers+int4 30%": ("random", {"memory_budget": 0.3, "use_int4": True}),
}


def run(dataset: str, seed: int, methods: list[str]) -> list[dict[str, Any]]:
    fmt, path, train_settings, eval_every = DATASETS[dataset]
    data = load_data(fmt, path)
    out = []
    for method in methods:
        precision, options = METHODS[method]
        config = TrainConfig(
            **train_settings,
            epochs=30,
            patience=3,
            stop_metric="logloss",
            eval_every=eval_every or max(1, data.train.num_batches(512) // 2),
            seed=seed,
            progress=False,
        )
        out.append(
            {"dataset": dataset, "seed": seed, "method": method, **train_scheme(data, config, precision, options)}
        )
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in out[-1].items()}, flush=True)
    return out


def _mean_std(values: list[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0}


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per dataset and method: paired (by seed) differences to fp32, mean ± std over seeds."""
    fp32 = {(r["dataset"], r["seed"]): r for r in rows if r["method"] == "fp32"}
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["method"]), []).append(r)
    out = []
    for (dataset, method), runs in groups.items():
        paired = [(r, fp32[(dataset, r["seed"])]) for r in runs if (dataset, r["seed"]) in fp32]
        out.append(
            {
                "dataset": dataset,
                "method": method,
                "seeds": [r["seed"] for r in runs],
                "auc": _mean_std([r["auc"] for r in runs]),
                "delta_auc_pct": _mean_std([100 * (r["auc"] - b["auc"]) / b["auc"] for r, b in paired]),
                "delta_logloss_pct": _mean_std([100 * (r["logloss"] - b["logloss"]) / b["logloss"] for r, b in paired]),
                "bytes_fraction": float(np.mean([r["embedding_bytes"] / r["embedding_bytes_fp32"] for r in runs])),
                "rows_moved": float(np.mean([r["rows_moved"] for r in runs])),
                "steps": float(np.mean([r["steps"] for r in runs])),
                "relative_samples_per_second": float(
                    np.mean([r["samples_per_second"] / b["samples_per_second"] for r, b in paired])
                ),
            }
        )
    return out


def markdown(summary: list[dict[str, Any]], seeds: int) -> str:
    lines = [
        f"Paired by seed ({seeds} seeds), ΔAUC / Δlogloss relative to fp32 in % (mean ± std over seeds).",
        "Samples/s are 1-thread runs on a shared 2-core machine: treat them as rough",
        "(benchmarks/quant_throughput.py measures them properly). Steps: mean training steps until early",
        "stopping; F-Q re-tiers every 50 steps, so where steps are few it mostly keeps its warm-start tiers.",
        "",
        "| dataset | method | test AUC | ΔAUC % | Δlogloss % | bytes / fp32 | rows moved | steps | samples/s vs fp32 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        d, ll = s["delta_auc_pct"], s["delta_logloss_pct"]
        lines.append(
            f"| {s['dataset']} | {s['method']} | {s['auc']['mean']:.4f} ± {s['auc']['std']:.4f} | "
            f"{d['mean']:+.3f} ± {d['std']:.3f} | {ll['mean']:+.2f} ± {ll['std']:.2f} | "
            f"{s['bytes_fraction']:.3f} | {s['rows_moved']:,.0f} | {s['steps']:.0f} | "
            f"{s['relative_samples_per_second']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from-json", help="rewrite the summary and Markdown of an earlier run's JSON (no training)")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--out", default="benchmarks/results/quant_real.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.from_json:
        previous = json.loads(Path(args.from_json).read_text())
        rows, args.seeds = previous["results"], sorted({r["seed"] for r in previous["results"]})
        env = previous.get("environment", environment())
    else:
        env = environment()
        rows = [r for d in args.datasets for s in args.seeds for r in run(d, s, args.methods)]
    summary = summarize(rows)
    write_results(
        args.out,
        {"benchmark": "quant_real", "environment": env, "summary": summary, "results": rows},
        markdown(summary, len(args.seeds)),
    )
    print(markdown(summary, len(args.seeds)))


if __name__ == "__main__":
    main()
