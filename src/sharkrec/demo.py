"""``sharkrec demo``: the whole pipeline on built-in synthetic data, in a few minutes on 2 cores."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console

from sharkrec.data.synthetic import SyntheticConfig, generate
from sharkrec.io import write_json
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
    _, report = train_model(data, train_config, out)
    report["command"] = "demo"
    report["ground_truth"] = truth.to_dict()
    report["seconds"] = time.perf_counter() - started
    write_json(out / REPORT_FILE, report)
    print_metrics(report, console)
    test_auc = report["metrics"]["test"]["click"]["auc"]
    console.print(
        f"test AUC {test_auc:.4f}; the hidden teacher itself scores {truth.teacher_test_auc:.4f} "
        "(the best any model can do on this data)"
    )
    order = truth.order
    console.print(
        f"most important fields by ground truth: {', '.join(order[:5])}; "
        f"pure noise: {', '.join(truth.names_with_role('noise'))}"
    )
    console.print(f"wrote {out / REPORT_FILE} and {out / 'model.pt'} in {report['seconds']:.1f} s")
    return report
