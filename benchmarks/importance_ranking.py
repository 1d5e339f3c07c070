"""How well each field-importance method ranks fields, against the exact Eq. 1 importance.

For each dataset and seed: train a DLRM (Adagrad lr 0.05, embedding L2 1e-2, early stopping on
validation log-loss), then score every field on the same held-out sample (the test split, at most
``--max-samples`` rows) with every method, and compare each ranking with ``exact`` (Monte-Carlo Eq. 1,
``--exact-draws`` draws per sample and field): Spearman correlation and top-k overlap (k = ceil(F / 3)).
On synthetic data the generator's ground-truth importance is a second reference.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/importance_ranking.py --seeds 0 1 2 \
        --out benchmarks/results/importance_ranking.json
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, os.path.dirname(__file__))

import numpy as np
import torch
from scipy.stats import spearmanr

from common import environment, write_results
from sharkrec.data.dataset import PreparedData
from sharkrec.data.loading import load_data
from sharkrec.importance import FieldImportance, field_importance, taylor_family
from sharkrec.model.dlrm import DLRM
from sharkrec.train.run import build_model
from sharkrec.train.trainer import TrainConfig, Trainer, evaluate

DATA = "/work/shared/data"
DATASETS = {
    "frappe": ("libfm", f"{DATA}/frappe-x1-valid/frappe.validation.libfm.gz"),
    "movielens": ("movielens", f"{DATA}/movielens-100k"),
    "criteo": ("criteo", f"{DATA}/criteo-kaggle-head8k"),
    "synthetic": ("synthetic", "SyntheticConfig.small"),
}
TAYLOR = ("taylor", "taylor-abs", "taylor2", "taylor-logit")


def load(name: str, seed: int) -> PreparedData:
    fmt, path = DATASETS[name]
    if fmt == "synthetic":
        from sharkrec.data.synthetic import SyntheticConfig, generate

        synthetic = generate(SyntheticConfig.small(seed=seed))
        synthetic.data.report["ground_truth"] = synthetic.ground_truth.to_dict()
        synthetic.data.report["truth"] = synthetic.ground_truth.importance
        return synthetic.data
    return load_data(fmt, path)


def train(data: PreparedData, seed: int) -> tuple[DLRM, dict[str, Any]]:
    steps_per_epoch = data.train.num_batches(512)
    config = TrainConfig(optimizer="adagrad", lr=0.05, embedding_l2=1e-2, epochs=30, patience=3,
                         stop_metric="logloss", eval_every=max(1, steps_per_epoch // 2), seed=seed, progress=False)
    model = build_model(data, seed=seed)
    started = time.perf_counter()
    Trainer(model, config, data.schema.label_names).fit(data.train, data.valid)
    metrics = evaluate(model, data.test, data.schema.label_names)
    return model.eval(), {"train_seconds": time.perf_counter() - started, "test": metrics}


def compare(result: FieldImportance, reference: np.ndarray) -> dict[str, float]:
    k = math.ceil(len(reference) / 3)
    top_ref = set(np.argsort(-reference, kind="stable")[:k])
    top = set(np.argsort(-result.scores, kind="stable")[:k])
    return {"spearman": float(spearmanr(result.scores, reference)[0]), "top_k_overlap": len(top & top_ref) / k}


def run_one(name: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(seed)
    data = load(name, seed)
    model, info = train(data, seed)
    split = data.test.subset(np.arange(min(len(data.test), args.max_samples)))
    results: dict[str, FieldImportance] = dict(taylor_family(model, split, draws=args.taylor_draws, seed=seed))
    results["permutation-T1"] = field_importance(model, split, "permutation", repeats=1, seed=seed)
    results["permutation-T5"] = field_importance(model, split, "permutation", repeats=5, seed=seed)
    results["lasso"] = field_importance(model, data.valid, "lasso", seed=seed)
    exact = field_importance(model, split, "exact", draws=args.exact_draws, seed=seed + 1000)
    out: dict[str, Any] = {"dataset": name, "seed": seed, "fields": list(model.field_names), "samples": len(split),
                           **info, "exact": exact.to_dict(), "methods": {}}
    truth = data.report.get("truth")
    for method, result in results.items():
        row = {"vs_exact": compare(result, exact.scores), "seconds": result.seconds, "passes": result.passes,
               "scores": result.as_dict()}
        if truth is not None:
            row["vs_truth"] = compare(result, np.array([truth[f] for f in model.field_names]))
        out["methods"][method] = row
    if truth is not None:
        out["exact_vs_truth"] = compare(exact, np.array([truth[f] for f in model.field_names]))
    print(f"{name} seed {seed}: " + ", ".join(f"{m} {r['vs_exact']['spearman']:+.2f}" for m, r in
                                              out["methods"].items()), flush=True)
    return out


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """{method: {dataset: {mean, std, n}}} of Spearman vs exact (and vs truth as ``<dataset>/truth``)."""
    table: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        for method, row in run["methods"].items():
            table.setdefault(method, {}).setdefault(run["dataset"], []).append(row["vs_exact"]["spearman"])
            if "vs_truth" in row:
                table[method].setdefault(run["dataset"] + "/truth", []).append(row["vs_truth"]["spearman"])
    return {m: {d: {"mean": float(np.mean(v)), "std": float(np.std(v)), "n": len(v)} for d, v in cols.items()}
            for m, cols in table.items()}


def markdown(summary: dict[str, dict[str, dict[str, float]]], runs: list[dict[str, Any]]) -> str:
    columns = sorted({d for cols in summary.values() for d in cols})
    lines = ["# Field-importance ranking vs exact Eq. 1 (Spearman, mean ± std over seeds)", "",
             "| method | " + " | ".join(columns) + " | seconds (mean) |",
             "|---|" + "---|" * (len(columns) + 1)]
    for method, cols in summary.items():
        seconds = np.mean([r["methods"][method]["seconds"] for r in runs])
        cells = [f"{cols[c]['mean']:+.2f} ± {cols[c]['std']:.2f} (n={cols[c]['n']})" if c in cols else ""
                 for c in columns]
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {seconds:.2f} |")
    lines += ["", "`<dataset>/truth`: against the synthetic generator's ground truth. Taylor variants share one pass",
              "(their seconds are the shared pass). Generated by benchmarks/importance_ranking.py.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--max-samples", type=int, default=4000)
    parser.add_argument("--exact-draws", type=int, default=64)
    parser.add_argument("--taylor-draws", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/importance_ranking.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    runs = [run_one(name, seed, args) for seed in args.seeds for name in args.datasets]
    summary = summarise(runs)
    payload = {"benchmark": "importance_ranking", "environment": environment(), "settings": vars(args),
               "summary": summary, "runs": runs}
    write_results(args.out, payload, markdown(summary, runs))
    print(markdown(summary, runs))


if __name__ == "__main__":
    main()
