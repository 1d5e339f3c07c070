"""``sharkrec demo``: the whole pipeline on built-in synthetic data, in a few minutes on 2 cores."""

from __future__ import annotations

import dataclasses
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

COMPRESSED_DIR = "compressed"


def run_demo(out: str | Path, rows: int = 300_000, seed: int = 0, console: Console | None = None) -> dict[str, Any]:
    """Generate a Criteo-shaped click log, train a DLRM, rank its fields, compress it to 30% of its embedding
    bytes; write ``out/report.json``, ``out/model.pt`` and the artifact ``out/compressed/``."""
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
    report["compress"] = _compress(model, data, out, seed, console)
    report["seconds"] = time.perf_counter() - started
    write_json(out / REPORT_FILE, report)
    console.print(f"wrote {out / REPORT_FILE}, {out / 'model.pt'} and {out / COMPRESSED_DIR} in "
                  f"{report['seconds']:.1f} s")
    return report


def _compress(model: DLRM, data: PreparedData, out: Path, seed: int, console: Console) -> dict[str, Any]:
    """``compress`` to 30% of the embedding bytes (one candidate trained), written as a serving artifact."""
    from sharkrec.compress import CANDIDATE_FINE_TUNE, CompressConfig, compress
    from sharkrec.compress.run import ADAM_FALLBACK_LR, print_summary
    from sharkrec.export import save_artifact

    fine_tune = dataclasses.replace(CANDIDATE_FINE_TUNE, lr=ADAM_FALLBACK_LR, epochs=1, seed=seed)
    result = compress(model, data, CompressConfig(target_memory=0.3, max_trainings=1, fine_tune=fine_tune, seed=seed))
    manifest = save_artifact(result.model, data.schema, data.vocabularies, out / COMPRESSED_DIR)
    console.print("[bold]compress[/] (F-Permutation + F-Quantization, target 30% of the embedding bytes):")
    print_summary(result.report, console)
    return {"chosen": result.report["chosen"]["label"], "bytes": result.report["bytes"],
            "metrics": result.report["metrics"], "auc_drop": result.report["auc_drop"],
            "trainings": result.report["search"]["trainings"], "grid_size": result.report["search"]["grid_size"],
            "artifact_memory": manifest.get("memory", {}), "seconds": result.report["seconds"]}


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
