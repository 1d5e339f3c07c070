"""Shared helpers for benchmarks: environment description, JSON + Markdown output, the recipe trainings."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sharkrec.io import atomic_open, atomic_save, write_json


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


def save_png(fig: Any, path: str | Path, dpi: int = 100) -> None:
    """Write the matplotlib figure ``fig`` to ``path`` as a PNG atomically, then close it (also on failure)."""
    try:
        atomic_save(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


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


def recipe_config(data: Any, settings: dict[str, Any], eval_every: int | None, seed: int, *,
                  epochs: int = 30) -> Any:
    """The base training of a dataset's recipe (compress_real, frontier): its optimizer / lr / L2, up to
    ``epochs`` with early stopping on the validation log loss (patience 3), validated ``eval_every`` steps or
    twice an epoch."""
    from sharkrec.train.trainer import TrainConfig

    return TrainConfig(**settings, epochs=epochs, patience=3, stop_metric="logloss",
                       eval_every=eval_every or half_epoch(data), seed=seed, progress=False)


def recipe_fine_tune(data: Any, settings: dict[str, Any], eval_every: int | None, seed: int, *,
                     epochs: int = 2) -> Any:
    """The fine-tune of a compressed recipe model: the one fine-tune default at 0.01 x the recipe's lr, its L2,
    up to ``epochs`` (best kept, patience 1)."""
    import dataclasses

    from sharkrec.compress import DEFAULT_FINE_TUNE

    return dataclasses.replace(DEFAULT_FINE_TUNE, lr=0.01 * settings["lr"],
                               embedding_l2=settings.get("embedding_l2", 0.0), seed=seed,
                               eval_every=eval_every or half_epoch(data), epochs=epochs, patience=1)


def half_epoch(data: Any) -> int:
    return max(1, data.train.num_batches(512) // 2)


def capped(split: Any, rows: int | None) -> Any:
    """The first ``rows`` samples of ``split`` (all of it when ``rows`` is None or larger)."""
    return split if rows is None or rows >= len(split) else split.subset(np.arange(rows))
