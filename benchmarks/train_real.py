"""Test AUC / logloss of sharkrec's DLRM on the real datasets, mean ± std over seeds.

Reads ../shared/data (never copied). Each dataset has one recipe (settings chosen on the
validation split, see README "Training recipes"); every seed trains from scratch.

    python benchmarks/train_real.py --seeds 0 1 2 --out benchmarks/results/train_real.json

``--no-flags`` instead trains as ``sharkrec train --format F --data D --seed S`` does with no other flag
(TrainConfig's defaults and, on these small sets, the built-in lr x L2 search of ``--tune auto``):

    python benchmarks/train_real.py --no-flags --datasets frappe movielens criteo \
        --out benchmarks/results/train_no_flags.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, os.path.dirname(__file__))

import numpy as np
import torch

from common import environment, write_results
from sharkrec.data.loading import load_data
from sharkrec.train.run import train_model
from sharkrec.train.trainer import TrainConfig
from sharkrec.train.tune import should_tune

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SHARKREC_SHARED_DATA", REPO.parent / "shared" / "data"))

# name -> (format, path, schema, train settings, model settings, reference numbers quoted in the issue)
RECIPES: dict[str, dict[str, Any]] = {
    "frappe": {
        "format": "libfm",
        "path": SHARED / "frappe-x1-valid" / "frappe.validation.libfm.gz",
        "train": {"optimizer": "adagrad", "lr": 0.1, "embedding_l2": 1e-2},
        "model": {},
        "reference": "LR 0.919 / logloss 0.370; LightGBM 0.948",
    },
    "movielens": {
        "format": "movielens",
        "path": SHARED / "movielens-100k",
        "train": {"optimizer": "adam", "lr": 0.001, "embedding_l2": 1e-3},
        "model": {},
        "reference": "LR 0.709; LightGBM 0.726",
    },
    "criteo": {
        "format": "criteo",
        "path": SHARED / "criteo-kaggle-head8k",
        "train": {"optimizer": "adagrad", "lr": 0.01, "embedding_l2": 3e-2},
        "eval_every": 5,
        "model": {},
        "reference": "LR 0.744 (391 test rows: about ±0.01 noise)",
    },
    "adult": {
        "format": "csv",
        "path": SHARED / "uci-adult",
        "schema": REPO / "examples" / "schemas" / "adult.json",
        "train": {"optimizer": "adagrad", "lr": 0.05, "embedding_l2": 1e-2},
        "model": {"head": "mmoe", "tower_mlp": (64,)},
        "reference": "two tasks with MMoE",
    },
}


def run(name: str, seeds: list[int], no_flags: bool = False) -> dict[str, Any]:
    recipe = RECIPES[name]
    data = load_data(recipe["format"], recipe["path"], schema=recipe.get("schema"))
    eval_every = recipe.get("eval_every", max(1, data.train.num_batches(512) // 2))
    runs = []
    for seed in seeds:
        started = time.perf_counter()
        if no_flags:  # exactly what the CLI does without flags: defaults + --tune auto
            config = TrainConfig(seed=seed, progress=False)
            tune = should_tune("auto", len(data.train))
            _, report = train_model(data, config, model_options=recipe["model"], tune=tune)
        else:
            config = TrainConfig(**recipe["train"], epochs=40, patience=3, stop_metric="logloss",
                                 eval_every=eval_every, seed=seed, progress=False)
            _, report = train_model(data, config, model_options=recipe["model"])
        runs.append(
            {
                "seed": seed,
                "test": report["metrics"]["test"],
                "valid": report["metrics"]["valid"],
                "best_step": report["training"]["best_step"],
                "settings": {k: report["config"]["train"][k] for k in ("optimizer", "lr", "embedding_l2")},
                "tuning": report.get("tuning"),
                "seconds": time.perf_counter() - started,
            }
        )
        print(name, seed, {t: round(m["auc"], 4) for t, m in report["metrics"]["test"].items()}, flush=True)
    summary = {}
    for task in runs[0]["test"]:
        for metric in ("auc", "logloss"):
            values = np.array([r["test"][task][metric] for r in runs])
            summary[f"{task}.{metric}"] = {
                "mean": float(values.mean()),
                "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            }
    return {
        "dataset": name,
        "mode": "no flags" if no_flags else "recipe",
        "rows": {k: len(data.split(k)) for k in ("train", "valid", "test")},
        "recipe": {k: v for k, v in recipe.items() if k in ("train", "model", "reference")},
        "runs": runs,
        "summary": summary,
    }


def _settings(result: dict[str, Any]) -> str:
    """The settings each seed trained with: the recipe, or the ones the no-flags search chose."""
    if result["mode"] == "recipe":
        return ", ".join(f"{k} {v}" for k, v in result["recipe"]["train"].items())
    chosen = [f"lr {r['settings']['lr']:g} / L2 {r['settings']['embedding_l2']:g}" for r in result["runs"]]
    return "no flags (tuned: " + "; ".join(chosen) + ")"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(RECIPES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-flags", action="store_true", help="train as 'sharkrec train' does with no flags")
    parser.add_argument("--out", default="benchmarks/results/train_real.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = [run(name, args.seeds, args.no_flags) for name in args.datasets]
    lines = [
        "| dataset | task | test AUC (mean ± std) | test logloss (mean ± std) | seeds | settings | reference |",
        "|---|---|---|---|---:|---|---|",
    ]
    for result in results:
        tasks = list(result["runs"][0]["test"])
        for task in tasks:
            auc, ll = result["summary"][f"{task}.auc"], result["summary"][f"{task}.logloss"]
            lines.append(
                f"| {result['dataset']} | {task} | {auc['mean']:.4f} ± {auc['std']:.4f} | "
                f"{ll['mean']:.4f} ± {ll['std']:.4f} | {len(result['runs'])} | {_settings(result)} | "
                f"{result['recipe']['reference']} |"
            )
    write_results(
        args.out, {"benchmark": "train_real", "environment": environment(), "results": results}, "\n".join(lines) + "\n"
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
