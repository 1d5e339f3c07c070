"""SHARK Figure 2: test AUC against the number of fields left, for several ways of choosing what to prune.

For each dataset and seed: train a DLRM with the dataset's recipe (``benchmarks/train_real.py``), then run
Algorithm 1 (``sharkrec.prune.prune``) to the end (no memory or accuracy stop) once per method: every
step re-scores the remaining fields with the method on the validation split, removes the lowest, fine-tunes
on a fresh 10% support sample of the training split, and evaluates on the test split. ``random`` removes
fields in a random order (seeded) with the same fine-tuning. Reported: the curves (mean ± std over seeds)
and, per method, the test AUC at the first step where at least 40% of the embedding bytes are gone.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/pruning_curves.py --seeds 0 1 2 \
        --out benchmarks/results/pruning_curves.json
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
from sharkrec.data.dataset import PreparedData
from sharkrec.data.loading import load_data
from sharkrec.model.dlrm import DLRM
from sharkrec.prune import PruneConfig, prune
from sharkrec.train.run import build_model
from sharkrec.train.trainer import TrainConfig, Trainer
from train_real import RECIPES

METHODS = ("taylor2", "taylor", "permutation", "lasso", "random")
SHARE = 0.4  # report at the first step with at least this share of embedding bytes removed


def train_base(data: PreparedData, name: str, seed: int) -> DLRM:
    recipe = RECIPES[name]
    eval_every = recipe.get("eval_every", max(1, data.train.num_batches(512) // 2))
    config = TrainConfig(**recipe["train"], epochs=40, patience=3, stop_metric="logloss", eval_every=eval_every,
                         seed=seed, progress=False)
    model = build_model(data, seed, **recipe["model"])
    Trainer(model, config, data.schema.label_names).fit(data.train, data.valid)
    return model.eval()


def fine_tune_settings(name: str, seed: int, lr_scale: float, epochs: int) -> TrainConfig:
    """The recipe's optimizer at ``lr_scale`` × its lr, ``epochs`` passes over the support sample."""
    train = dict(RECIPES[name]["train"])
    train["lr"] = train["lr"] * lr_scale
    return TrainConfig(**train, epochs=epochs, batch_size=256, patience=0, seed=seed, progress=False)


def curve(model: DLRM, data: PreparedData, name: str, method: str, seed: int, args: argparse.Namespace
          ) -> dict[str, Any]:
    config = PruneConfig(target_memory=1e-6, t_accuracy=1e-6, fine_tune_fraction=args.fine_tune_fraction,
                         fine_tune=fine_tune_settings(name, seed, args.fine_tune_lr_scale, args.fine_tune_epochs),
                         seed=seed, max_samples=args.max_samples,
                         method_options={"repeats": args.repeats} if method == "permutation" else {})
    started = time.perf_counter()
    result = prune(model, data, method, config=config)
    task = data.schema.label_names[0]
    return {
        "method": method,
        "seed": seed,
        "removed": list(result.plan.removed),
        "fields_left": [h["num_fields_kept"] for h in result.history],
        "removed_share": [h["removed_share"] for h in result.history],
        "test_auc": [h["metrics"]["test"][task]["auc"] for h in result.history],
        "test_logloss": [h["metrics"]["test"][task]["logloss"] for h in result.history],
        "valid_auc": [h["metrics"]["valid"][task]["auc"] for h in result.history],
        "seconds": time.perf_counter() - started,
    }


def at_share(run: dict[str, Any], share: float) -> dict[str, float]:
    """Test AUC, its drop relative to step 0, fields left and bytes removed at the first step removing ≥ share."""
    step = next(i for i, s in enumerate(run["removed_share"]) if s >= share)
    base = run["test_auc"][0]
    return {"step": step, "fields_left": run["fields_left"][step], "removed_share": run["removed_share"][step],
            "test_auc": run["test_auc"][step], "relative_drop": (base - run["test_auc"][step]) / base}


def at_fields(run: dict[str, Any], fields_left: int) -> float:
    """Test AUC with ``fields_left`` fields left (the x axis of Figure 2)."""
    return float(run["test_auc"][run["fields_left"].index(fields_left)])


