"""Test AUC against rows-compression for Saec and its baselines at equal rows, on real and synthetic data.

For each dataset and seed: train one DLRM with the dataset's recipe (``benchmarks/train_real.py``;
synthetic: ``SyntheticConfig.small(rows=50000)``, adagrad lr 0.05) and reuse it for every method and
rows ratio. Each (method, ratio) clusters the trained fp32 tables with one global row budget
(``rows_ratio`` × vocabulary rows, split over the fields in proportion to their rows), evaluates on
test, fine-tunes one epoch on a seeded support sample (``--support`` of the training split; recipe
optimizer at ``--lr-scale`` × its lr) and evaluates on test again. Methods:

* saec: frequency-weighted k-means on the head covering ``--head-share`` (0.9) of occurrences + one tail
  pass (euclidean);
* saec-cosine: the same with cosine distance (spherical k-means);
* kmeans: full frequency-weighted k-means on every value (euclidean);
* hashing: a seeded universal hash of the value's row into K rows;
* frequency: frequency cut-off, the K − 1 hottest values keep a row, the rest share the OOV row.

Every method's rows start at the frequency-weighted mean of their members' trained rows. Reported:
mean ± std over seeds of test AUC per ratio, and per method the largest rows-compression whose mean
test AUC (after fine-tune) is within 0.15% (relative) of the unclustered model's.

    OMP_WAIT_POLICY=PASSIVE nice -n 10 python benchmarks/saec_curves.py --out benchmarks/results/saec_curves.json
"""

from __future__ import annotations

import argparse
import json
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
from sharkrec.cluster import ClusteredEmbedding, Saec, SaecConfig
from sharkrec.data.dataset import PreparedData
from sharkrec.data.loading import load_data
from sharkrec.model.dlrm import DLRM
from sharkrec.train.run import build_model
from sharkrec.train.trainer import TrainConfig, Trainer, evaluate
from train_real import RECIPES

METHODS = {"saec": ("saec", "euclidean"), "saec-cosine": ("saec", "cosine"), "kmeans": ("kmeans", "euclidean"),
           "hashing": ("hashing", "euclidean"), "frequency": ("frequency", "euclidean")}
SYNTHETIC = {"train": {"optimizer": "adagrad", "lr": 0.05, "embedding_l2": 1e-2}, "model": {}}
MAX_DROP = 0.0015


def load(name: str) -> PreparedData:
    if name == "synthetic":
        from sharkrec.data.synthetic import SyntheticConfig, generate

        return generate(SyntheticConfig.small(rows=50_000, seed=0)).data
    recipe = RECIPES[name]
    return load_data(recipe["format"], recipe["path"], schema=recipe.get("schema"))


def recipe_of(name: str) -> dict[str, Any]:
    return SYNTHETIC if name == "synthetic" else RECIPES[name]


