"""Every stage on four user-written model families: importance, prune, F-Q in a plain loop, Saec, compress,
export + serve (TorchRec's family is in tests/interop/test_user_torchrec.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

import sharkrec
from sharkrec.cluster import cluster_model
from sharkrec.compress.pipeline import CompressConfig, compress
from sharkrec.data.user import UserData, from_batches
from sharkrec.export import save_user_artifact
from sharkrec.importance.base import field_importance
from sharkrec.prune.loop import prune
from sharkrec.quant import FQuantPolicy, post_training, quantize
from tests.model.families import DIM, FAMILIES, ROWS, batches, click_log, inputs_of, train

EXPECTED_FIELDS = {
    "deepfm": [f"embeddings.{i}" for i in range(5)],
    "dcn-v2": [*(f"bags.{i}" for i in range(5)), "history"],
    "shared-table": [f"features.embedding.{i}" for i in range(5)],
    "two-tower": ["user.f0", "user.f2", "user.f4", "item.f1", "item.f3"],
}
SIGNAL = {"deepfm": ("embeddings.0", "embeddings.1"), "dcn-v2": ("bags.0", "bags.1"),
          "shared-table": ("features.embedding.0", "features.embedding.1"), "two-tower": ("user.f0", "item.f1")}


@pytest.fixture(scope="module")
def logs() -> dict[str, dict[str, torch.Tensor]]:
    return {"train": click_log(4000, 1), "valid": click_log(1500, 2), "test": click_log(1500, 3)}


def auc(model, split) -> float:
    scores = torch.cat([model.predict_proba(b)[:, 0] for b in split.batches(1024)]).numpy()
    return float(roc_auc_score(split.labels[:, 0].numpy(), scores))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_stage_on_a_user_model(family, logs, tmp_path):
    torch.manual_seed(0)
    model = train(FAMILIES[family](), logs["train"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    example = inputs_of(model, logs["train"], slice(0, 8))
    fmap = sharkrec.fields(model, example)
    assert list(fmap.names) == EXPECTED_FIELDS[family] and fmap.embedding_dim == DIM
    wrapped = sharkrec.wrap(model, fmap)
    x = inputs_of(model, logs["test"], slice(0, 300))
    assert torch.allclose(wrapped(*x), model(*x), atol=1e-5)
    data = UserData(wrapped, *(from_batches(wrapped, batches(model, logs[s], 500)) for s in ("train", "valid", "test")))
    base_auc = auc(wrapped, data.test)
    assert base_auc > 0.75

    # importance: taylor2 ranks like exact, the two signal fields on top
    taylor2 = field_importance(wrapped, data.valid, "taylor2")
    exact = field_importance(wrapped, data.valid, "exact", draws=16)
    assert set(taylor2.ranking()[:2]) == set(SIGNAL[family]) == set(exact.ranking()[:2])
    assert spearmanr(taylor2.scores, exact.scores).statistic >= 0.7

    # Algorithm 1: noise fields go first, AUC held, bytes from the held tensors
    result = prune(wrapped, data, target_memory=0.5, fine_tune_fraction=0.2)
    assert not set(result.plan.removed) & set(SIGNAL[family]) and result.plan.removed
    assert auc(result.model, data.test) >= 0.9925 * base_auc
    kept_rows = sum(f.rows for f in fmap.fields if f.name not in result.plan.removed)
    assert result.model.embedding.embedding_bytes() == (kept_rows + len(result.plan.removed)) * DIM * 4

    # F-Quantization in the user's own loop: the drop-in has the model's forward; tiers follow Eq. 7
    qmodel = quantize(model, policy=FQuantPolicy(memory_budget=0.6, recheck_every=4), example=example)
    dense_opt = torch.optim.Adam(qmodel.dense_parameters(), lr=0.005)
    rows_opt = qmodel.embedding.make_sparse_optimizer("adagrad", 0.02)
    qmodel.train()
    for xb, yb in batches(model, logs["train"], 256):
        qmodel.observe(yb)
        loss = F.binary_cross_entropy_with_logits(qmodel(*xb), yb)
        dense_opt.zero_grad()
        rows_opt.zero_grad()
        loss.backward()
        dense_opt.step()
        rows_opt.step()
    qmodel.eval()
    assert qmodel.embedding.embedding_bytes() <= 0.6 * wrapped.embedding.embedding_bytes() + 64
    assert auc(qmodel, data.test) > base_auc - 0.03
    # post-training tiers from counted frequencies, no retraining
    frozen = post_training(wrapped, data, memory_budget=0.6)
    assert frozen.embedding.embedding_bytes() <= 0.6 * wrapped.embedding.embedding_bytes() + 64
    assert auc(frozen, data.test) > base_auc - 0.02

    # Saec: values of each field share rows
    clustered, _ = cluster_model(wrapped, data, rows_ratio=0.5)
    assert sum(clustered.embedding.num_rows().values()) <= 0.55 * sum(f.rows for f in fmap.fields)

    # compress: the budget search to 0.3 of the embedding bytes
    compressed = compress(wrapped, data, CompressConfig(target_memory=0.3, max_trainings=2))
    ratio = compressed.model.embedding.embedding_bytes() / wrapped.embedding.embedding_bytes()
    assert ratio <= 0.3 + 1e-9

    # export + serve without the user's class: served scores equal the in-memory scores
    save_user_artifact(compressed.model, example, tmp_path / "art")
    served = sharkrec.load(tmp_path / "art")
    assert torch.allclose(served(*x), compressed.model(*x), atol=1e-4)

    # the caller's model never changed
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_shared_table_fields_are_row_ranges():
    fmap = sharkrec.fields(FAMILIES["shared-table"](), (click_log(4, 0)["ids"],))
    starts = np.cumsum([0, *ROWS[:-1]]).tolist()
    assert [(f.row_start, f.rows) for f in fmap.fields] == list(zip(starts, ROWS, strict=True))
