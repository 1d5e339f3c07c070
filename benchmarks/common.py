"""Shared helpers for benchmarks: environment description and JSON + Markdown output."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch

from sharkrec.io import atomic_open, write_json


def environment() -> dict[str, Any]:
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
    }


def write_results(path: str | Path, payload: dict[str, Any], markdown: str) -> None:
    """``path`` (JSON) and the same name with ``.md`` (a short table generated from the JSON)."""
    path = Path(path)
    write_json(path, payload)
    with atomic_open(path.with_suffix(".md")) as handle:
        handle.write(markdown)


def train_scheme(data: Any, config: Any, precision: str, options: dict[str, Any], *, embedding_dim: int = 16) -> dict:
    """Train one precision scheme with ``train_model`` and return the figures every quant benchmark reports."""
    import time

    from sharkrec.train.run import train_model

    options = dict(options, seed=config.seed) if precision == "random" else dict(options)
    started = time.perf_counter()
    trained, report = train_model(
        data, config, model_options={"embedding_dim": embedding_dim}, precision=precision, precision_options=options
    )
    test = next(iter(report["metrics"]["test"].values()))
    return {
        "auc": test["auc"],
        "logloss": test["logloss"],
        "bytes_fraction": report["memory"]["embedding_share_of_fp32"],
        "embedding_bytes": report["memory"]["embedding_bytes"],
        "embedding_bytes_fp32": report["memory"]["embedding_bytes_fp32"],
        "rows_moved": int(getattr(trained.embedding, "rows_moved", 0)),
        "samples_per_second": report["training"]["samples_per_second"],
        "steps": report["training"]["steps"],
        "seconds": time.perf_counter() - started,
    }
