"""The rows axis of compress: a hashed tail over trained rows, searched with pruning and precision past 16x."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from sharkrec.cluster.saec import value_counts
from sharkrec.compress import DEFAULT_FINE_TUNE, CompressConfig, compress, enumerate_candidates, run_compress
from sharkrec.compress.search import budget_floors, build_candidate
from sharkrec.data.batch import FieldIds
from sharkrec.data.synthetic import SyntheticConfig, generate
from sharkrec.errors import ConfigError
from sharkrec.hashed import HashedTailEmbedding, hash_tail, tail_layout
from sharkrec.model.embedding import FloatEmbedding, embedding_from_spec, find_layer, layers
from sharkrec.prune.plan import field_means
from sharkrec.quant import MixedPrecisionEmbedding
from sharkrec.train.checkpoint import ModelBundle
from sharkrec.train.run import build_model
from sharkrec.train.trainer import TrainConfig, Trainer
from tests.compress.conftest import assert_saved_and_served_agree

FAST = dataclasses.replace(DEFAULT_FINE_TUNE, epochs=1, batch_size=256)


@pytest.fixture(scope="module")
def wide():
    """Synthetic data with fields of 2,000 / 600 / 40 / 300 values (Zipf), a DLRM of dim 8 trained 2 epochs."""
    torch.manual_seed(0)
    data = generate(SyntheticConfig(rows=8000, num_sparse=4, num_dense=2, cardinalities=(2000, 600, 40, 300),
                                    seed=0, ground_truth_sample=1000)).data
    model = build_model(data, seed=0, embedding_dim=8, top_mlp=(16,), bottom_mlp=(8,))
    config = TrainConfig(optimizer="adagrad", lr=0.05, epochs=2, patience=0, progress=False)
    Trainer(model, config, data.schema.label_names).fit(data.train, data.valid)
    return model.eval(), data


def _held(tail: HashedTailEmbedding) -> int:
    """Bytes of the rows (parameters), hot ids and the hash pairs of the tailed fields, from the tensors."""
    rows = sum(t.numel() * t.element_size() for t in tail.parameters())
    hot = sum(tail.hot_ids(n).numel() * tail.hot_ids(n).element_size() for n in tail.field_names)
    tailed = [i for i, n in enumerate(tail.field_names) if tail.hot_ids(n).numel() > 0]
    return rows + hot + tail.pairs[tailed].numel() * tail.pairs.element_size()


def test_tail_layout_keeps_the_ratio_and_small_fields_whole():
    layout = tail_layout(2000, 0.1, hot_share=0.5)
    assert (layout.hot, layout.shared) == (100, 100)
    assert tail_layout(40, 0.1).shared == 0 and tail_layout(40, 0.1).rows == 40  # at most 64 values: whole
    assert tail_layout(1000, 0.001).rows == 2  # at least one hot and one shared row
    with pytest.raises(ConfigError, match=r"rows ratio 0\.0 must be in"):
        tail_layout(100, 0.0)


def test_hash_tail_predicts_rows_from_the_trained_ones_and_counts_its_bytes(wide):
    model, data = wide
    store = model.embedding
    counts = value_counts(data)
    layouts = {n: tail_layout(r, 0.1) for n, r in store.num_rows().items()}
    tail = hash_tail(store, counts, layouts, seed=3)
    dim = store.embedding_dim
    for name in store.field_names:
        layout, table = layouts[name], store.table(name).detach()
        rows = tail.value_map(name)
        if layout.shared == 0:  # kept whole: ids are rows, no hot ids or hash pair counted
            assert torch.equal(rows, torch.arange(table.shape[0]))
            assert tail.fixed_bytes()[name] == 0
            continue
        hot = tail.hot_ids(name).long()
        hottest = torch.sort(counts[name], descending=True, stable=True).indices[: layout.hot]
        assert torch.equal(hot, hottest.sort().values)
        assert torch.equal(rows[hot], torch.arange(layout.hot))  # hot values: own rows, in id order
        inner = tail.inner.table(name).detach()
        torch.testing.assert_close(inner[: layout.hot], table[hot])
        cold = rows >= layout.hot
        assert int(rows[cold].min()) >= layout.hot and int(rows[cold].max()) < layout.rows
        slot = int(rows[cold][0])  # a shared row: the count-weighted mean of the values hashed to it
        members = (rows == slot).nonzero().squeeze(1)
        weights = counts[name][members]
        expected = (table[members].double() * weights.unsqueeze(1)).sum(0) / weights.sum() if weights.sum() > 0 \
            else table[members].double().mean(0)
        torch.testing.assert_close(inner[slot].double(), expected, atol=1e-6, rtol=0)
        assert tail.fixed_bytes()[name] == 4 * layout.hot + 16
    assert tail.embedding_bytes() == sum(r.rows for r in layouts.values()) * dim * 4 + sum(tail.fixed_bytes().values())
    assert tail.embedding_bytes() == _held(tail)  # whole fields' pairs are never read: not counted
    batch = next(iter(data.test.batches(64)))
    mapped = [FieldIds(tail.rows_of(i, ids.values), ids.offsets, ids.weights) for i, ids in enumerate(batch.sparse)]
    torch.testing.assert_close(tail(batch.sparse), tail.inner(mapped))


def test_the_hash_is_deterministic_per_seed_and_the_layer_reloads_from_its_spec(wide):
    model, data = wide
    counts = value_counts(data)
    layouts = {n: tail_layout(r, 0.05) for n, r in model.embedding.num_rows().items()}
    first, again = (hash_tail(model.embedding, counts, layouts, seed=1) for _ in range(2))
    other = hash_tail(model.embedding, counts, layouts, seed=2)
    name = model.embedding.field_names[0]
    assert torch.equal(first.value_map(name), again.value_map(name))
    assert not torch.equal(first.value_map(name), other.value_map(name))
    rebuilt = embedding_from_spec(first.spec())
    rebuilt.load_state_dict(first.state_dict())
    batch = next(iter(data.test.batches(128)))
    assert isinstance(rebuilt, HashedTailEmbedding)
    torch.testing.assert_close(rebuilt(batch.sparse), first(batch.sparse))
    with pytest.raises(ConfigError, match="hot_ids must be distinct ids"):
        HashedTailEmbedding({"x": 10}, {"x": torch.tensor([3, 3])}, FloatEmbedding({"x": 4}, 8))
    with pytest.raises(ConfigError, match="give it at least 3"):
        HashedTailEmbedding({"x": 10}, {"x": torch.tensor([1, 2])}, FloatEmbedding({"x": 2}, 8))


def test_tail_candidates_reach_20x_in_the_bytes_held(wide):
    model, data = wide
    base = model.embedding.embedding_bytes()
    order = list(model.embedding.field_names)
    assert not enumerate_candidates(model, order, {}, 0.05, max_removed=0)  # without the rows axis: out of reach
    candidates = enumerate_candidates(model, order, {}, 0.05, max_removed=0, tail_ratios=(0.25, 0.1, 0.05))
    assert candidates and all(c.tail_ratio is not None for c in candidates)
    means = field_means(model, data.valid, order)
    for candidate in candidates:
        built = build_candidate(model, data, candidate, means, {"batch_size": 256})
        held = built.embedding.embedding_bytes()
        assert held <= 0.05 * base, candidate.label
        assert held >= 0.9 * 0.05 * base or candidate.quant_budget is None, candidate.label
        assert built.embedding.embedding_bytes() == candidate.predicted_bytes or candidate.quant_budget is not None
        tail = find_layer(built.embedding, "hashed_tail")
        assert tail is not None
        if candidate.quant_budget is not None:
            assert isinstance(layers(built.embedding)[-1], MixedPrecisionEmbedding)


def test_compress_at_20x_with_a_hashed_tail_serves_the_same_scores(wide, tmp_path):
    model, data = wide
    bundle = ModelBundle(model=model, schema=data.schema, vocabularies=data.vocabularies, info={})
    config = CompressConfig(target_memory=0.05, max_auc_drop=0.5, max_trainings=1, fine_tune=FAST, max_removed=0)
    result = run_compress(bundle, data, config, tmp_path / "out")
    report = result.report
    base = model.embedding.embedding_bytes()
    assert result.model.embedding.embedding_bytes() <= 0.05 * base
    assert result.candidate.tail_ratio is not None
    b = report["bytes"]
    saved = report["axes"]["bytes_saved"]
    assert sum(saved.values()) == b["fp32"] - b["after_quantization"]
    assert saved["rows (hashed tail)"] > 0 and saved["fields (F-Permutation)"] == 0
    assert_saved_and_served_agree(result, tmp_path / "out", data)


def test_an_unreachable_budget_lists_the_floor_of_every_axis(wide):
    model, data = wide
    order = list(model.embedding.field_names)
    floors = budget_floors(model, order, max_removed=0, tail_ratios=(0.01,))
    assert set(floors) == {"fields", "precision", "rows", "all"}
    assert floors["all"] < min(floors["precision"], floors["rows"]) and floors["fields"] == pytest.approx(1.0)
    with pytest.raises(ConfigError) as error:
        compress(model, data, CompressConfig(target_memory=0.001, max_removed=0, fine_tune=FAST, tail_ratios=(0.01,)))
    text = str(error.value)
    assert "no way to reach 0.001" in text and "rows " in text and "precision " in text and "\n" not in text
    assert f"{floors['all']:.4g}" in text
