"""Prune a saved model and write model.pt, plan.json, report.json and a curve: the library behind ``sharkrec prune``."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from sharkrec import distributed
from sharkrec.data.dataset import PreparedData
from sharkrec.errors import ConfigError
from sharkrec.io import atomic_save, write_json
from sharkrec.model.dlrm import DLRM
from sharkrec.prune.loop import PruneConfig, PruneResult, prune
from sharkrec.train import fine_tune
from sharkrec.train.checkpoint import MODEL_FILE, ModelBundle, save_model
from sharkrec.train.run import memory_summary
from sharkrec.train.trainer import TrainConfig

PLAN_FILE = "plan.json"
REPORT_FILE = "report.json"
CURVE_FILE = "pruning_curve.png"


def fine_tune_config(bundle: ModelBundle, **overrides: Any) -> TrainConfig:
    """The one fine-tune (:func:`sharkrec.train.fine_tune.fine_tune_config`) for a saved model: its optimizer,
    batch size and regularisation at ``LR_SCALE`` x its lr, one epoch, then ``overrides``."""
    return fine_tune.fine_tune_config(bundle.info.get("train_config"), **overrides)


def run_prune(bundle: ModelBundle, data: PreparedData, method: str = "default", out_dir: str | Path | None = None,
              *, config: PruneConfig, order: list[str] | None = None,
              on_step: Callable[[dict[str, Any]], None] | None = None) -> tuple[PruneResult, dict[str, Any]]:
    """Run :func:`sharkrec.prune.prune` on a saved model; with ``out_dir`` write the model, plan, report, PNG.

    Files are written only after the whole run succeeded, report.json last.
    """
    started = time.perf_counter()
    model = bundle.model
    if not isinstance(model, DLRM):
        raise ConfigError(f"cannot prune a {type(model).__name__}; sharkrec prunes DLRM models")
    result = prune(model, data, method, order=order, config=config, on_step=on_step)
    final = [h for h in result.history if h["accepted"]][-1]
    base = result.history[0]
    memory = memory_summary(result.model)
    memory.update({"embedding_bytes_before": base["embedding_bytes"],
                   "embedding_share_kept": memory["embedding_bytes"] / base["embedding_bytes"],
                   "target_memory": config.target_memory})
    report: dict[str, Any] = {
        "command": "prune",
        "method": result.plan.method,
        "metrics": final["metrics"],
        "base_metrics": base["metrics"],
        "memory": memory,
        "plan": result.plan.to_dict(),
        "history": list(result.history),
        "stopped_because": result.stopped_because,
        "config": {**{k: v for k, v in dataclasses.asdict(config).items() if k != "fine_tune"},
                   "fine_tune": config.fine_tune.to_dict(), "keep": list(config.keep)},
    }
    report["seconds"] = time.perf_counter() - started
    if out_dir is not None and distributed.is_main():  # under torchrun every rank holds the result
        out = Path(out_dir)
        info = {**bundle.info, "pruning_plan": result.plan.to_dict(), "metrics": final["metrics"]}
        save_model(out / MODEL_FILE, result.model, bundle.schema, bundle.vocabularies, info=info)
        write_json(out / PLAN_FILE, result.plan.to_dict())
        save_curve(result.history, config.t_accuracy, out / CURVE_FILE)
        write_json(out / REPORT_FILE, report)
    distributed.barrier()  # other ranks return once the files exist
    return result, report


def save_curve(history: tuple[dict[str, Any], ...] | list[dict[str, Any]], t_accuracy: float,
               path: str | Path) -> None:
    """Test AUC (per task) against the number of fields left, with the T_accuracy floor; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for task in history[0]["metrics"]["test"]:
        xs = [h["num_fields_kept"] for h in history]
        ys = [h["metrics"]["test"][task]["auc"] for h in history]
        line = ax.plot(xs, ys, marker="o", label=f"{task} test AUC")[0]
        ax.axhline(t_accuracy * ys[0], color=line.get_color(), linestyle=":", label=f"{task} T_accuracy floor")
        rejected = [(x, y) for x, y, h in zip(xs, ys, history, strict=True) if not h["accepted"]]
        if rejected:
            ax.plot(*zip(*rejected, strict=True), "x", color="red", markersize=10, label="undone step")
    ax.set_xlabel("fields left")
    ax.set_ylabel("test AUC")
    ax.invert_xaxis()
    ax.legend(fontsize=8)
    ax.set_title("pruning (Algorithm 1)")
    fig.tight_layout()
    try:
        atomic_save(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    finally:
        plt.close(fig)


def print_step(entry: dict[str, Any], console: Console | None = None) -> None:
    """One line per step: fields removed, bytes kept, test AUC per task."""
    console = console or Console()
    aucs = ", ".join(f"{t} {m['auc']:.4f}" for t, m in entry["metrics"]["test"].items())
    removed = ",".join(entry["removed"]) or "-"
    status = "" if entry["accepted"] else " [red](below T_accuracy: undone)[/red]"
    console.print(f"step {entry['step']}: -{removed} | {entry['num_fields_kept']} fields | "
                  f"{entry['removed_share']:.1%} bytes removed | test AUC {aucs}{status}", soft_wrap=True)
