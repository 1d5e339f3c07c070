"""A small trained model for the pruning tests (trained once per session, about a second)."""

from __future__ import annotations

import pytest
import torch

from sharkrec.data.dataset import PreparedData
from sharkrec.model.dlrm import DLRM
from sharkrec.train.run import build_model
from sharkrec.train.trainer import TrainConfig, Trainer
from tests.toy import toy_data


@pytest.fixture(scope="session")
def toy_trained() -> tuple[DLRM, PreparedData]:
    """Three sparse fields (a: informative, b: noise, tags: multi-hot noise), two dense features."""
    torch.manual_seed(0)
    data = toy_data(rows=3000, seed=0)
    model = build_model(data, seed=0, embedding_dim=8, top_mlp=(32,), bottom_mlp=(16,))
    config = TrainConfig(optimizer="adagrad", lr=0.05, embedding_l2=1e-2, weight_decay=0.0, epochs=4, patience=0,
                         evals_per_epoch=1, progress=False)
    Trainer(model, config, data.schema.label_names).fit(data.train, data.valid)
    return model.eval(), data
