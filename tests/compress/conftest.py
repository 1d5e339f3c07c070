"""A small trained fp32 model for the compression tests (trained once per session, about a second)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sharkrec.data.dataset import PreparedData
from sharkrec.data.vocab import Vocabulary
from sharkrec.model.dlrm import DLRM
from sharkrec.train.run import build_model
from sharkrec.train.trainer import TrainConfig, Trainer
from tests.toy import toy_data


@pytest.fixture(scope="session")
def trained() -> tuple[DLRM, PreparedData]:
    """Toy data (a: informative, b: noise, tags: multi-hot noise) with real training counts, dim 8."""
    torch.manual_seed(0)
    data = toy_data(rows=3000, seed=0)
    for i, name in enumerate(data.schema.sparse_names):
        rows = data.vocabularies[name].num_rows
        counts = np.bincount(np.asarray(data.train.column(i).values, dtype=np.int64), minlength=rows)
        data.vocabularies[name] = Vocabulary.identity(name, counts, np.zeros(rows, np.int64))
    model = build_model(data, seed=0, embedding_dim=8, top_mlp=(32,), bottom_mlp=(16,))
    config = TrainConfig(optimizer="adagrad", lr=0.05, embedding_l2=1e-2, epochs=4, patience=0, progress=False)
    Trainer(model, config, data.schema.label_names).fit(data.train, data.valid)
    return model.eval(), data


def assert_saved_and_served_agree(result, out, data) -> None:
    """``out/model.pt`` and ``out/artifact`` (what run_compress wrote) score the test batch as ``result.model``."""
    from sharkrec.export import load_artifact
    from sharkrec.train.checkpoint import load_model
    from tests.export.conftest import serving_batch

    reloaded = load_model(out / "model.pt").model
    served = load_artifact(out / "artifact")
    batch = next(iter(data.test.batches(512)))
    expected = result.model.predict_proba(batch)
    torch.testing.assert_close(reloaded.predict_proba(batch), expected)
    got = served.predict_proba(serving_batch(served, batch, data.vocabularies))
    torch.testing.assert_close(got, expected, atol=2e-3, rtol=0)  # int4 rows: FBGEMM's fp16 scale
