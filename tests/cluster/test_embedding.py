"""The clustered embedding kind: lookups through the map, save / load, vocabulary folding, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sharkrec.cluster import ClusteredEmbedding, fold_vocabulary
from sharkrec.data.batch import FieldIds
from sharkrec.data.vocab import Vocabulary
from sharkrec.errors import ConfigError, DataError
from sharkrec.model.embedding import embedding_from_spec


def small() -> ClusteredEmbedding:
    maps = {"a": torch.tensor([0, 1, 1, 2, 0]), "tags": torch.tensor([1, 0, 1])}
    rows = {"a": torch.arange(6, dtype=torch.float32).reshape(3, 2), "tags": torch.tensor([[10.0, 20.0],
                                                                                         [30.0, 40.0]])}
    return ClusteredEmbedding.from_float(maps, rows)


def test_lookup_goes_through_the_map_single_and_multi_hot():
    layer = small()
    a = FieldIds(torch.tensor([0, 2, 3, 4]))
    tags = FieldIds(torch.tensor([0, 2, 1]), offsets=torch.tensor([0, 2, 2, 3, 3]))
    out = layer([a, tags])  # (4, 2, 2)
    assert out.shape == (4, 2, 2)
    assert torch.equal(out[:, 0], torch.tensor([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0], [0.0, 1.0]]))
    # bags: rows of values {0, 2} -> cluster 1 twice; {} -> zeros; {1} -> cluster 0; {} -> zeros
    assert torch.equal(out[:, 1], torch.tensor([[60.0, 80.0], [0.0, 0.0], [10.0, 20.0], [0.0, 0.0]]))
    assert layer.num_rows() == {"a": 3, "tags": 2} and layer.value_rows() == {"a": 5, "tags": 3}


def test_bytes_counted_both_ways_from_the_tensors():
    layer = small()
    report = layer.memory_report().to_dict()
    assert report["rows_bytes"] == (3 + 2) * 2 * 4
    assert report["map_index_bytes"] == (5 + 3) * 4  # int32 per vocabulary row
    assert report["bytes_map_folded_into_vocabulary"] == 40 and report["bytes_map_as_index"] == 72
    assert layer.embedding_bytes() == 72
    assert report["rows_compression"] == pytest.approx(8 / 5)


def test_spec_and_state_dict_rebuild_the_layer():
    layer = small()
    rebuilt = embedding_from_spec(layer.spec())
    assert isinstance(rebuilt, ClusteredEmbedding)
    rebuilt.load_state_dict(layer.state_dict())
    ids = [FieldIds(torch.tensor([4, 1])), FieldIds(torch.tensor([2, 0]))]
    assert torch.equal(rebuilt(ids), layer(ids))


def test_folded_vocabulary_gives_the_same_vectors():
    raw = np.array(["x", "y", "y", "z", "z", "z", "w"])
    vocab = Vocabulary("a").fit(raw)  # rows: 0 OOV, then z, y, then w / x by value
    row_map = torch.tensor([2, 0, 1, 0, 2])
    layer = ClusteredEmbedding.from_float({"a": row_map}, {"a": torch.randn(3, 4)})
    folded, inner = fold_vocabulary({"a": vocab}, layer)
    values = np.array(["z", "x", "unseen", "y", "w"])
    direct = inner([FieldIds(torch.from_numpy(folded["a"].transform(values)))])
    through_map = layer([FieldIds(torch.from_numpy(vocab.transform(values)))])
    assert torch.equal(direct, through_map)
    assert folded["a"].num_rows == 3 and folded["a"].transform(np.array(["unseen"]))[0] == 2  # OOV's cluster


def test_bad_ids_and_bad_maps_are_one_line_errors():
    layer = small()
    with pytest.raises(DataError, match="field 'a' has ids from 0 to 5 but its vocabulary has 5 rows"):
        layer([FieldIds(torch.tensor([0, 5])), FieldIds(torch.tensor([0, 0]))])
    with pytest.raises(DataError, match="the batch has 1 sparse fields"):
        layer([FieldIds(torch.tensor([0]))])
    with pytest.raises(ConfigError, match=r"the map points at rows 0\.\.3 but the field has 3 rows"):
        ClusteredEmbedding.from_float({"a": torch.tensor([0, 3])}, {"a": torch.zeros(3, 2)})
    with pytest.raises(ConfigError, match="field 'b' is not clustered"):
        layer.row_map("b")


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 30), min_size=1, max_size=3), st.integers(0, 2**31 - 1))
def test_round_trip_and_folding_for_any_map(value_rows, seed):
    """spec() + state_dict rebuild any clustered layer, and folding the map into a vocabulary is exact."""
    g = torch.Generator().manual_seed(seed)
    names = [f"f{i}" for i in range(len(value_rows))]
    clusters = {n: int(torch.randint(1, v + 1, (1,), generator=g)) for n, v in zip(names, value_rows, strict=True)}
    maps = {n: torch.randint(0, clusters[n], (v,), generator=g) for n, v in zip(names, value_rows, strict=True)}
    maps = {n: torch.cat([m, torch.arange(clusters[n])]) for n, m in maps.items()}  # every cluster used
    layer = ClusteredEmbedding.from_float(maps, {n: torch.randn(clusters[n], 3, generator=g) for n in names})
    rebuilt = embedding_from_spec(layer.spec())
    rebuilt.load_state_dict(layer.state_dict())
    vocabularies = {n: Vocabulary(n).fit(np.arange(1, m.numel()).astype(np.int64) * 7) for n, m in maps.items()}
    folded, inner = fold_vocabulary(vocabularies, layer)
    raw = np.arange(0, 250, 7, dtype=np.int64)  # some known values (multiples of 7 up to the field's) and 0 (OOV)
    ids = [FieldIds(torch.from_numpy(vocabularies[n].transform(raw))) for n in names]
    direct = inner([FieldIds(torch.from_numpy(folded[n].transform(raw))) for n in names])
    assert torch.equal(rebuilt(ids), layer(ids))
    assert torch.equal(direct, layer(ids))
