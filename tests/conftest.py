"""Shared fixtures: where the real datasets live, and small deterministic settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SHARKREC_SHARED_DATA", REPO.parent / "shared" / "data"))

torch.set_num_threads(1)


def shared_dataset(name: str) -> Path:
    """Path of a dataset under ../shared/data; skips the test when it is absent."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real dataset {name} not found under {SHARED_DATA}")
    return path


@pytest.fixture
def frappe_path() -> Path:
    return shared_dataset("frappe-x1-valid")


@pytest.fixture
def criteo_path() -> Path:
    return shared_dataset("criteo-kaggle-head8k")


@pytest.fixture
def movielens_path() -> Path:
    return shared_dataset("movielens-100k")


@pytest.fixture
def adult_path() -> Path:
    return shared_dataset("uci-adult")
