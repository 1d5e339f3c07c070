"""FloatEmbedding: lookups, sum pooling, sparse gradients, byte counts and id checks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sharkrec.data.batch import FieldIds
from sharkrec.errors import ConfigError, DataError
from sharkrec.model.embedding import FieldEmbedding, FloatEmbedding

ROWS = {"user": 7, "item": 11, "genres": 5}


def bags(lists: list[list[int]]) -> FieldIds:
    """Multi-hot ids from one list of ids per sample."""
    values = torch.tensor([v for bag in lists for v in bag], dtype=torch.int64)
    offsets = torch.tensor([0] + [len(bag) for bag in lists], dtype=torch.int64).cumsum(0)
    return FieldIds(values, offsets)


def sample_fields() -> tuple[FieldIds, ...]:
    return (
        FieldIds(torch.tensor([0, 6, 3, 3])),
        FieldIds(torch.tensor([10, 0, 2, 9])),
        bags([[1, 2], [], [4, 4, 0], []]),
    )


def test_is_a_field_embedding_with_names_dim_and_rows() -> None:
    embedding = FloatEmbedding(ROWS, 4)
    assert isinstance(embedding, FieldEmbedding)
    assert embedding.field_names == ("user", "item", "genres")
    assert embedding.embedding_dim == 4
    assert embedding.num_rows() == ROWS
    assert embedding.num_fields == 3


def test_forward_looks_up_rows_and_sums_bags_with_empty_bags_as_zeros() -> None:
    embedding = FloatEmbedding(ROWS, 4, generator=torch.Generator().manual_seed(0))
    fields = sample_fields()
    out = embedding(fields)
    assert out.shape == (4, 3, 4)
    user, item, genres = (embedding.table(n).detach() for n in ROWS)
    torch.testing.assert_close(out[:, 0], user[[0, 6, 3, 3]])
    torch.testing.assert_close(out[:, 1], item[[10, 0, 2, 9]])
    expected = torch.stack([genres[1] + genres[2], torch.zeros(4), 2 * genres[4] + genres[0], torch.zeros(4)])
    torch.testing.assert_close(out[:, 2], expected)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(0, 9), max_size=5), min_size=1, max_size=8))
def test_bag_pooling_equals_manual_sum(lists: list[list[int]]) -> None:
    embedding = FloatEmbedding({"tags": 10}, 3, init_std=1.0, generator=torch.Generator().manual_seed(1))
    table = embedding.table("tags").detach()
    out = embedding([bags(lists)])[:, 0]
    expected = torch.stack([table[bag].sum(0) if bag else torch.zeros(3) for bag in lists])
    torch.testing.assert_close(out, expected)


def test_gradients_are_sparse_and_touch_only_used_rows() -> None:
    embedding = FloatEmbedding(ROWS, 4)
    weights = torch.randn(4, 3, 4)
    (embedding(sample_fields()) * weights).sum().backward()
    used = {"user": {0, 6, 3}, "item": {10, 0, 2, 9}, "genres": {1, 2, 4, 0}}
    for name, table in zip(embedding.field_names, embedding.sparse_parameters(), strict=True):
        assert table.grad is not None and table.grad.is_sparse, name
        grad = table.grad.coalesce()
        assert set(grad.indices()[0].tolist()) == used[name]
        dense_grad = grad.to_dense()
        untouched = [r for r in range(ROWS[name]) if r not in used[name]]
        assert torch.all(dense_grad[untouched] == 0)
    # user row 3 is used by samples 2 and 3: its gradient is the sum of their upstream gradients
    torch.testing.assert_close(embedding.table("user").grad.to_dense()[3], weights[2, 0] + weights[3, 0])


def test_sparse_optimizers_update_only_used_rows() -> None:
    embedding = FloatEmbedding(ROWS, 4)
    before = [t.detach().clone() for t in embedding.sparse_parameters()]
    optimizer = torch.optim.SparseAdam(embedding.sparse_parameters(), lr=0.1)
    embedding(sample_fields()).sum().backward()
    optimizer.step()
    changed = (embedding.table("user").detach() != before[0]).any(dim=1)
    assert changed.nonzero().flatten().tolist() == [0, 3, 6]


def test_embedding_bytes_counts_fp32_rows() -> None:
    embedding = FloatEmbedding(ROWS, 16)
    assert embedding.embedding_bytes() == sum(ROWS.values()) * 16 * 4
    assert embedding.sparse_parameters() == list(embedding.tables)


@pytest.mark.parametrize(
    ("ids", "match"),
    [
        (torch.tensor([0, 11, 2, 1]), r"field 'item' has ids from 0 to 11 .* 11 rows \(valid ids 0\.\.10\)"),
        (torch.tensor([0, -1, 2, 1]), r"field 'item' has ids from -1 to 2"),
    ],
)
def test_out_of_range_ids_raise_data_error_naming_the_field(ids: torch.Tensor, match: str) -> None:
    embedding = FloatEmbedding(ROWS, 4)
    fields = list(sample_fields())
    fields[1] = FieldIds(ids)
    with pytest.raises(DataError, match=match) as error:
        embedding(fields)
    assert "\n" not in str(error.value)


def test_out_of_range_bag_id_is_caught() -> None:
    embedding = FloatEmbedding(ROWS, 4)
    fields = list(sample_fields())
    fields[2] = bags([[1], [5], [], [0]])
    with pytest.raises(DataError, match="field 'genres' has ids from 0 to 5"):
        embedding(fields)


def test_check_ids_false_skips_the_check() -> None:
    embedding = FloatEmbedding(ROWS, 4, check_ids=False)
    fields = list(sample_fields())
    fields[0] = FieldIds(torch.tensor([0, 1, 2, 7]))
    with pytest.raises(IndexError):
        embedding(fields)


def test_bad_batches_raise_data_error() -> None:
    embedding = FloatEmbedding(ROWS, 4)
    fields = sample_fields()
    with pytest.raises(DataError, match="2 sparse fields but the embedding has 3"):
        embedding(fields[:2])
    with pytest.raises(DataError, match="field 'item' has 3 samples but field 'user' has 4"):
        embedding((fields[0], FieldIds(torch.tensor([1, 2, 3])), fields[2]))
    with pytest.raises(DataError, match=r"field 'user' has ids of dtype torch\.float32"):
        embedding((FieldIds(torch.zeros(4)), *fields[1:]))


def test_int32_ids_are_accepted() -> None:
    embedding = FloatEmbedding(ROWS, 4)
    fields = tuple(
        FieldIds(f.values.int(), None if f.offsets is None else f.offsets.int()) for f in sample_fields()
    )
    torch.testing.assert_close(embedding(fields), embedding(sample_fields()))


def test_bad_construction_raises_config_error() -> None:
    with pytest.raises(ConfigError, match="field 'user' has 0 rows"):
        FloatEmbedding({"user": 0}, 4)
    with pytest.raises(ConfigError, match="embedding_dim is 0"):
        FloatEmbedding({"user": 3}, 0)
    with pytest.raises(ConfigError, match="field 'nope' has no table"):
        FloatEmbedding({"user": 3}, 2).table("nope")


def test_init_std_sets_the_spread_of_rows() -> None:
    embedding = FloatEmbedding({"big": 20_000}, 8, init_std=0.05, generator=torch.Generator().manual_seed(0))
    assert abs(float(embedding.table("big").detach().std()) - 0.05) < 0.002


def test_subset_copies_the_chosen_tables_in_order() -> None:
    embedding = FloatEmbedding(ROWS, 4)
    part = embedding.subset(["genres", "user"])
    assert part.field_names == ("genres", "user")
    torch.testing.assert_close(part.table("user"), embedding.table("user"))
    with torch.no_grad():
        part.table("user").zero_()
    assert embedding.table("user").abs().sum() > 0
