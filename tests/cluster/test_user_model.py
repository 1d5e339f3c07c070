"""Saec on a user's own model (a FieldModel over their network) and their data (UserData)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sharkrec.cluster import ClusteredEmbedding, Saec, SaecConfig, cluster_model
from sharkrec.errors import ConfigError
from sharkrec.model.wrapped import FieldModel
from sharkrec.train.fine_tune import DEFAULT_FINE_TUNE
from sharkrec.train.trainer import evaluate
from tests.user_models import BagModel, DeepFM, bag_data, call, deepfm_data, take, train_plain, wrapped_with_data


@pytest.fixture(scope="module")
def deepfm():
    x, y = deepfm_data(3000, 1)
    return wrapped_with_data(train_plain(DeepFM(), x, y), deepfm_data)


@pytest.fixture(scope="module")
def bags():
    inputs, y = bag_data(3000, 1)
    return wrapped_with_data(train_plain(BagModel(), inputs, y), bag_data)


def test_saec_reduces_the_rows_of_a_user_model_and_keeps_its_signature(deepfm):
    wrapped, data = deepfm
    saved = {k: v.clone() for k, v in wrapped.state_dict().items()}
    saec = Saec(SaecConfig(rows_ratio=0.3)).fit(wrapped, data)
    rows_before = sum(wrapped.field_rows().values())
    assert sum(saec.clusters_.values()) <= round(0.3 * rows_before)
    clustered = saec.transform(wrapped)
    assert isinstance(clustered, FieldModel) and isinstance(clustered.embedding, ClusteredEmbedding)
    assert sum(clustered.field_rows().values()) == sum(saec.clusters_.values())
    x, _ = deepfm_data(8, 5)
    assert call(clustered, x).shape == (8,)  # still called like the user's DeepFM
    tasks = data.schema.label_names
    base = evaluate(wrapped, data.test, tasks)["label"]["auc"]
    after = evaluate(clustered, data.test, tasks)["label"]["auc"]
    assert after > 0.6 and after > base - 0.1  # 3.3x fewer rows, no fine-tune yet
    assert all(torch.equal(v, saved[k]) for k, v in wrapped.state_dict().items())


def test_cluster_model_fine_tunes_a_bag_model_with_the_one_default(bags):
    wrapped, data = bags
    fine_tune = DEFAULT_FINE_TUNE.__class__(**{**DEFAULT_FINE_TUNE.to_dict(), "batch_size": 256})
    clustered, report = cluster_model(wrapped, data, rows_ratio=0.4, fine_tune=fine_tune)
    memory = report["memory"]
    assert memory["rows_before"] == 120 + 60
    assert memory["rows_compression"] == pytest.approx(180 / memory["cluster_rows"])
    assert memory["rows_compression"] >= 2.4
    assert report["fine_tune"]["steps"] == 12 and report["fine_tune"]["config"]["lr"] == DEFAULT_FINE_TUNE.lr
    assert report["metrics"]["test"]["label"]["auc"] > 0.6
    inputs, _ = bag_data(8, 5)
    assert clustered(*take(inputs, slice(0, 8))).shape == (8,)  # users (B,), tags (B, L) as before


def test_saec_refuses_a_model_without_the_field_path(deepfm):
    _, data = deepfm
    with pytest.raises(ConfigError, match=r"^cannot cluster a Sequential: it lacks embedding.*FieldModel.wrap"):
        Saec(SaecConfig(rows_ratio=0.5)).fit(nn.Sequential(nn.Linear(2, 1)), data)
