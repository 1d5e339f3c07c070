"""Human-readable summaries of report dictionaries (the JSON stays the source of truth)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def print_metrics(report: dict[str, Any], console: Console | None = None) -> None:
    """A table of AUC / logloss per split and task, and the embedding bytes."""
    console = console or Console()
    table = Table(title=f"sharkrec {report.get('command', '')}".strip(), show_lines=False)
    for column in ("split", "task", "AUC", "logloss", "positive rate", "samples"):
        table.add_column(column, justify="right" if column not in ("split", "task") else "left")
    for split, tasks in report.get("metrics", {}).items():
        for task, values in tasks.items():
            table.add_row(
                split,
                task,
                f"{values['auc']:.4f}",
                f"{values['logloss']:.4f}",
                f"{values['positive_rate']:.3f}",
                f"{values['samples']:,}",
            )
    console.print(table)
    memory = report.get("memory")
    if memory:
        console.print(
            f"embedding bytes: {memory['embedding_bytes']:,} "
            f"(fp32 equivalent {memory['embedding_bytes_fp32']:,}, rows {memory.get('embedding_rows', 0):,})"
        )
    detail = (memory or {}).get("detail")
    if detail:
        console.print(
            "embedding storage: "
            + ", ".join(
                f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in detail.items() if not isinstance(v, dict)
            )
        )
    training = report.get("training")
    if training:
        console.print(
            f"trained {training['steps']:,} steps, {training['samples_per_second']:,.0f} samples/s, "
            f"best step {training['best_step']:,}; {report.get('seconds', 0.0):.1f} s in all"
        )