def train_base(data: PreparedData, name: str, seed: int) -> DLRM:
    recipe = recipe_of(name)
    eval_every = recipe.get("eval_every", max(1, data.train.num_batches(512) // 2))
    config = TrainConfig(**recipe["train"], epochs=40, patience=3, stop_metric="logloss", eval_every=eval_every,
                         seed=seed, progress=False)
    model = build_model(data, seed, **recipe["model"])
    Trainer(model, config, data.schema.label_names).fit(data.train, data.valid)
    return model.eval()


def test_auc(model: DLRM, data: PreparedData) -> float:
    return float(next(iter(evaluate(model, data.test, data.schema.label_names).values()))["auc"])


def fine_tune(model: DLRM, data: PreparedData, name: str, seed: int, args: argparse.Namespace) -> None:
    train = dict(recipe_of(name)["train"])
    train["lr"] = train["lr"] * args.lr_scale
    config = TrainConfig(**train, epochs=1, batch_size=256, patience=0, seed=seed, progress=False)
    rng = np.random.default_rng(seed)
    support = data.train.subset(np.sort(rng.choice(len(data.train), int(len(data.train) * args.support),
                                                   replace=False)))
    Trainer(model, config, data.schema.label_names).fit(support, data.valid)
    model.eval()


def point(model: DLRM, data: PreparedData, name: str, method: str, ratio: float, seed: int,
          args: argparse.Namespace) -> dict[str, Any]:
    kind, metric = METHODS[method]
    config = SaecConfig(rows_ratio=ratio, method=kind, metric=metric, head_share=args.head_share,  # type: ignore[arg-type]
                        seed=seed)
    saec = Saec(config).fit(model, data)
    clustered = saec.transform(model)
    before = test_auc(clustered, data)
    started = time.perf_counter()
    fine_tune(clustered, data, name, seed, args)
    embedding = clustered.embedding
    assert isinstance(embedding, ClusteredEmbedding)
    memory = embedding.memory_report().to_dict()
    return {"method": method, "seed": seed, "rows_ratio": ratio, "test_auc_no_fine_tune": before,
            "test_auc": test_auc(clustered, data), "rows_compression": memory["rows_compression"],
            "cluster_rows": memory["cluster_rows"], "value_rows": memory["value_rows"],
            "bytes_map_folded_into_vocabulary": memory["bytes_map_folded_into_vocabulary"],
            "bytes_map_as_index": memory["bytes_map_as_index"], "fp32_bytes_before": memory["fp32_bytes_before"],
            "weighted_error": float(sum(saec.weighted_error_.values())), "cluster_seconds": saec.seconds_,
            "fine_tune_seconds": time.perf_counter() - started}


def summarise(base: list[float], points: list[dict[str, Any]], methods: list[str], ratios: list[float]
              ) -> dict[str, Any]:
    base_mean = float(np.mean(base))
    out: dict[str, Any] = {}
    for method in methods:
        rows = []
        for ratio in ratios:
            mine = [p for p in points if p["method"] == method and p["rows_ratio"] == ratio]
            if not mine:  # a pooled file where this method ran at fewer ratios
                continue
            aucs = np.array([p["test_auc"] for p in mine])
            raw = np.array([p["test_auc_no_fine_tune"] for p in mine])
            rows.append({"rows_ratio": ratio, "rows_compression": float(np.mean([p["rows_compression"] for p in mine])),
                         "test_auc_mean": float(aucs.mean()), "test_auc_std": float(aucs.std(ddof=1)) if len(aucs) > 1
                         else 0.0, "test_auc_no_fine_tune_mean": float(raw.mean()),
                         "relative_drop": (base_mean - float(aucs.mean())) / base_mean,
                         "bytes_compression_map_folded": float(np.mean(
                             [p["fp32_bytes_before"] / p["bytes_map_folded_into_vocabulary"] for p in mine])),
                         "bytes_compression_map_as_index": float(np.mean(
                             [p["fp32_bytes_before"] / p["bytes_map_as_index"] for p in mine])),
                         "weighted_error_mean": float(np.mean([p["weighted_error"] for p in mine])),
                         "cluster_seconds_mean": float(np.mean([p["cluster_seconds"] for p in mine]))})
        ok = [r for r in rows if r["relative_drop"] <= MAX_DROP]
        best = max(ok, key=lambda r: r["rows_compression"]) if ok else None
        raw_ok = [r for r in rows if (base_mean - r["test_auc_no_fine_tune_mean"]) / base_mean <= MAX_DROP]
        out[method] = {"curve": rows, "max_compression_within_drop": best["rows_compression"] if best else 1.0,
                       "test_auc_at_max": best["test_auc_mean"] if best else base_mean,
                       "max_compression_within_drop_no_fine_tune": max(
                           (r["rows_compression"] for r in raw_ok), default=1.0)}
    return out


def markdown(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    methods = list(dict.fromkeys(m for r in results for m in r["summary"]))
    lines = ["# Saec: largest rows-compression with mean test AUC drop <= 0.15%, after a short fine-tune "
             "(without fine-tune)", "",
             "| dataset | base test AUC | " + " | ".join(methods) + " |", "|---|---|" + "---:|" * len(methods)]
    for r in results:
        cells = [f"{r['summary'][m]['max_compression_within_drop']:.1f}x "
                 f"({r['summary'][m]['max_compression_within_drop_no_fine_tune']:.1f}x)" if m in r["summary"] else "-"
                 for m in methods]
        lines.append(f"| {r['dataset']} | {r['base_auc_mean']:.4f} ± {r['base_auc_std']:.4f} | " + " | ".join(cells)
                     + " |")
    lines += ["", "## Test AUC (mean ± std over seeds) per nominal rows-compression, after fine-tune "
              "(before fine-tune)", ""]
    for r in results:
        ratios = sorted({c["rows_ratio"] for m in r["summary"].values() for c in m["curve"]}, reverse=True)
        lines += [f"### {r['dataset']} ({r['value_rows']:,} vocabulary rows, seeds {r['seeds']})", "",
                  "| method | " + " | ".join(f"{1 / q:.3g}x" for q in ratios) + " |", "|---|" + "---|" * len(ratios)]
        for m, summary in r["summary"].items():
            at = {c["rows_ratio"]: c for c in summary["curve"]}
            cells = [f"{at[q]['test_auc_mean']:.4f} ± {at[q]['test_auc_std']:.4f} "
                     f"({at[q]['test_auc_no_fine_tune_mean']:.4f})" if q in at else "-" for q in ratios]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        if "saec" in r["summary"]:
            at = {c["rows_ratio"]: c for c in r["summary"]["saec"]["curve"]}
            cells = [f"{at[q]['bytes_compression_map_folded']:.1f}x / {at[q]['bytes_compression_map_as_index']:.1f}x"
                     if q in at else "-" for q in ratios]
            lines.append("| saec bytes compression: map in vocabulary / map as int32 index | " + " | ".join(cells)
                         + " |")
        lines.append("")
    lines += [f"One base model per (dataset, seed) reused for every method and ratio; fine-tune: 1 epoch on a "
              f"{args.support:.0%} support sample, recipe optimizer at {args.lr_scale} x lr, batch 256; "
              f"saec head share {getattr(args, 'head_share', 0.9)}. Drop = "
              "(base − clustered) / base on mean test AUC. Criteo's test split has 391 rows (AUC noise about "
              "±0.01, far above 0.15%). Generated by benchmarks/saec_curves.py.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["movielens", "frappe", "criteo", "synthetic"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.5, 0.2, 0.1, 0.05, 0.02, 0.01])
    parser.add_argument("--head-share", type=float, default=0.9, help="head share of the saec methods")
    parser.add_argument("--support", type=float, default=0.2)
    parser.add_argument("--lr-scale", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/saec_curves.json")
    parser.add_argument("--append", action="store_true", help="keep the other datasets already in --out")
    parser.add_argument("--render", action="store_true", help="only rewrite the Markdown table from --out's JSON")
    parser.add_argument("--merge", nargs="+", default=None,
                        help="with --render: pool the points of these result files (same datasets, seeds) into --out")
    args = parser.parse_args()
    if args.render:
        if args.merge:
            payload = json.loads(Path(args.merge[0]).read_text())
            for extra in args.merge[1:]:
                more = {r["dataset"]: r for r in json.loads(Path(extra).read_text())["results"]}
                for result in payload["results"]:
                    if result["dataset"] in more:
                        assert more[result["dataset"]]["base_auc"] == result["base_auc"], "different base models"
                        result["points"] += more[result["dataset"]]["points"]
            payload["settings"]["merged_from"] = args.merge
        else:
            payload = json.loads(Path(args.out).read_text())
        settings = argparse.Namespace(**{**vars(args), **payload["settings"]})
        for result in payload["results"]:  # summaries recomputed from the raw points
            methods = list(dict.fromkeys(p["method"] for p in result["points"]))
            ratios = sorted({p["rows_ratio"] for p in result["points"]}, reverse=True)
            result["summary"] = summarise(result["base_auc"], result["points"], methods, ratios)
        write_results(Path(args.out), payload, markdown(payload["results"], settings))
        return
    torch.set_num_threads(args.threads)
    results: list[dict[str, Any]] = []
    if args.append and Path(args.out).exists():
        previous = json.loads(Path(args.out).read_text())["results"]
        results = [r for r in previous if r["dataset"] not in args.datasets]
    for name in args.datasets:
        data = load(name)
        base, points = [], []
        for seed in args.seeds:
            model = train_base(data, name, seed)
            base.append(test_auc(model, data))
            print(f"{name} seed {seed}: base test AUC {base[-1]:.4f}", flush=True)
            for method in args.methods:
                for ratio in args.ratios:
                    p = point(model, data, name, method, ratio, seed, args)
                    points.append(p)
                    print(f"  {method:<12} ratio {ratio:<5} rows {p['cluster_rows']:>6} test AUC "
                          f"{p['test_auc_no_fine_tune']:.4f} -> {p['test_auc']:.4f} ({p['cluster_seconds']:.2f}s "
                          f"clustering)", flush=True)
        results.append({"dataset": name, "seeds": args.seeds, "ratios": args.ratios, "base_auc": base,
                        "base_auc_mean": float(np.mean(base)),
                        "base_auc_std": float(np.std(base, ddof=1)) if len(base) > 1 else 0.0,
                        "rows": {k: len(data.split(k)) for k in ("train", "valid", "test")},
                        "value_rows": int(sum(data.cardinalities.values())), "points": points,
                        "summary": summarise(base, points, args.methods, args.ratios)})
        payload = {"benchmark": "saec_curves", "environment": environment(), "settings": vars(args),
                   "results": results}
        write_results(Path(args.out), payload, markdown(results, args))  # after each dataset: partial results


if __name__ == "__main__":
    main()
