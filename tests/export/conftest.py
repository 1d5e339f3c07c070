"""Small trained models for the export tests: the toy model (int keys) and a CSV model (string keys)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sharkrec.data.batch import Batch, FieldIds
from sharkrec.data.dataset import PreparedData
from sharkrec.data.prepare import prepare_data
from sharkrec.data.schema import FieldKind, FieldSpec, Schema
from sharkrec.data.vocab import Vocabulary
from sharkrec.export.engine import ServingModel
from sharkrec.model.dlrm import DLRM
from sharkrec.train.run import build_model
from sharkrec.train.trainer import TrainConfig, Trainer
from tests.toy import toy_data


def _train(data: PreparedData, **options: object) -> DLRM:
    model = build_model(data, seed=0, embedding_dim=8, top_mlp=(16,), bottom_mlp=(8,), **options)
    config = TrainConfig(optimizer="adagrad", lr=0.05, epochs=2, patience=0, progress=False)
    Trainer(model, config, data.schema.label_names).fit(data.train, data.valid)
    return model.eval()


@pytest.fixture(scope="session")
def toy_model() -> tuple[DLRM, PreparedData]:
    """The toy data with real (skewed) training counts in its identity vocabularies, and a model."""
    torch.manual_seed(0)
    data = toy_data(rows=2000, seed=1, tasks=2)
    for i, name in enumerate(data.schema.sparse_names):
        rows = data.vocabularies[name].num_rows
        values = data.train.column(i).values
        counts = np.bincount(np.asarray(values, dtype=np.int64), minlength=rows)
        data.vocabularies[name] = Vocabulary.identity(name, counts, np.zeros(rows, np.int64))
    return _train(data), data


def serving_batch(model: ServingModel, batch: Batch, vocabularies: dict[str, Vocabulary]) -> Batch:
    """``batch`` (row ids) re-encoded from raw keys through the artifact's vocabularies (row 0 → unknown key)."""
    sparse = []
    for name, ids in zip(model.schema.sparse_names, batch.sparse, strict=True):
        if name not in model.vocabularies:
            sparse.append(FieldIds(torch.zeros(ids.batch_size(), dtype=torch.int64)))
            continue
        rows = ids.values.numpy()
        keys = np.asarray(vocabularies[name].keys_)
        raw = np.where(rows == 0, -12345, keys[np.maximum(rows - 1, 0)])
        sparse.append(FieldIds(torch.from_numpy(model.vocabularies[name].slots(raw)), ids.offsets))
    return Batch(batch.dense, tuple(sparse), batch.labels)


CSV_SCHEMA = Schema((
    FieldSpec("user", FieldKind.SPARSE),
    FieldSpec("city", FieldKind.SPARSE),
    FieldSpec("tags", FieldKind.SPARSE, separator="|"),
    FieldSpec("age", FieldKind.DENSE),
    FieldSpec("click", FieldKind.LABEL),
), name="shop", delimiter=",", has_header=True)


def write_csv(path: Path, rows: int, seed: int, label: bool = True) -> Path:
    rng = np.random.default_rng(seed)
    users = rng.zipf(1.5, rows) % 60
    cities = rng.choice(["paris", "oslo", "lima", "rome"], rows)
    lines = ["user,city,tags,age" + (",click" if label else "")]
    for i in range(rows):
        tags = "|".join(f"t{t}" for t in rng.integers(0, 8, rng.integers(0, 3)))
        click = int(rng.random() < (0.8 if users[i] % 3 == 0 else 0.2))
        age = "" if i % 17 == 0 else str(int(rng.integers(18, 70)))
        lines.append(f"u{users[i]},{cities[i]},{tags},{age}" + (f",{click}" if label else ""))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def csv_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[DLRM, PreparedData]:
    """A model trained on a small CSV with string keys, a multi-hot field and a dense field."""
    torch.manual_seed(0)
    path = write_csv(tmp_path_factory.mktemp("csv") / "shop.csv", 1500, seed=0)
    data = prepare_data("csv", path, CSV_SCHEMA)
    return _train(data, interaction="dot-concat"), data


@pytest.fixture(scope="module")
def artifact_path(csv_model: tuple[DLRM, PreparedData], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The serving artifact of :func:`csv_model`, in a directory named ``shop-ctr`` (the v2 model name)."""
    from sharkrec.export import save_artifact

    model, data = csv_model
    path = tmp_path_factory.mktemp("art") / "shop-ctr"
    save_artifact(model, data.schema, data.vocabularies, path)
    return path


def write_libfm(path: Path, rows: int, seed: int, pairs: int = 10, label: bool = True) -> Path:
    """``rows`` libFM lines of ``pairs`` pairs; pair j holds one of 5 global indices of field j."""
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(rows):
        indices = np.arange(pairs) * 100 + rng.integers(0, 5, pairs)
        click = int(rng.random() < (0.8 if indices[0] % 2 == 0 else 0.2))
        body = " ".join(f"{index}:1" for index in indices)
        lines.append((f"{1 if click else -1} " if label else "") + body)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def libfm_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[DLRM, PreparedData]:
    """A model trained on a small Frappe-shaped libFM file (10 fields)."""
    torch.manual_seed(0)
    path = write_libfm(tmp_path_factory.mktemp("libfm") / "train.libfm", 600, seed=0)
    data = prepare_data("libfm", path)
    return _train(data), data