def summarise(runs: list[dict[str, Any]], methods: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for method in methods:
        mine = [r for r in runs if r["method"] == method]
        points = [at_share(r, SHARE) for r in mine]
        aucs = np.array([r["test_auc"] for r in mine])  # (seeds, steps): every run has the same step count
        half = (mine[0]["fields_left"][0] + 1) // 2
        out[method] = {
            "fields_left": mine[0]["fields_left"],
            "test_auc_mean": aucs.mean(0).tolist(),
            "test_auc_std": aucs.std(0, ddof=1).tolist() if len(mine) > 1 else [0.0] * aucs.shape[1],
            "at_share": {k: float(np.mean([p[k] for p in points])) for k in points[0]},
            "at_share_std": {k: float(np.std([p[k] for p in points], ddof=1)) if len(points) > 1 else 0.0
                             for k in ("test_auc", "relative_drop")},
            "seconds_mean": float(np.mean([r["seconds"] for r in mine])),
            "half_fields": half,
            "test_auc_at_half_fields": float(np.mean([at_fields(r, half) for r in mine])),
            "test_auc_at_half_fields_std": float(np.std([at_fields(r, half) for r in mine], ddof=1))
            if len(mine) > 1 else 0.0,
        }
    return out


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.2), squeeze=False)
    for ax, result in zip(axes[0], results, strict=True):
        for method, summary in result["summary"].items():
            x = np.array(summary["fields_left"])
            mean, std = np.array(summary["test_auc_mean"]), np.array(summary["test_auc_std"])
            ax.plot(x, mean, marker="o", markersize=3, label=method)
            ax.fill_between(x, mean - std, mean + std, alpha=0.15)
        base = np.mean([r["test_auc"][0] for r in result["runs"]])
        ax.axhline(base, color="black", linestyle="--", linewidth=0.8, label="baseline (unpruned)")
        ax.set_xlim(max(summary["fields_left"]) + 0.5, max(0.5, min(summary["fields_left"]) - 0.5))
        ax.set_xlabel("fields left")
        ax.set_ylabel("test AUC")
        ax.set_title(f"{result['dataset']} (mean ± std over {len(result['seeds'])} seeds)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [f"# Pruning curves (SHARK Fig. 2): test AUC when >= {SHARE:.0%} of embedding bytes are removed", "",
             "| dataset | method | fields left | bytes removed | test AUC (mean ± std) | drop vs unpruned | "
             "test AUC, half the fields left | seconds / run |", "|---|---|---:|---:|---|---:|---|---:|"]
    for result in results:
        base = np.mean([r["test_auc"][0] for r in result["runs"]])
        lines.append(f"| {result['dataset']} | unpruned | {result['runs'][0]['fields_left'][0]} | 0% | "
                     f"{base:.4f} | - | - | - |")
        for method, s in result["summary"].items():
            a, sd = s["at_share"], s["at_share_std"]
            lines.append(f"| {result['dataset']} | {method} | {a['fields_left']:.1f} | {a['removed_share']:.1%} | "
                         f"{a['test_auc']:.4f} ± {sd['test_auc']:.4f} | {a['relative_drop']:+.2%} | "
                         f"{s['test_auc_at_half_fields']:.4f} ± {s['test_auc_at_half_fields_std']:.4f} "
                         f"({s['half_fields']}) | {s['seconds_mean']:.1f} |")
    lines += ["", "Every step re-scores the remaining fields (Algorithm 1) on the validation split"
              f"{'' if args.max_samples is None else f' (at most {args.max_samples} samples)'}, removes one table, "
              + (f"fine-tunes {args.fine_tune_epochs} epoch(s) on a fresh {args.fine_tune_fraction:.0%} support "
                 f"sample (recipe optimizer, lr x {args.fine_tune_lr_scale}; kept only if validation log loss "
                 "improves)" if args.fine_tune_fraction > 0 else "does not fine-tune")
              + f", then evaluates on test. permutation: T = "
              f"{args.repeats}. Drop = (unpruned − pruned) / unpruned, mean over seeds. Curves: "
              f"{Path(args.out).with_suffix('.png').name}. Generated by benchmarks/pruning_curves.py.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["frappe", "criteo"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--fine-tune-fraction", type=float, default=0.1)
    parser.add_argument("--fine-tune-epochs", type=int, default=2)
    parser.add_argument("--fine-tune-lr-scale", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-samples", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/pruning_curves.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = []
    for name in args.datasets:
        recipe = RECIPES[name]
        data = load_data(recipe["format"], recipe["path"], schema=recipe.get("schema"))
        runs = []
        for seed in args.seeds:
            model = train_base(data, name, seed)
            for method in args.methods:
                run = curve(model, data, name, method, seed, args)
                runs.append(run)
                point = at_share(run, SHARE)
                print(f"{name} seed {seed} {method:<12} base {run['test_auc'][0]:.4f} at >=40%: "
                      f"{point['test_auc']:.4f} ({point['fields_left']} fields) {run['seconds']:.1f}s "
                      f"order {run['removed'][:5]}", flush=True)
        results.append({"dataset": name, "seeds": args.seeds, "rows": {k: len(data.split(k)) for k in
                        ("train", "valid", "test")}, "runs": runs, "summary": summarise(runs, args.methods)})
    out = Path(args.out)
    payload = {"benchmark": "pruning_curves", "environment": environment(), "settings": vars(args),
               "results": results}
    write_results(out, payload, markdown(results, args))
    plot(results, out.with_suffix(".png"))
    print(markdown(results, args))


if __name__ == "__main__":
    main()
