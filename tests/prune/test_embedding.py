"""PrunedEmbedding: removed tables are gone, removed ids are never read, save / load round-trips."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sharkrec.data.batch import FieldIds
from sharkrec.errors import ConfigError
from sharkrec.model.embedding import FloatEmbedding, embedding_from_spec
from sharkrec.prune import PrunedEmbedding, field_means, remove_fields
from sharkrec.train.checkpoint import load_model, save_model


def test_removed_tables_are_not_in_the_state_dict(toy_trained):
    model, data = toy_trained
    pruned = remove_fields(model, ["b"], data.valid)
    assert isinstance(pruned.embedding, PrunedEmbedding)
    keys = [k for k in pruned.state_dict() if k.startswith("embedding.")]
    assert keys == ["embedding.constants", "embedding.kept.tables.0", "embedding.kept.tables.1"]
    assert pruned.embedding.kept.field_names == ("a", "tags")
    rows = model.embedding.num_rows()
    dim = model.config.embedding_dim
    assert pruned.embedding.embedding_bytes() == (rows["a"] + rows["tags"] + 1) * dim * 4
    assert dict(pruned.config.field_rows)["b"] == 1
    # the original model is untouched
    assert isinstance(model.embedding, FloatEmbedding) and model.embedding.num_fields == 3


def test_removed_field_ids_are_not_read(toy_trained):
    model, data = toy_trained
    pruned = remove_fields(model, ["b", "tags"], data.valid)
    batch = data.test.slice(0, 200)
    garbage = list(batch.sparse)
    garbage[1] = FieldIds(torch.full_like(batch.sparse[1].values, 10**9))  # far outside b's table
    garbage[2] = FieldIds(torch.full((5,), -7), torch.tensor([0] + [5] * 200))  # nonsense bags
    before = pruned.predict_proba(batch)
    after = pruned.predict_proba(type(batch)(batch.dense, tuple(garbage), batch.labels))
    assert torch.equal(before, after)


def test_constant_is_the_field_mean_and_model_output_uses_it(toy_trained):
    model, data = toy_trained
    means = field_means(model, data.valid, ["b"])
    pruned = remove_fields(model, ["b"], data.valid)
    assert torch.allclose(pruned.embedding.constants[0], means["b"])
    vectors = pruned.field_vectors(data.test.slice(0, 10))  # (B, F, D), dense first
    assert torch.allclose(vectors[:, 2], means["b"].expand(10, -1))
    original = model.field_vectors(data.test.slice(0, 10))
    assert torch.equal(vectors[:, [0, 1, 3]], original[:, [0, 1, 3]])


def test_save_load_round_trip_gives_identical_predictions(toy_trained, tmp_path):
    model, data = toy_trained
    pruned = remove_fields(remove_fields(model, ["b"], data.valid), ["a"], data.valid)
    assert pruned.embedding.removed == ("b", "a")
    save_model(tmp_path / "model.pt", pruned, data.schema, data.vocabularies)
    loaded = load_model(tmp_path / "model.pt").model
    assert isinstance(loaded.embedding, PrunedEmbedding)
    assert loaded.embedding.removed == ("b", "a")
    batch = data.test.slice(0, 300)
    assert torch.equal(loaded.predict_proba(batch), pruned.predict_proba(batch))


@settings(max_examples=25, deadline=None)
@given(removed=st.lists(st.sampled_from(["f0", "f1", "f2", "f3"]), unique=True, max_size=4),
       seed=st.integers(0, 1000))
def test_spec_round_trip_keeps_every_vector(removed, seed):
    generator = torch.Generator().manual_seed(seed)
    names = ["f0", "f1", "f2", "f3"]
    inner = FloatEmbedding({n: 5 + i for i, n in enumerate(names)}, 4, generator=generator)
    constants = {n: torch.randn(4, generator=generator) for n in removed}
    layer = PrunedEmbedding.wrap(inner, constants)
    rebuilt = embedding_from_spec(layer.spec())
    rebuilt.load_state_dict(layer.state_dict())
    ids = [FieldIds(torch.randint(0, 5, (7,), generator=generator)) for _ in names]
    assert torch.equal(rebuilt(ids), layer(ids))
    for k, name in enumerate(names):
        if name in constants:
            assert torch.equal(layer(ids)[:, k], constants[name].expand(7, -1))


def test_bad_fields_are_one_line_errors(toy_trained):
    model, data = toy_trained
    with pytest.raises(ConfigError, match="'zzz' is not in the model"):
        remove_fields(model, ["zzz"], data.valid)
    with pytest.raises(ConfigError, match="'dense' is the bottom MLP"):
        remove_fields(model, ["dense"], data.valid)
    pruned = remove_fields(model, ["b"], data.valid)
    with pytest.raises(ConfigError, match="already pruned"):
        remove_fields(pruned, ["b"], data.valid)
