"""``compress`` (the budget search over pruning and F-Quantization) on a user's own model and data."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from sharkrec.compress import CompressConfig, compress
from sharkrec.errors import ConfigError
from sharkrec.model.wrapped import FieldModel
from sharkrec.quant.dropin import quantize
from sharkrec.train.fine_tune import DEFAULT_FINE_TUNE
from tests.user_models import BagModel, DeepFM, bag_data, deepfm_data, train_plain, wrapped_with_data

FAST = dataclasses.replace(DEFAULT_FINE_TUNE, batch_size=256)


@pytest.mark.parametrize(("make_model", "make_data"), [(DeepFM, deepfm_data), (BagModel, bag_data)],
                         ids=["deepfm", "bags"])
def test_compress_meets_the_budget_on_a_user_model(make_model, make_data):
    inputs, y = make_data(3000, 1)
    user_model = train_plain(make_model(), inputs, y)
    saved = {k: v.clone() for k, v in user_model.state_dict().items()}
    wrapped, data = wrapped_with_data(user_model, make_data)
    result = compress(wrapped, data, CompressConfig(target_memory=0.3, max_auc_drop=0.01, max_trainings=1,
                                                    fine_tune=FAST))
    compressed = result.model
    assert isinstance(compressed, FieldModel)
    fp32_bytes = sum(wrapped.field_rows().values()) * 16 * 4
    held = compressed.embedding.embedding_bytes()  # from the tensors the layer holds
    assert result.report["bytes"]["fp32"] == fp32_bytes and result.report["bytes"]["after_quantization"] == held
    assert held <= 0.3 * fp32_bytes
    test = result.report["metrics"]["test"]["label"]["auc"]
    assert test > 0.6 and test > result.report["metrics_before"]["test"]["label"]["auc"] - 0.05
    example, _ = make_data(8, 5)
    out = compressed(*example) if isinstance(example, tuple) else compressed(example)
    assert out.shape == (8,)  # called like the user's model
    assert all(torch.equal(v, saved[k]) for k, v in user_model.state_dict().items())


def test_compress_refuses_a_model_without_the_field_path():
    wrapped, data = wrapped_with_data(DeepFM(), deepfm_data, n=500)
    with pytest.raises(ConfigError, match=r"^cannot compress a DeepFM: it lacks embedding.*FieldModel.wrap"):
        compress(DeepFM(), data, CompressConfig(fine_tune=FAST))
    with pytest.raises(ConfigError, match="compress starts from an fp32 model"):
        compress(quantize(wrapped, plan="int8"), data, CompressConfig(fine_tune=FAST))
