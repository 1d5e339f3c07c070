"""Sizing a hashed layer for a byte budget: at most the budget, within one fp32 row per field of it."""

from __future__ import annotations

import pytest
import torch

from sharkrec.errors import ConfigError
from sharkrec.hashed import HybridEmbedding, MixedDimEmbedding, QREmbedding, hashed_embedding, split_budget

ROWS = {"user": 20_000, "item": 3_001, "genre": 19, "age": 7}
DIM = 16
FP32 = sum(ROWS.values()) * DIM * 4
ROW_BYTES = DIM * 4
FREQUENCIES = {name: torch.arange(rows, 0, -1, dtype=torch.float64) for name, rows in ROWS.items()}
#: ratios each kind reaches on these fields (mixed dims stop near D / 1 = 16x: every value keeps a row of dim >= 1)
RATIOS = {"qr": (2, 3.3, 5, 10, 20, 50), "robe": (2, 3.3, 5, 10, 20, 50, 100, 1000),
          "hybrid": (2, 3.3, 5, 10, 20, 50, 100), "mixed_dim": (2, 3.3, 5, 10)}


@pytest.mark.parametrize(("kind", "ratio"), [(k, r) for k, ratios in RATIOS.items() for r in ratios])
def test_bytes_hit_the_budget_within_one_row_per_field(kind, ratio):
    target = int(FP32 / ratio)
    layer = hashed_embedding(kind, ROWS, DIM, target, seed=1, frequencies=FREQUENCIES)
    held = sum(t.numel() * t.element_size() for t in [*layer.parameters(), *layer.buffers()])
    assert layer.embedding_bytes() == held
    assert target - len(ROWS) * ROW_BYTES <= held <= target


def test_qr_fields_get_shares_in_proportion_to_their_rows():
    layer = hashed_embedding("qr", ROWS, DIM, FP32 // 10)
    assert isinstance(layer, QREmbedding)
    rows = {name: r + q for name, (r, q) in layer.table_rows().items()}
    assert rows["user"] / rows["item"] == pytest.approx(ROWS["user"] / ROWS["item"], rel=0.01)
    assert 0.099 < rows["user"] / ROWS["user"] < 0.1  # the small fields' floors take a little of its tenth
    assert rows["age"] == 6  # the floor: m = 2 (or 3) and ⌈7 / m⌉ rows, 5 would not hold it
    assert set(layer.value_rows().items()) == set(ROWS.items())


def test_hybrid_keeps_the_hottest_values():
    frequencies = {name: torch.rand(rows, generator=torch.Generator().manual_seed(0)) for name, rows in ROWS.items()}
    layer = hashed_embedding("hybrid", ROWS, DIM, FP32 // 20, frequencies=frequencies)
    assert isinstance(layer, HybridEmbedding)
    hot = layer.hot_ids("user").long()
    assert hot.numel() > 100
    threshold = frequencies["user"][hot].min()
    cold = torch.ones(ROWS["user"], dtype=torch.bool)
    cold[hot] = False
    assert bool((frequencies["user"][cold] <= threshold).all())


def test_mixed_dims_give_hot_ids_the_widest_rows():
    layer = hashed_embedding("mixed_dim", ROWS, DIM, FP32 // 4, frequencies=FREQUENCIES)
    assert isinstance(layer, MixedDimEmbedding)
    blocks = layer.field_blocks()["user"]
    assert [d for _, d in blocks] == sorted({d for _, d in blocks}, reverse=True) and len(blocks) >= 2
    assert sum(r for r, _ in blocks) == ROWS["user"]


@pytest.mark.parametrize("kind", ["qr", "hybrid", "mixed_dim"])
def test_a_budget_below_the_floor_names_it(kind):
    floor = rf"cannot hold a {kind} layer: its floor .* is \d+ bytes; raise target_bytes"
    with pytest.raises(ConfigError, match=floor):
        hashed_embedding(kind, ROWS, DIM, FP32 // 5000, frequencies=FREQUENCIES)


def test_split_budget_pins_fields_at_their_bounds():
    # in proportion to the highs b would get 1000 * 900 / 1850 = 486, below its low: it is pinned at 600
    share = split_budget(1000, {"a": 10, "b": 600, "c": 10}, {"a": 50, "b": 900, "c": 900}, "x")
    assert share == {"a": 21, "b": 600, "c": 378}  # the other 400 in proportion 50 : 900
    assert split_budget(10_000, {"a": 1}, {"a": 50}, "x") == {"a": 50}  # never above a field's high


def test_hybrid_small_fields_keep_every_value_with_min_rows():
    layer = hashed_embedding("hybrid", ROWS, DIM, FP32 // 20, frequencies=FREQUENCIES, min_rows=19)
    default = hashed_embedding("hybrid", ROWS, DIM, FP32 // 20, frequencies=FREQUENCIES)
    assert isinstance(layer, HybridEmbedding) and isinstance(default, HybridEmbedding)
    assert layer.hot_counts()["genre"] == 19 and layer.hot_counts()["age"] == 7  # kept whole (+ one shared row)
    assert default.hot_counts()["genre"] < 19


@pytest.mark.parametrize("kind", sorted(RATIOS))
def test_the_same_seed_builds_the_same_layer(kind):
    def build(seed: int) -> dict[str, torch.Tensor]:
        return hashed_embedding(kind, ROWS, DIM, FP32 // 8, seed=seed, frequencies=FREQUENCIES).state_dict()

    same, other = build(2), build(3)
    assert all(torch.equal(same[k], v) for k, v in build(2).items())
    assert any(not torch.equal(other[k], v) for k, v in same.items())
