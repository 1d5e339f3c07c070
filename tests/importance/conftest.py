"""Trained models shared by the importance tests (trained once per session, a few seconds each)."""

from __future__ import annotations

import pytest
import torch

from sharkrec.data.dataset import PreparedData
from sharkrec.data.synthetic import SyntheticConfig, SyntheticData, generate
from sharkrec.model.dlrm import DLRM, HeadKind
from sharkrec.train.run import build_model
from sharkrec.train.trainer import TrainConfig, Trainer
from tests.toy import toy_data

FAST = TrainConfig(optimizer="adagrad", lr=0.05, embedding_l2=1e-2, weight_decay=0.0, epochs=5, patience=3,
                   eval_every=16, progress=False)


def train(data: PreparedData, config: TrainConfig = FAST, **options: object) -> DLRM:
    model = build_model(data, seed=0, **options)
    Trainer(model, config, data.schema.label_names).fit(data.train, data.valid)
    return model.eval()


@pytest.fixture(scope="session")
def toy_two_task() -> tuple[DLRM, PreparedData]:
    """Two tasks, an MMoE head, a multi-hot field and dense features, trained briefly."""
    torch.manual_seed(0)
    data = toy_data(rows=2000, tasks=2)
    config = TrainConfig(optimizer="adagrad", lr=0.05, embedding_l2=1e-2, weight_decay=0.0, epochs=2,
                         evals_per_epoch=1, patience=2, progress=False)
    return train(data, config, head=HeadKind.MMOE, num_experts=2, top_mlp=(16,), tower_mlp=(8,)), data


@pytest.fixture(scope="session")
def synthetic_trained() -> tuple[DLRM, SyntheticData]:
    synthetic = generate(SyntheticConfig.small())
    return train(synthetic.data), synthetic
