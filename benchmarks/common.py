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
