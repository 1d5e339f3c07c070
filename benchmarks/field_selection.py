"""The ERASE protocol (Jia et al., KDD 2024) for SHARK Figure 2 / Table 2: field selection by every method.

For each dataset, seed and backbone: train the backbone, then for every method score the fields once on the
validation split (``score_seconds``, the method's own timer), and remove sparse fields in the method's order
(weakest first; the dense field is never removed). At each number
of kept fields k the model is (a) **retrained** from scratch with only those fields (the removed tables
answer a constant, so they carry no information) and (b) **fine-tuned**: the trained model with the fields
replaced by their mean vector E[v_i], fine-tuned by the library's one fine-tune (:func:`fit_unless_worse`).
Test AUC per k gives the curve (Figure 2); AUKC is the area under test AUC against k, divided by the
k range (so it reads as a mean AUC over the curve; higher is better). Also: Spearman of each method's
field scores against ``exact`` (Monte-Carlo Eq. 1) and, on synthetic data, against the generator's truth;
``pruning_seconds`` = score seconds + the measured seconds of every retrain at every k (Table 2's whole
pruning). Identical kept sets are trained once and shared between methods (their measured seconds are
still charged to every method that needs them).

Backbones (``--backbones``, ERASE's several backbones): ``dlrm``, sharkrec's DLRM with the dataset's recipe
(``benchmarks/train_real.py``); ``deepfm`` and ``dcnv2``, the user-written networks of
``benchmarks/user_models.py`` wrapped by the model-agnostic path (``FieldModel.wrap``, as
``benchmarks/any_model.py``) and trained by sharkrec's trainer on the FieldModel (Adam 1e-3, the user loop's
settings in any_model.py). A user backbone takes the sparse fields only (dense columns are not its inputs)
and the first task; its retrains start from ``FieldModel.fresh_copy(seed)`` (every weight re-drawn) with
the removed fields answered by a constant, exactly as on the DLRM.

Records go to ``--out`` (a JSON list; one per method x dataset x seed x backbone, ``backbone`` absent in
records written before it meant ``dlrm``; a rerun skips records already there with the same ``size``), a
Markdown table next to it and one PNG of curves per dataset and backbone.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/field_selection.py --quick --seeds 0 1 2
    OMP_WAIT_POLICY=PASSIVE python benchmarks/field_selection.py --quick --seeds 0 --backbones deepfm dcnv2
    OMP_WAIT_POLICY=PASSIVE python benchmarks/field_selection.py --seeds 0 1 2 --synthetic-rows 2000000  # full
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, os.path.dirname(__file__))

import numpy as np
import torch
from scipy.stats import spearmanr

from any_model import layout_of, wrap_user_model
from common import capped, environment, save_png
from sharkrec.data.dataset import EncodedSplit, PreparedData
from sharkrec.data.loading import load_data
from sharkrec.importance import FieldImportance, LearnedSelection, field_importance, get_method
from sharkrec.io import atomic_open, write_json
from sharkrec.model.dlrm import DENSE_FIELD
from sharkrec.model.protocol import FieldPathModel
from sharkrec.prune import remove_fields
from sharkrec.train.fine_tune import fine_tune_config
from sharkrec.train.run import build_model
from sharkrec.train.trainer import TrainConfig, Trainer, evaluate, fit_unless_worse
from train_real import RECIPES
from user_models import DCNv2, DeepFM

METHODS = ("taylor2", "exact", "permutation", "lasso", "fscd", "autofield", "umec", "adafs")
DATASETS = ("frappe", "criteo", "movielens", "adult", "synthetic")
LEARNED = ("fscd", "autofield", "umec", "adafs")
SYNTHETIC_RECIPE = {"train": {"optimizer": "adagrad", "lr": 0.05, "embedding_l2": 1e-2}, "model": {}}
BACKBONES = ("dlrm", "deepfm", "dcnv2")
USER_MODELS = {"deepfm": DeepFM, "dcnv2": DCNv2}
#: a user backbone trains with the settings of any_model.py's user loop (Adam 1e-3, no L2), whatever the dataset
USER_TRAIN = {"optimizer": "adam", "lr": 1e-3, "embedding_l2": 0.0, "weight_decay": 0.0}
USER_DIM = 16


def load(name: str, args: argparse.Namespace) -> tuple[PreparedData, dict[str, Any], dict[str, float] | None]:
    """(data, recipe, ground-truth importance or None); real data through the recipes' own loaders."""
    if name == "synthetic":
        from sharkrec.data.synthetic import SyntheticConfig, generate

        synthetic = generate(SyntheticConfig.small(rows=args.synthetic_rows))
        return synthetic.data, SYNTHETIC_RECIPE, synthetic.ground_truth.importance
    recipe = RECIPES[name]
    return load_data(recipe["format"], recipe["path"], schema=recipe.get("schema")), recipe, None


