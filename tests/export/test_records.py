"""The pandas-free record encoder gives the same batches and scores as the training cell rules (pandas path)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sharkrec.errors import DataError
from sharkrec.export import load_artifact, save_artifact
from sharkrec.export.records import RecordEncoder
from sharkrec.export.rows import parse_records

CSV_ROWS = [
    {"user": "u1", "city": "paris", "tags": ["t1", "t3"], "age": 31},
    {"user": "u0", "city": "lima", "tags": [], "age": None},
    {"user": "never-seen", "city": "oslo", "tags": "t2|t5", "age": "44"},
    {"user": 7, "city": None},  # int key for a str vocabulary; absent fields are missing
    {"user": "u3", "city": "", "tags": "?", "age": "?"},  # missing markers
    {"user": "?", "city": "rome", "tags": " t1 || t4 ", "age": ""},  # stripped tokens, empty ones dropped
    {"user": "u2", "city": " paris", "tags": ["t1|t2", "", "t9"], "age": -3.5},  # separator inside a list item
    {"user": 2.0, "city": "oslo", "tags": ["?"], "age": 1e6, "click": 1},  # whole float key, label ignored
    {"user": 2.5, "city": "lima", "tags": [5, "t0"], "age": " 7 "},
    {},
]

TOY_ROWS = [
    {"a": 1, "b": 2, "x0": 0.5, "x1": 3},
    {"a": "3", "b": 4.0, "x0": None, "x1": "2.5"},  # numeric text and whole floats read as int keys
    {"a": "abc", "b": None, "x0": "?", "y0": 1},  # non-numeric text and missing → OOV
    {"a": 10**9, "b": "-1", "x1": -7},  # unseen ids
    {"a": "5.0", "b": " 2", "x0": 1e-3},  # texts pandas reads as numbers
]


@pytest.fixture(scope="module")
def csv_served(csv_model, tmp_path_factory):
    model, data = csv_model
    path = tmp_path_factory.mktemp("art") / "art"
    save_artifact(model, data.schema, data.vocabularies, path)
    return load_artifact(path)


@pytest.fixture(scope="module")
def toy_served(toy_model, tmp_path_factory):
    model, data = toy_model
    path = tmp_path_factory.mktemp("toy-art") / "art"
    save_artifact(model, data.schema, data.vocabularies, path)
    return load_artifact(path)


def assert_same(served, rows):
    encoder = RecordEncoder(served)
    fast, slow = encoder.encode(rows), served.encode(parse_records(served, rows))
    assert encoder.fast_calls == 1 and encoder.fallback_calls == 0
    torch.testing.assert_close(fast.dense, slow.dense, rtol=0, atol=0)
    torch.testing.assert_close(fast.labels, slow.labels, rtol=0, atol=0)
    for got, want in zip(fast.sparse, slow.sparse, strict=True):
        assert torch.equal(got.values, want.values)
        assert (got.offsets is None) == (want.offsets is None)
        if got.offsets is not None:
            assert torch.equal(got.offsets, want.offsets)
    np.testing.assert_array_equal(served.predict_proba(fast).numpy(), served.predict_proba(slow).numpy())
    return fast


def test_string_keys_missing_unknown_multi_hot(csv_served):
    fast = assert_same(csv_served, CSV_ROWS)
    tags = csv_served.schema.sparse_names.index("tags")
    assert fast.sparse[tags].offsets.tolist()[:4] == [0, 2, 2, 4]  # t1 t3 | empty | t2 t5
    oov = csv_served.vocabularies["user"].oov_slot
    assert fast.sparse[0].values[2].item() == oov and fast.sparse[0].values[0].item() != oov


def test_int_keys(toy_served):
    fast = assert_same(toy_served, TOY_ROWS)
    vocabulary = toy_served.vocabularies["a"]
    assert fast.sparse[0].values[1].item() == vocabulary.slots(np.asarray([3], dtype=object))[0]
    assert fast.sparse[0].values[2].item() == vocabulary.oov_slot


def test_the_cache_gives_the_same_slots_on_repeat_and_when_full(toy_served):
    encoder = RecordEncoder(toy_served, cache_size=3)
    first = encoder.encode(TOY_ROWS * 3)
    second = encoder.encode(TOY_ROWS[::-1])
    assert all(len(cache) <= 5 for *_, cache in encoder.sparse)
    want = toy_served.encode(parse_records(toy_served, TOY_ROWS[::-1]))
    for got, again, expected in zip(first.sparse, second.sparse, want.sparse, strict=True):
        assert torch.equal(got.values[:len(TOY_ROWS)], expected.values.flip(0))
        assert torch.equal(again.values, expected.values)


@pytest.mark.parametrize(("row", "words"), [
    ({"user": "u1", "colour": "red"}, "'colour'"),
    ({"user": "u1", "age": "old"}, "'age'"),
    ({"user": "u1", "age": float("inf")}, "'age'"),
    ({"user": ["u1", "u2"]}, "takes one value"),
    ({"age": [3]}, "takes one value"),
])
def test_bad_rows_raise_the_pandas_path_error(csv_served, row, words):
    encoder = RecordEncoder(csv_served)
    rows = [CSV_ROWS[0], row]
    with pytest.raises(DataError) as fast:
        encoder.encode(rows)
    with pytest.raises(DataError) as slow:
        parse_records(csv_served, rows)
    assert str(fast.value) == str(slow.value) and words in str(fast.value) and "row 1" in str(fast.value)
    assert encoder.fallback_calls == 1


def test_unusual_cells_go_to_the_pandas_path(csv_served):
    encoder = RecordEncoder(csv_served)
    rows = [{"user": "u1", "tags": ("t1", "t3"), "age": np.float32(2.0)}]  # not JSON types, still accepted
    got, want = encoder.encode(rows), csv_served.encode(parse_records(csv_served, rows))
    assert encoder.fallback_calls == 1
    assert torch.equal(got.sparse[2].values, want.sparse[2].values) and torch.equal(got.dense, want.dense)
