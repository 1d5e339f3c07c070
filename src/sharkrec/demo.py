"""``sharkrec demo``: the whole pipeline on built-in synthetic data, in a few minutes on 2 cores."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console
from scipy.stats import spearmanr

from sharkrec.data.dataset import PreparedData
from sharkrec.data.synthetic import GroundTruth, SyntheticConfig, generate
from sharkrec.importance import field_importance
from sharkrec.io import write_json
from sharkrec.model.dlrm import DLRM
from sharkrec.report import print_metrics
from sharkrec.train.run import REPORT_FILE, train_model
from sharkrec.train.trainer import TrainConfig


def run_demo(out: str | Path, rows: int = 300_000, seed: int = 0, console: Console | None = None) -> dict[str, Any]:
    """Generate a Criteo-shaped click log, train a DLRM on it, evaluate it, write ``out/report.json``."""
    console = console or Console()
    started = time.perf_counter()
    out = Path(out)
    config = SyntheticConfig(rows=rows, seed=seed, max_cardinality=max(1000, rows // 2))
    console.print(
        f"[bold]sharkrec demo[/]: generating {rows:,} synthetic Criteo-shaped rows "
        f"({config.num_sparse} sparse fields, {config.num_dense} dense features)"
    )
    generated = generate(config)
    data, truth = generated.data, generated.ground_truth
    console.print(
        f"train/valid/test rows: {len(data.train):,}/{len(data.valid):,}/{len(data.test):,}; "
        f"table rows: {sum(data.cardinalities.values()):,}; generated in {time.perf_counter() - started:.1f} s"
    )
    train_config = TrainConfig(epochs=2, eval_every=max(1, data.train.num_batches(512) // 2), patience=2, seed=seed)
    model, report = train_model(data, train_config, out)
    report["command"] = "demo"
    report["ground_truth"] = truth.to_dict()
    print_metrics(report, console)
    test_auc = report["metrics"]["test"]["click"]["auc"]
    console.print(
        f"test AUC {test_auc:.4f}; the hidden teacher itself scores {truth.teacher_test_auc:.4f} "
        "(the best any model can do on this data)"
    )
    report["importance"] = _importance_against_truth(model, data, truth, console)
    report["seconds"] = time.perf_counter() - started
    write_json(out / REPORT_FILE, report)
    console.print(f"wrote {out / REPORT_FILE} and {out / 'model.pt'} in {report['seconds']:.1f} s")
    return report


def _importance_against_truth(model: DLRM, data: PreparedData, truth: GroundTruth, console: Console) -> dict[str, Any]:
    """F-Permutation (taylor2) on the validation split, next to the generator's ground truth."""
    scores = field_importance(model, data.valid, "taylor2")
    names = list(scores.field_names)
    true_importance = truth.importance
    rho = float(spearmanr([scores.score(n) for n in names], [true_importance[n] for n in names]).statistic)
    ranking = list(scores.ranking())
    noise = set(truth.names_with_role("noise"))
    informative = [n for n in names if true_importance[n] > 0]
    lowest_informative = max(ranking.index(n) for n in informative)  # rank of the worst-scored informative field
    noise_below = sum(ranking.index(n) > lowest_informative for n in noise)
    console.print(
        f"field importance (F-Permutation taylor2, {scores.seconds:.1f} s): top {', '.join(ranking[:6])}; "
        f"teacher's true top: {', '.join(truth.order[:6])}"
    )
    console.print(
        f"Spearman vs true importance {rho:+.2f}; {noise_below} of {len(noise)} pure-noise fields "
        "rank below every informative field (redundant copies may rank high: the model uses them)"
    )
    return {
        "method": scores.method,
        "scores": scores.as_dict(),
        "spearman_vs_truth": rho,
        "noise_below_all_informative": int(noise_below),
        "seconds": scores.seconds,
    }