@dataclass(frozen=True)
class Backbone:
    """One backbone on one dataset and seed: the splits it reads, its tasks, its training settings, and
    ``fresh()``: an untrained model (seeded), what the base model and every retrain start from."""

    kind: str
    train: EncodedSplit
    valid: EncodedSplit
    test: EncodedSplit
    label_names: tuple[str, ...]
    settings: dict[str, Any]  # TrainConfig keywords (optimizer, lr, L2)
    eval_every: int | None
    fresh: Callable[[], FieldPathModel]


def make_backbone(kind: str, data: PreparedData, recipe: dict[str, Any], train: EncodedSplit, seed: int) -> Backbone:
    """sharkrec's DLRM of the recipe, or a user network of ``benchmarks/user_models.py`` wrapped as a
    FieldModel (its splits recorded through it: the sparse fields, the first task)."""
    eval_every = recipe.get("eval_every")
    if kind == "dlrm":
        return Backbone(kind, train, data.valid, data.test, tuple(data.schema.label_names), recipe["train"],
                        eval_every, lambda: build_model(data, seed, **recipe["model"]))
    layout = layout_of(data)
    torch.manual_seed(seed)
    untrained, user, _ = wrap_user_model(USER_MODELS[kind](layout, USER_DIM), layout, train, data.valid, data.test)
    assert user.valid is not None and user.test is not None
    return Backbone(kind, user.train, user.valid, user.test, untrained.task_names, USER_TRAIN, eval_every,
                    lambda: untrained.fresh_copy(seed))


