"""Saec and its baselines on a trained model: maps, budgets, composition with the vocabulary, pruning and
quantization, checkpoints, and one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sharkrec.cluster import ClusteredEmbedding, Saec, SaecConfig, allocate_clusters, cluster_model
from sharkrec.cluster.saec import value_counts
from sharkrec.errors import ConfigError
from sharkrec.prune.embedding import PrunedEmbedding
from sharkrec.quant.embedding import MixedPrecisionEmbedding
from sharkrec.train.checkpoint import load_model, save_model
from sharkrec.train.trainer import TrainConfig, evaluate, predict


def test_same_seed_gives_the_same_maps(toy_model):
    model, data = toy_model
    first = Saec(SaecConfig(rows_ratio=0.3, seed=5)).fit(model, data)
    again = Saec(SaecConfig(rows_ratio=0.3, seed=5)).fit(model, data)
    for name in first.row_maps_:
        assert torch.equal(first.row_maps_[name], again.row_maps_[name])
        assert torch.equal(first.rows_[name], again.rows_[name])
    assert first.clusters_ == {"a": 15, "b": 6, "tags": 3}
    assert sum(first.clusters_.values()) == round(0.3 * 80)


def test_every_value_keeps_its_row_at_ratio_one(toy_model):
    model, data = toy_model
    same = Saec(SaecConfig(rows_ratio=1.0)).fit(model, data).transform(model)
    assert np.array_equal(predict(same, data.test), predict(model, data.test))


def test_clustered_rows_are_frequency_weighted_means_of_members(toy_model):
    model, data = toy_model
    saec = Saec(SaecConfig(rows_ratio=0.2, method="kmeans")).fit(model, data)
    counts = value_counts(data)["a"]
    table = model.embedding.table("a").detach()
    row_map = saec.row_maps_["a"]
    for cluster in range(saec.clusters_["a"]):
        members = row_map == cluster
        if counts[members].sum() > 0:
            expected = (table[members].double() * counts[members].unsqueeze(1)).sum(0) / counts[members].sum()
            assert torch.allclose(saec.rows_["a"][cluster], expected.float(), atol=1e-6)


def test_frequency_cutoff_keeps_the_hottest_values_and_sends_the_rest_to_oov(toy_model):
    model, data = toy_model
    saec = Saec(SaecConfig(rows_ratio=0.25, method="frequency")).fit(model, data)
    counts = value_counts(data)["a"]
    k = saec.clusters_["a"]
    hottest = [int(i) for i in counts.sort(descending=True, stable=True).indices if i != 0][: k - 1]
    row_map = saec.row_maps_["a"]
    kept_rows = saec.rows_["a"][row_map[hottest]]
    assert torch.equal(kept_rows, model.embedding.table("a").detach()[hottest])
    others = [i for i in range(50) if i not in hottest]
    assert torch.equal(row_map[others], torch.full((len(others),), int(row_map[0])))


def test_hashing_is_seeded_and_in_range(toy_model):
    model, data = toy_model
    one = Saec(SaecConfig(rows_ratio=0.25, method="hashing", seed=1)).fit(model, data)
    two = Saec(SaecConfig(rows_ratio=0.25, method="hashing", seed=1)).fit(model, data)
    assert torch.equal(one.row_maps_["a"], two.row_maps_["a"])
    assert int(one.row_maps_["a"].max()) < one.clusters_["a"] <= 13


def test_saec_keeps_auc_better_than_hashing_at_equal_rows(toy_model):
    model, data = toy_model
    base = evaluate(model, data.test, data.schema.label_names)["y0"]["auc"]
    aucs = {}
    for method in ("saec", "hashing", "frequency"):
        clustered = Saec(SaecConfig(rows_ratio=0.3, method=method)).fit(model, data).transform(model)
        aucs[method] = evaluate(clustered, data.test, data.schema.label_names)["y0"]["auc"]
    assert aucs["saec"] > base - 0.01
    assert aucs["saec"] > aucs["hashing"] + 0.05 and aucs["saec"] > aucs["frequency"] + 0.05


def test_allocation_splits_one_budget_in_proportion_to_rows():
    rows = {"big": 1000, "mid": 100, "tiny": 3}
    counts = allocate_clusters(rows, 110, ("big", "mid", "tiny"))
    assert sum(counts.values()) == 110 and counts["tiny"] == 1 and counts["big"] > 8 * counts["mid"]
    kept = allocate_clusters(rows, 110, ("big", "mid", "tiny"), min_rows=3)  # tiny kept whole
    assert kept["tiny"] == 3 and sum(kept.values()) == 110
    only = allocate_clusters(rows, 200, ("big",))  # unclustered fields keep every row and spend budget
    assert only == {"big": 97, "mid": 100, "tiny": 3}
    with pytest.raises(ConfigError, match="a budget of 2 rows cannot hold the model"):
        allocate_clusters(rows, 2, ("big", "mid", "tiny"))


@pytest.mark.parametrize(("options", "fragment"), [
    ({"rows_ratio": 0.0}, "rows_ratio is 0.0; use the share of rows to keep, in (0, 1]"),
    ({"rows_ratio": 1.5}, "rows_ratio is 1.5"),
    ({}, "give exactly one budget"),
    ({"rows_ratio": 0.5, "target_bytes": 100}, "give exactly one budget"),
    ({"target_bytes": -1}, "target_bytes is -1"),
    ({"rows_ratio": 0.5, "head_share": 0.0}, "head_share is 0.0"),
    ({"rows_ratio": 0.5, "method": "pq"}, "unknown cluster method 'pq'; use one of saec, kmeans, hashing, frequency"),
    ({"rows_ratio": 0.5, "metric": "manhattan"}, "unknown distance metric 'manhattan'"),
])
def test_bad_settings_are_one_line_errors(options, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")) as info:
        SaecConfig(**options)
    assert "\n" not in str(info.value)


def test_bad_budget_unknown_field_and_unfitted_use_are_one_line_errors(toy_model):
    model, data = toy_model
    with pytest.raises(ConfigError, match="a budget of 1 rows cannot hold the model"):
        Saec(SaecConfig(target_bytes=8 * 4)).fit(model, data)  # one fp32 row of dim 8 for three fields
    with pytest.raises(ConfigError, match=r"fields \['nope'\] are not in the model's tables; known fields: a, b, tags"):
        Saec(SaecConfig(rows_ratio=0.5, fields=("nope",))).fit(model, data)
    with pytest.raises(ConfigError, match="not fitted yet"):
        Saec(SaecConfig(rows_ratio=0.5)).transform(model)
    clustered = Saec(SaecConfig(rows_ratio=0.5)).fit(model, data).transform(model)
    with pytest.raises(ConfigError, match="Saec clusters fp32 tables; this model has a ClusteredEmbedding"):
        Saec(SaecConfig(rows_ratio=0.5)).fit(clustered, data)


def test_target_bytes_budget_and_one_field_only(toy_model):
    model, data = toy_model
    saec = Saec(SaecConfig(target_bytes=40 * 8 * 4, fields=("a",))).fit(model, data)
    assert saec.clusters_ == {"a": 10, "b": 20, "tags": 10}
    assert torch.equal(saec.row_maps_["b"], torch.arange(20))


def test_checkpoint_round_trip_of_a_clustered_and_quantized_model(toy_model, tmp_path):
    model, data = toy_model
    saec = Saec(SaecConfig(rows_ratio=0.3)).fit(model, data)
    for quantize in (None, "int8"):
        clustered = saec.transform(model, quantize=quantize)
        save_model(tmp_path / "m.pt", clustered, data.schema, data.vocabularies)
        loaded = load_model(tmp_path / "m.pt").model
        assert type(loaded.embedding.inner) is type(clustered.embedding.inner)
        assert np.array_equal(predict(loaded, data.test), predict(clustered, data.test))


def test_cluster_then_quantize_the_clustered_rows(toy_model):
    model, data = toy_model
    saec = Saec(SaecConfig(rows_ratio=0.3)).fit(model, data)
    fp32, int8 = saec.transform(model), saec.transform(model, quantize="int8")
    assert isinstance(int8.embedding, ClusteredEmbedding)
    assert isinstance(int8.embedding.inner, MixedPrecisionEmbedding)
    assert int8.embedding.num_rows() == fp32.embedding.num_rows()
    assert int8.embedding.memory_report().rows_bytes < 0.6 * fp32.embedding.memory_report().rows_bytes
    gap = np.abs(predict(int8, data.test) - predict(fp32, data.test)).max()
    assert 0 < gap < 0.02  # int8 rows change predictions a little
    with pytest.raises(ConfigError, match="unknown precision 'int3'"):
        saec.transform(model, quantize="int3")


def test_cluster_a_pruned_model_keeps_the_removed_fields_constant(toy_model):
    model, data = toy_model
    pruned = model.with_embedding(PrunedEmbedding.wrap(model.embedding, {"b": torch.full((8,), 0.5)}))
    clustered = Saec(SaecConfig(rows_ratio=0.5)).fit(pruned, data).transform(pruned)
    embedding = clustered.embedding
    assert isinstance(embedding, PrunedEmbedding) and isinstance(embedding.kept, ClusteredEmbedding)
    assert embedding.removed == ("b",) and embedding.kept.field_names == ("a", "tags")
    assert embedding.num_rows() == {"a": 25, "b": 1, "tags": 5}  # budget: 0.5 x (50 + 10) rows
    vectors = embedding(data.test.slice(0, 4).sparse)
    assert torch.equal(vectors[:, 1], torch.full((4, 8), 0.5))


def test_cluster_model_fine_tunes_and_reports_bytes_both_ways(toy_model):
    model, data = toy_model
    tune = TrainConfig(optimizer="adagrad", lr=0.005, epochs=1, patience=0, progress=False)
    clustered, report = cluster_model(model, data, rows_ratio=0.2, fine_tune=tune)
    assert clustered is not model and model.embedding.num_rows() == {"a": 50, "b": 20, "tags": 10}
    memory = report["memory"]
    assert memory["rows_before"] == 80 and memory["cluster_rows"] == 16
    assert memory["bytes_map_folded_into_vocabulary"] == 16 * 8 * 4
    assert memory["bytes_map_as_index"] == 16 * 8 * 4 + 80 * 4
    assert memory["rows_compression"] == pytest.approx(5.0)
    assert report["fine_tune"]["steps"] > 0
    base = report["base_metrics"]["test"]["y0"]["auc"]
    assert report["metrics"]["test"]["y0"]["auc"] > base - 0.01
    assert report["clustering"]["weighted_error_total"] > 0 and report["seconds"] > 0
