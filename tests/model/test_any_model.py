"""Every stage on four user-written model families (tests/model/families.py): the field map, exact replay,
importance, prune (Algorithm 1), F-Quantization in a plain loop, Saec, compress, export + serve, and the
one-line errors a user meets first. TorchRec's family is in tests/interop/test_user_torchrec.py."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score
from torch import nn

import sharkrec
from sharkrec.cluster import cluster_model
from sharkrec.compress.pipeline import CompressConfig, compress
from sharkrec.data.user import UserData, from_batches
from sharkrec.errors import ConfigError, DataError
from sharkrec.export import save_user_artifact
from sharkrec.importance.base import field_importance
from sharkrec.model.fieldmap import find_fields
from sharkrec.model.lookups import Field
from sharkrec.model.wrapped import FieldModel
from sharkrec.prune.loop import prune
from sharkrec.quant import FQuantPolicy, post_training, quantize
from tests.model.families import (
    DIM,
    FAMILIES,
    HISTORY_ROWS,
    ROWS,
    SIGNAL_FIELDS,
    DeepFM,
    batches,
    click_log,
    inputs_of,
    train,
)
from tests.user_models import train_fquant

STARTS = np.cumsum([0, *ROWS[:-1]]).tolist()
#: the field map each family must produce: (name, module, rows, dim, key, row_start, pooling)
EXPECTED = {
    "deepfm": [Field(f"embeddings.{i}", f"embeddings.{i}", r, DIM) for i, r in enumerate(ROWS)],
    "dcn-v2": [*(Field(f"bags.{i}", f"bags.{i}", r, DIM, pooling="sum") for i, r in enumerate(ROWS)),
               Field("history", "history", HISTORY_ROWS, DIM, pooling="mean")],
    "shared-table": [Field(f"features.embedding.{i}", "features.embedding", r, DIM, key=i, row_start=s)
                     for i, (r, s) in enumerate(zip(ROWS, STARTS, strict=True))],
    "two-tower": [Field(f"{tower}.f{i}", f"{tower}.f{i}", ROWS[i], DIM)
                  for tower, fields in (("user", (0, 2, 4)), ("item", (1, 3))) for i in fields],
}
#: position of each of the 5 log columns in the family's field order (two-tower orders user, then item)
COLUMN = {"two-tower": {0: 0, 2: 1, 4: 2, 1: 3, 3: 4}}
T_ACCURACY = 0.9925


def signal_names(family: str) -> set[str]:
    order = COLUMN.get(family, {c: c for c in range(len(ROWS))})
    return {EXPECTED[family][order[c]].name for c in SIGNAL_FIELDS}


@functools.cache
def logs() -> dict[str, dict[str, torch.Tensor]]:
    return {"train": click_log(4000, 1), "valid": click_log(1500, 2), "test": click_log(1500, 3)}


def example_of(model: nn.Module) -> tuple:
    return inputs_of(model, logs()["train"], slice(0, 8))


def field_map(model: nn.Module):
    modules = DeepFM.vector_lookups() if isinstance(model, DeepFM) else None
    return find_fields(model, example_of(model), modules=modules)


@functools.cache
def trained(family: str) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """The family trained once in a plain loop, and a copy of its state dict to compare with at the end."""
    torch.manual_seed(0)
    model = train(FAMILIES[family](), logs()["train"])
    return model, {k: v.clone() for k, v in model.state_dict().items()}


def user_data(model: nn.Module, wrapped: FieldModel) -> UserData:
    splits = [from_batches(wrapped, batches(model, logs()[name], 500)) for name in ("train", "valid", "test")]
    return UserData(wrapped, *splits)


def auc(model, split) -> float:
    scores = torch.cat([model.predict_proba(b)[:, 0] for b in split.batches(1024)]).numpy()
    return float(roc_auc_score(split.labels[:, 0].numpy(), scores))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_field_map_names_rows_dims_pooling_and_row_ranges(family):
    model = FAMILIES[family]()
    fmap = field_map(model)
    assert list(fmap.fields) == EXPECTED[family]
    assert fmap.embedding_dim == DIM and fmap.field_rows() == {f.name: f.rows for f in EXPECTED[family]}


def test_first_order_weights_have_dim_1_so_the_map_names_the_vector_lookups():
    """DeepFM's (rows, 1) first-order weights are lookups too; sharkrec's tables hold one dim, so the map is
    restricted to the D-dim lookups and the first-order weights stay in the network as dense weights."""
    model = DeepFM()
    with pytest.raises(ConfigError, match=r"dims \[1, 8\]"):
        find_fields(model, example_of(model))
    wrapped = FieldModel.wrap(model, field_map(model))
    dense = sum(p.numel() for p in wrapped.dense_parameters())
    assert dense == sum(p.numel() for n, p in model.named_parameters() if not n.startswith("embeddings."))
    assert wrapped.embedding.embedding_bytes() == sum(ROWS) * DIM * 4


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_wrapped_model_answers_like_the_users_model(family):
    model, _ = trained(family)
    wrapped = FieldModel.wrap(model, field_map(model))
    x = inputs_of(model, logs()["test"], slice(0, 300))
    with torch.no_grad():
        assert torch.allclose(wrapped(*x), model(*x), atol=1e-6)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_stage_on_a_user_model(family, tmp_path):
    model, before = trained(family)
    fmap = field_map(model)
    wrapped = FieldModel.wrap(model, fmap)
    data = user_data(model, wrapped)
    base_auc = auc(wrapped, data.test)
    assert base_auc > 0.75
    signal = signal_names(family)

    # importance: taylor2 ranks like exact, the two signal fields on top for both, well above the noise (the
    # noise fields' scores are the model's own spurious use of them: exact measures them too)
    taylor2 = field_importance(wrapped, data.valid, "taylor2")
    exact = field_importance(wrapped, data.valid, "exact", draws=16)
    assert set(taylor2.ranking()[:2]) == signal == set(exact.ranking()[:2])
    for result in (taylor2, exact):
        scores = result.as_dict()
        assert max(abs(v) for k, v in scores.items() if k not in signal) < 0.5 * min(scores[k] for k in signal)
    # the noise fields' order is within the estimates' noise (scores 0 to 0.08): with the top two right, a
    # reversed noise order still gives 0.6 (5 fields) or 0.43 (6 fields)
    assert spearmanr(taylor2.scores, exact.scores).statistic >= 0.5

    # Algorithm 1: noise fields go, weakest first; the test AUC stays within T_accuracy of the base
    result = prune(wrapped, data, target_memory=0.5, fine_tune_fraction=0.2, t_accuracy=T_ACCURACY)
    removed = result.plan.removed
    assert removed and not set(removed) & signal
    for step, name in zip(result.plan.scores, removed, strict=True):  # each step drops its lowest-scored field
        assert name == min(step, key=step.get)
    assert result.history[0]["metrics"]["test"]["label"]["auc"] == pytest.approx(base_auc, abs=1e-9)
    assert auc(result.model, data.test) >= T_ACCURACY * base_auc
    # bytes from the held tensors: the kept tables plus one (D,) constant per removed field
    kept_rows = sum(f.rows for f in fmap.fields if f.name not in removed)
    assert result.model.embedding.embedding_bytes() == (kept_rows + len(removed)) * DIM * 4

    # F-Quantization in the user's own loop: the drop-in has the model's forward; tiers follow Eq. 7
    qmodel = quantize(model, policy=FQuantPolicy(memory_budget=0.6, recheck_every=4), fields=fmap)
    train_fquant(qmodel, batches(model, logs()["train"], 256), 0.005, 0.02)
    assert qmodel.embedding.embedding_bytes() <= 0.6 * wrapped.embedding.embedding_bytes() + 64
    assert auc(qmodel, data.test) > base_auc - 0.03
    frozen = post_training(wrapped, data, memory_budget=0.6)  # tiers from counted frequencies, no retraining
    assert frozen.embedding.embedding_bytes() <= 0.6 * wrapped.embedding.embedding_bytes() + 64
    assert auc(frozen, data.test) > base_auc - 0.02

    # Saec: values of each field share rows
    clustered, _ = cluster_model(wrapped, data, rows_ratio=0.5)
    assert sum(clustered.embedding.num_rows().values()) <= 0.55 * sum(f.rows for f in fmap.fields)

    # compress: the budget search to 0.3 of the embedding bytes
    compressed = compress(wrapped, data, CompressConfig(target_memory=0.3, max_trainings=2))
    assert compressed.model.embedding.embedding_bytes() <= 0.3 * wrapped.embedding.embedding_bytes()
    assert auc(compressed.model, data.test) > base_auc - 0.05

    # export + serve without the user's class: served scores equal the in-memory scores
    example = example_of(model)
    save_user_artifact(compressed.model, example, tmp_path / "art")
    served = sharkrec.load(tmp_path / "art")
    x = inputs_of(model, logs()["test"], slice(0, 300))
    with torch.no_grad():
        assert torch.allclose(served(*x), compressed.model(*x), atol=1e-4)

    # the caller's model never changed
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ---------------------------------------------------------------------------- one-line errors on bad input
class NoLookups(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Embedding(10, 4)  # held, never called
        self.mlp = nn.Linear(3, 1)

    def forward(self, dense: torch.Tensor) -> torch.Tensor:
        return self.mlp(dense).squeeze(1)


def test_a_model_without_lookups_is_named_as_such():
    with pytest.raises(ConfigError, match=r"no embedding lookup was called.*nn.Embedding") as error:
        find_fields(NoLookups(), (torch.randn(4, 3),))
    assert "\n" not in str(error.value)


def test_modules_that_are_not_in_the_model_are_named():
    model = DeepFM()
    with pytest.raises(ConfigError, match=r"\['missing.path'\] are not in the model; its lookups are: embeddings.0"):
        find_fields(model, example_of(model), modules=["missing.path"])
    with pytest.raises(ConfigError, match=r"\['deep.0'\] are not embedding lookups"):
        find_fields(model, example_of(model), modules=["deep.0"])
    other = FAMILIES["two-tower"]()
    with pytest.raises(ConfigError, match=r"names module 'embeddings.0', which is not a lookup of the model"):
        FieldModel.wrap(other, field_map(model))


@pytest.mark.parametrize("family, bad, message", [
    ("deepfm", lambda x: (x[0].float(),), r"'embeddings.0' got ids of dtype torch.float32; pass int64 or int32"),
    ("deepfm", lambda x: (x[0][:, :3],), r"rejected the batch \(IndexError"),
    ("shared-table", lambda x: (x[0].unsqueeze(2),), r"got ids of shape \(500, 5, 5\); the field map expects \(B, 5\)"),
    ("two-tower", lambda x: ({k: v for k, v in x[0].items() if k != "f4"},), r"rejected the batch \(KeyError: 'f4'"),
    ("dcn-v2", lambda x: (x[0], x[1], x[2][:-1]), "batch 0 has 500 labels but field 'history'"),
])
def test_batches_the_model_rejects_fail_in_one_line(family, bad, message):
    model = FAMILIES[family]()
    wrapped = FieldModel.wrap(model, field_map(model))
    items = [(bad(x), y) for x, y in batches(model, logs()["valid"], 500)]
    with pytest.raises(DataError, match=message) as error:
        from_batches(wrapped, items)
    assert "\n" not in str(error.value)


def test_a_short_bag_field_is_named_with_its_sample_count():
    model = FAMILIES["dcn-v2"]()
    wrapped = FieldModel.wrap(model, field_map(model))
    (x, y), = batches(model, logs()["valid"], 500)[:1]
    with pytest.raises(DataError, match="saw 499 samples"):
        from_batches(wrapped, [((x[0], x[1], x[2][:-1]), y)])


def test_labels_must_be_0_or_1_and_one_per_sample():
    model = DeepFM()
    wrapped = FieldModel.wrap(model, field_map(model))
    (x, y), = batches(model, logs()["valid"], 1500)[:1]
    with pytest.raises(DataError, match="labels must be 0 or 1"):
        from_batches(wrapped, [(x, 2 * y - 1)])  # -1 / 1 labels, as libFM writes them
    with pytest.raises(DataError, match="batch 0 has 1499 labels but field 'embeddings\\.0''s lookup saw 1500"):
        from_batches(wrapped, [(x, y[:-1])])
    with pytest.raises(DataError, match=r"not \(inputs, labels\)"):
        from_batches(wrapped, [x])