def train_config(backbone: Backbone, seed: int, epochs: int) -> TrainConfig:
    eval_every = backbone.eval_every or max(1, backbone.train.num_batches(512) // 2)
    return TrainConfig(**backbone.settings, epochs=epochs, patience=3, stop_metric="logloss", eval_every=eval_every,
                       seed=seed, progress=False)


def fit(model: FieldPathModel, backbone: Backbone, config: TrainConfig) -> tuple[Any, float]:
    started = time.perf_counter()
    Trainer(model, config, backbone.label_names).fit(backbone.train, backbone.valid)
    return model.eval(), time.perf_counter() - started


def test_auc(model: FieldPathModel, backbone: Backbone) -> float:
    return float(evaluate(model, backbone.test, backbone.label_names)[backbone.label_names[0]]["auc"])


def score(method: str, model: FieldPathModel, backbone: Backbone, seed: int,
          args: argparse.Namespace) -> FieldImportance:
    options: dict[str, Any] = {"seed": seed, "max_samples": args.max_score_samples}
    if method == "exact":
        options["draws"] = args.exact_draws
    if method == "permutation":
        options["repeats"] = args.repeats
    if issubclass(get_method(method), LearnedSelection):
        options.update(train=backbone.train, epochs=args.search_epochs)
    return field_importance(model, backbone.valid, method, **options)


def keep_counts(sparse: int, points: int | None) -> list[int]:
    """k values of the curve, from all sparse fields down to 1 (``points`` evenly spaced, or every k)."""
    if points is None or points >= sparse:
        return list(range(sparse, 0, -1))
    return sorted({round(k) for k in np.linspace(sparse, 1, points)}, reverse=True)


def rank_correlation(scores: Any, reference: Any) -> float | None:
    """Spearman's rho, or None where it is undefined (a method that gave every field the same score)."""
    rho = float(spearmanr(scores, reference)[0])
    return rho if np.isfinite(rho) else None


def finite(record: dict[str, Any]) -> dict[str, Any]:
    """NaN → None in a record's top-level numbers, so the JSON file is strict."""
    return {k: None if isinstance(v, float) and not np.isfinite(v) else v for k, v in record.items()}


def aukc(counts: list[int], aucs: list[float]) -> float:
    """Area under test AUC against fields kept, divided by the k range (a mean AUC over the curve)."""
    x, y = np.array(counts[::-1], dtype=float), np.array(aucs[::-1])
    return float(np.trapezoid(y, x) / (x[-1] - x[0])) if len(x) > 1 else float(y[0])


class Curves:
    """Retrain / fine-tune test AUCs per kept set of one (dataset, seed, backbone), each trained once."""

    def __init__(self, backbone: Backbone, base: FieldPathModel, seed: int, args: argparse.Namespace) -> None:
        self.backbone, self.base, self.seed, self.args = backbone, base, seed, args
        self.cache: dict[tuple[str, ...], dict[str, float]] = {}

    def point(self, removed: tuple[str, ...]) -> dict[str, float]:
        key = tuple(sorted(removed))
        if key not in self.cache:
            backbone = self.backbone
            config = train_config(backbone, self.seed, self.args.retrain_epochs)
            fresh = remove_fields(backbone.fresh(), key, backbone.valid)  # removed fields: a constant each
            retrained, retrain_seconds = fit(fresh, backbone, config)
            started = time.perf_counter()
            tune = fine_tune_config(config.to_dict(), epochs=self.args.fine_tune_epochs, patience=0)
            tuned, _ = fit_unless_worse(remove_fields(self.base, key, backbone.valid), tune, backbone.label_names,
                                        backbone.train, backbone.valid)
            self.cache[key] = {"retrain": test_auc(retrained, backbone), "retrain_seconds": retrain_seconds,
                               "fine_tune": test_auc(tuned, backbone),
                               "fine_tune_seconds": time.perf_counter() - started}
        return self.cache[key]


def run_method(method: str, curves: Curves, counts: list[int], exact: FieldImportance | None,
               truth: dict[str, float] | None, name: str, base_auc: float) -> dict[str, Any]:
    args, kind = curves.args, curves.backbone.kind
    result = exact if method == "exact" and exact is not None else score(method, curves.base, curves.backbone,
                                                                         curves.seed, args)
    sparse_order = [f for f in result.ranking() if f != DENSE_FIELD]  # most important first
    retrain, fine, seconds, fine_seconds = [], [], 0.0, 0.0
    for k in counts:
        point = {"retrain": base_auc, "fine_tune": base_auc, "retrain_seconds": 0.0, "fine_tune_seconds": 0.0}
        if k < len(sparse_order):
            point = curves.point(tuple(sparse_order[k:]))
        retrain.append(point["retrain"])
        fine.append(point["fine_tune"])
        seconds += point["retrain_seconds"]
        fine_seconds += point["fine_tune_seconds"]
    record = {
        "method": method, "dataset": name, "seed": curves.seed, "backbone": kind, "size": args.size,
        "aukc": aukc(counts, retrain), "aukc_fine_tune": aukc(counts, fine),
        "score_seconds": result.seconds, "passes": result.passes, "pruning_seconds": result.seconds + seconds,
        "pruning_seconds_fine_tune": result.seconds + fine_seconds,
        "spearman_vs_exact": None if exact is None else rank_correlation(result.scores, exact.scores),
        "spearman_vs_truth": None if truth is None else rank_correlation(
            result.scores, [truth[f] for f in result.field_names]),
        "counts": counts, "test_auc_retrain": retrain, "test_auc_fine_tune": fine,
        "ranking": list(result.ranking()), "scores": result.as_dict(), "base_test_auc": base_auc,
    }
    print(f"{name} seed {curves.seed} {kind} {method:<11} AUKC {record['aukc']:.4f} "
          f"(fine-tune {record['aukc_fine_tune']:.4f}) "
          f"score {result.seconds:.2f}s pruning {record['pruning_seconds']:.0f}s "
          f"rho_exact {record['spearman_vs_exact']}", flush=True)
    return record


def backbone_of(record: dict[str, Any]) -> str:
    """A record's backbone (records written before backbones existed are the DLRM's)."""
    return str(record.get("backbone", "dlrm"))


def run_dataset_seed(name: str, seed: int, backbones: list[str], methods: list[str], records: list[dict[str, Any]],
                     args: argparse.Namespace, out: Path) -> None:
    done = {(r["method"], r["dataset"], r["seed"], backbone_of(r)) for r in records if r.get("size") == args.size}
    todo = {kind: [m for m in methods if (m, name, seed, kind) not in done] for kind in backbones}
    if not any(todo.values()):
        return
    torch.manual_seed(seed)
    data, recipe, truth = load(name, args)
    train = capped(data.train, args.max_train_rows)
    for kind in backbones:
        if not todo[kind]:
            continue
        started = time.perf_counter()
        backbone = make_backbone(kind, data, recipe, train, seed)
        base, _ = fit(backbone.fresh(), backbone, train_config(backbone, seed, args.train_epochs))
        base_auc = test_auc(base, backbone)
        curves = Curves(backbone, base, seed, args)
        counts = keep_counts(len(base.sparse_names), args.points)
        exact = score("exact", base, backbone, seed, args) if "exact" in methods else None
        for method in todo[kind]:
            records.append(run_method(method, curves, counts, exact, truth, name, base_auc))
            write_json(out, records)  # after every record: an interrupted run resumes here
        print(f"[{time.perf_counter() - started:.0f}s] {name} seed {seed} {kind}: base test AUC {base_auc:.4f}",
              flush=True)


def summary(records: list[dict[str, Any]], size: str, backbone: str) -> dict[tuple[str, str], dict[str, float]]:
    """(dataset, method) → mean and std over seeds of one backbone's records of this size."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        if r.get("size") == size and backbone_of(r) == backbone:
            groups.setdefault((r["dataset"], r["method"]), []).append(r)
    out = {}
    for key, rows in groups.items():
        def stat(field: str, rows: list[dict[str, Any]] = rows) -> tuple[float, float]:
            values = np.array([r[field] for r in rows if r[field] is not None], dtype=float)
            values = values[np.isfinite(values)]
            if len(values) == 0:
                return float("nan"), float("nan")
            return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0
        out[key] = {"seeds": len(rows), **{f"{f}_{s}": v for f in ("aukc", "aukc_fine_tune", "score_seconds",
                    "pruning_seconds", "spearman_vs_exact", "spearman_vs_truth") for s, v in zip(("mean", "std"),
                    stat(f), strict=True)}}
    return out


def gap(method: str, other: dict[str, float], mine: dict[str, float], key: str) -> str:
    """"<method> <its AUKC>, +<difference>" and whether the difference is within one seed std of either."""
    diff = other[f"{key}_mean"] - mine[f"{key}_mean"]
    spread = max(other[f"{key}_std"], mine[f"{key}_std"])
    return f"{method} {other[f'{key}_mean']:.4f}, +{diff:.4f}{'' if diff > spread else ' < 1 std'}"


def readme_table(table: dict[tuple[str, str], dict[str, float]], datasets: list[str], methods: list[str]) -> list[str]:
    """Methods x datasets: AUKC retrain / fine-tune (mean ± std over seeds), then mean score seconds."""
    lines = ["| method | " + " | ".join(f"{d}: AUKC retrain / fine-tune" for d in datasets)
             + " | score s (mean over datasets) |", "|---|" + "---|" * len(datasets) + "---:|"]
    for method in methods:
        rows = [table.get((d, method)) for d in datasets]
        if any(r is None for r in rows):
            continue
        cells = [f"{r['aukc_mean']:.4f} ± {r['aukc_std']:.4f} / {r['aukc_fine_tune_mean']:.4f} ± "
                 f"{r['aukc_fine_tune_std']:.4f}" for r in rows]
        seconds = np.mean([r["score_seconds_mean"] for r in rows])
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {seconds:.2f} |")
    return lines


def markdown(records: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """One section per backbone with records of this size (the DLRM first), then the settings."""
    lines = [f"# Field selection, ERASE protocol (size: {args.size})", ""]
    present = {backbone_of(r) for r in records if r.get("size") == args.size}
    for backbone in [b for b in BACKBONES if b in present]:
        lines += backbone_section(records, args, backbone)
    lines += ["", f"Settings: {json.dumps(settings(args))}. AUKC = area under test AUC vs sparse fields kept "
              "divided by the k range. Curves: field_selection_<dataset>.png (DLRM), "
              "field_selection_<dataset>_<backbone>.png (the others). Generated by benchmarks/field_selection.py.", ""]
    return "\n".join(lines)


def backbone_section(records: list[dict[str, Any]], args: argparse.Namespace, backbone: str) -> list[str]:
    table = summary(records, args.size, backbone)
    lines = [f"## Backbone: {backbone}", "",
             "| dataset | method | seeds | AUKC retrain (mean ± std) | AUKC fine-tune (mean ± std) | score s | "
             "whole pruning s | Spearman vs exact | Spearman vs truth |",
             "|---|---|---:|---|---|---:|---:|---:|---:|"]
    datasets = [d for d in args.datasets if any(k[0] == d for k in table)]
    for dataset in datasets:
        for method in args.methods:
            s = table.get((dataset, method))
            if s is None:
                continue
            truth = "-" if np.isnan(s["spearman_vs_truth_mean"]) else f"{s['spearman_vs_truth_mean']:.3f}"
            lines.append(f"| {dataset} | {method} | {s['seeds']} | {s['aukc_mean']:.4f} ± {s['aukc_std']:.4f} | "
                         f"{s['aukc_fine_tune_mean']:.4f} ± {s['aukc_fine_tune_std']:.4f} | "
                         f"{s['score_seconds_mean']:.2f} | {s['pruning_seconds_mean']:.0f} | "
                         f"{s['spearman_vs_exact_mean']:.3f} | {truth} |")
    lines += ["", f"### README table ({backbone})", "", *readme_table(table, datasets, args.methods)]
    lines += ["", f"### taylor2 against the baselines ({backbone})", ""]
    for dataset in datasets:
        mine = table.get((dataset, "taylor2"))
        if mine is None:
            continue
        others = {m: table[(dataset, m)] for m in args.methods if m != "taylor2" and (dataset, m) in table}
        for key, label in (("aukc", "retrain"), ("aukc_fine_tune", "fine-tune")):
            beaten = [m for m, s in others.items() if s[f"{key}_mean"] > mine[f"{key}_mean"]]
            lines.append(f"- {dataset}, {label}: taylor2 AUKC {mine[f'{key}_mean']:.4f} " + (
                "≥ every baseline" if not beaten
                else "below " + "; ".join(gap(m, others[m], mine, key) for m in beaten)))
        ratios = [f"{m} {others[m]['score_seconds_mean'] / mine['score_seconds_mean']:.0f}x"
                  for m in LEARNED if m in others]
        lines.append(f"- {dataset}: score seconds taylor2 {mine['score_seconds_mean']:.3f}; learned methods take "
                     + ", ".join(ratios) + " as long")
    undefined = [f"{r['method']} on {r['dataset']} seed {r['seed']}" for r in records
                 if r.get("size") == args.size and backbone_of(r) == backbone and r["spearman_vs_exact"] is None
                 and r["dataset"] in datasets]
    if undefined:
        lines += ["", "Spearman undefined (every field got the same score; left out of the means, and that run's "
                  "removal order is the field order): " + ", ".join(undefined) + "."]
    return [*lines, ""]


def plot(records: list[dict[str, Any]], dataset: str, backbone: str, args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, key, label in ((axes[0], "test_auc_retrain", "retrain"), (axes[1], "test_auc_fine_tune", "fine-tune")):
        for method in args.methods:
            rows = [r for r in records if r["dataset"] == dataset and r["method"] == method and r["size"] == args.size
                    and backbone_of(r) == backbone]
            if not rows:
                continue
            values = np.array([r[key] for r in rows])  # (seeds, counts)
            x, mean = np.array(rows[0]["counts"]), values.mean(0)
            ax.plot(x, mean, marker="o", markersize=3, label=method)
            if len(rows) > 1:
                ax.fill_between(x, mean - values.std(0, ddof=1), mean + values.std(0, ddof=1), alpha=0.12)
        ax.invert_xaxis()
        ax.set_xlabel("sparse fields kept")
        ax.set_ylabel("test AUC")
        ax.set_title(f"{dataset}, {backbone}: {label} at each count (mean ± std over seeds)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path)


def settings(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("train_epochs", "retrain_epochs", "fine_tune_epochs", "search_epochs", "max_train_rows", "points",
            "max_score_samples", "exact_draws", "repeats", "synthetic_rows")
    return {k: getattr(args, k) for k in keys}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--backbones", nargs="+", default=["dlrm"], choices=BACKBONES,
                        help="models to select fields for (default dlrm; deepfm, dcnv2: user networks wrapped)")
    parser.add_argument("--quick", action="store_true",
                        help="small run: 5 points per curve, 20k training rows, short training (see --help)")
    parser.add_argument("--points", type=int, default=None, help="k values per curve (default: every k)")
    parser.add_argument("--max-train-rows", type=int, default=None)
    parser.add_argument("--train-epochs", type=int, default=40)
    parser.add_argument("--retrain-epochs", type=int, default=40)
    parser.add_argument("--fine-tune-epochs", type=int, default=2)
    parser.add_argument("--search-epochs", type=int, default=3, help="epochs of the learned methods' search")
    parser.add_argument("--max-score-samples", type=int, default=None)
    parser.add_argument("--exact-draws", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--synthetic-rows", type=int, default=2_000_000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/field_selection.json")
    args = parser.parse_args()
    if args.quick:
        quick = {"points": 5, "max_train_rows": 20_000, "train_epochs": 8, "retrain_epochs": 4, "fine_tune_epochs": 1,
                 "search_epochs": 2, "max_score_samples": 4000, "exact_draws": 16, "repeats": 3,
                 "synthetic_rows": 40_000}
        for key, value in quick.items():
            if parser.get_default(key) == getattr(args, key):
                setattr(args, key, value)
    args.size = json.dumps(settings(args), sort_keys=True)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    records: list[dict[str, Any]] = [finite(r) for r in json.loads(out.read_text())] if out.exists() else []
    started, before = time.perf_counter(), len(records)
    for seed in args.seeds:  # every dataset gets seed 0 before any gets seed 1
        for name in args.datasets:
            run_dataset_seed(name, seed, args.backbones, args.methods, records, args, out)
            print(f"[{time.perf_counter() - started:.0f}s] {name} seed {seed} done", flush=True)
    for name in args.datasets:
        for backbone in args.backbones:
            suffix = "" if backbone == "dlrm" else f"_{backbone}"  # the DLRM's curves keep their old file name
            plot(records, name, backbone, args, out.with_name(f"{out.stem}_{name}{suffix}.png"))
    text = markdown(records, args)
    with atomic_open(out.with_suffix(".md")) as handle:
        handle.write(text)
    if len(records) > before:  # one entry per run that computed records: its wall time and environment
        log = out.with_name(f"{out.stem}_run.json")
        runs = json.loads(log.read_text()) if log.exists() else []
        runs.append({"benchmark": "field_selection", "environment": environment(), "settings": settings(args),
                     "datasets": args.datasets, "seeds": args.seeds, "backbones": args.backbones,
                     "records_computed": len(records) - before,
                     "seconds": time.perf_counter() - started})
        write_json(log, runs)
    print(text)


if __name__ == "__main__":
    main()
