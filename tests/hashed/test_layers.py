"""The layers with no per-value state: bytes held, lookups, gradients, save / load, seeds and bad settings."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sharkrec.data.batch import FieldIds
from sharkrec.errors import ConfigError, DataError
from sharkrec.hashed import (
    HASH_PRIME,
    HybridEmbedding,
    MixedDimEmbedding,
    QREmbedding,
    RobeEmbedding,
    hash_parameters,
    hashed_embedding,
    universal_hash,
)
from sharkrec.model.embedding import FieldEmbedding, embedding_from_spec

ROWS = {"user": 500, "item": 37, "tags": 12}  # "tags" is looked up multi-hot below
DIM = 8
FREQUENCIES = {name: torch.arange(rows, 0, -1, dtype=torch.float64) for name, rows in ROWS.items()}


def qr(seed: int = 0) -> FieldEmbedding:
    return QREmbedding(ROWS, {"user": 23, "item": 7, "tags": 3}, DIM, generator=torch.Generator().manual_seed(seed))


def qr_add(seed: int = 0) -> FieldEmbedding:
    return QREmbedding(ROWS, {"user": 23, "item": 7, "tags": 3}, DIM, combine="add",
                       generator=torch.Generator().manual_seed(seed))


def robe(seed: int = 0) -> FieldEmbedding:
    return RobeEmbedding(ROWS, DIM, 301, chunk_size=3, seed=seed, generator=torch.Generator().manual_seed(0))


def hybrid(seed: int = 0) -> FieldEmbedding:
    hot = {"user": torch.tensor([0, 1, 2, 40]), "item": torch.tensor([5]), "tags": torch.tensor([], dtype=torch.int64)}
    return HybridEmbedding(ROWS, hot, {"user": 9, "item": 4, "tags": 2}, DIM, seed=seed,
                           generator=torch.Generator().manual_seed(0))


def mixed(seed: int = 0) -> FieldEmbedding:
    blocks = {"user": [(10, 8), (90, 4), (400, 1)], "item": [(37, 2)], "tags": [(2, 8), (10, 3)]}
    return MixedDimEmbedding(blocks, DIM, generator=torch.Generator().manual_seed(seed))


BUILDERS: dict[str, Callable[..., FieldEmbedding]] = {"qr": qr, "qr_add": qr_add, "robe": robe, "hybrid": hybrid,
                                                      "mixed_dim": mixed}
HASHED = ("robe", "hybrid")  # kinds whose seed picks a hash (QR has none; mixed dims' seed is its init)


def batch(seed: int = 0, size: int = 6) -> list[FieldIds]:
    generator = torch.Generator().manual_seed(seed)
    user = FieldIds(torch.randint(0, ROWS["user"], (size,), generator=generator))
    item = FieldIds(torch.randint(0, ROWS["item"], (size,), generator=generator))
    lengths = torch.tensor([2, 0, 3, 1, 0, 4][:size])
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    tags = FieldIds(torch.randint(0, ROWS["tags"], (int(offsets[-1]),), generator=generator), offsets)
    return [user, item, tags]


def held_bytes(layer: torch.nn.Module) -> int:
    """Every parameter and buffer the layer holds, walked independently of its own count."""
    return sum(t.numel() * t.element_size() for t in [*layer.parameters(), *layer.buffers()])


@pytest.fixture(params=sorted(BUILDERS))
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_bytes_reported_are_the_bytes_held(kind):
    layer = BUILDERS[kind]()
    assert layer.embedding_bytes() == held_bytes(layer) > 0


def test_forward_single_and_multi_hot(kind):
    layer = BUILDERS[kind]()
    sparse = batch()
    out = layer(sparse)
    assert out.shape == (6, 3, DIM)
    tags = sparse[2]
    assert tags.offsets is not None
    for b in range(6):  # a bag is the sum of its ids looked up one by one; an empty bag is zeros
        ids = tags.values[tags.offsets[b] : tags.offsets[b + 1]]
        singles = layer([FieldIds(sparse[0].values[:1].repeat(ids.numel())),
                         FieldIds(sparse[1].values[:1].repeat(ids.numel())), FieldIds(ids)])[:, 2]
        torch.testing.assert_close(out[b, 2], singles.sum(0), atol=1e-6, rtol=1e-5)
    assert torch.equal(out[1, 2], torch.zeros(DIM))


def test_weighted_bags_weigh_each_id(kind):
    layer = BUILDERS[kind]()
    sparse = batch()
    tags = sparse[2]
    weighted = FieldIds(tags.values, tags.offsets, torch.full((tags.values.numel(),), 2.0))
    torch.testing.assert_close(layer([*sparse[:2], weighted])[:, 2], 2 * layer(sparse)[:, 2])


def test_gradients_reach_the_rows_sparsely(kind):
    layer = BUILDERS[kind]()
    layer(batch()).pow(2).sum().backward()
    grads = [p.grad for p in layer.sparse_parameters()]
    assert any(g is not None for g in grads)
    for grad in grads:
        if grad is not None:
            assert grad.is_sparse and grad.coalesce().values().abs().sum() > 0


def test_spec_and_state_dict_rebuild_the_same_layer(kind):
    layer = BUILDERS[kind]()
    with torch.no_grad():
        for p in layer.sparse_parameters():
            p.add_(torch.randn_like(p))  # trained weights, not the initial ones
    rebuilt = embedding_from_spec(layer.spec())
    assert type(rebuilt) is type(layer)
    rebuilt.load_state_dict(layer.state_dict())
    assert torch.equal(rebuilt(batch()), layer(batch()))
    assert rebuilt.embedding_bytes() == layer.embedding_bytes()


def test_same_seed_same_output_other_seed_other(kind):
    assert torch.equal(BUILDERS[kind](seed=3)(batch()), BUILDERS[kind](seed=3)(batch()))
    assert not torch.equal(BUILDERS[kind](seed=3)(batch()), BUILDERS[kind](seed=4)(batch()))


def test_subset_keeps_the_fields_vectors(kind):
    layer = BUILDERS[kind]()
    sparse = batch()
    part = getattr(layer, "subset")(["tags", "user"])  # noqa: B009 - every kind here defines it
    torch.testing.assert_close(part([sparse[2], sparse[0]]), layer(sparse)[:, [2, 0]])


def test_ids_outside_the_vocabulary_are_a_one_line_data_error(kind):
    sparse = batch()
    sparse[1] = FieldIds(torch.tensor([0, 1, 2, 3, 4, ROWS["item"]]))
    with pytest.raises(DataError, match=r"field 'item' has ids from 0 to 37 .* encode the data"):
        BUILDERS[kind]()(sparse)


@pytest.mark.parametrize("seed", [0, 1])
def test_hash_family_is_deterministic_and_spreads_ids(seed):
    params = hash_parameters(seed, 3)
    assert torch.equal(params, hash_parameters(seed, 3))
    assert not torch.equal(params, hash_parameters(seed + 1, 3))
    assert bool(((params[:, 0] >= 1) & (params[:, 0] < HASH_PRIME)).all())
    ids = torch.arange(20_000, dtype=torch.int64) * 7919  # structured ids (a stride) must still spread
    buckets = universal_hash(ids, params, 100)
    assert buckets.shape == (20_000, 3) and int(buckets.min()) >= 0 and int(buckets.max()) < 100
    load = torch.stack([torch.bincount(buckets[:, k], minlength=100) for k in range(3)])
    assert int(load.max()) < 2 * 200 and int(load.min()) > 200 // 2  # 200 per bucket expected


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 2**62), min_size=1, max_size=50), st.integers(1, HASH_PRIME))
def test_hash_stays_in_range_without_overflow(ids, buckets):
    out = universal_hash(torch.tensor(ids, dtype=torch.int64), hash_parameters(0, 2), buckets)
    assert int(out.min()) >= 0 and int(out.max()) < buckets


def test_hybrid_hot_values_own_their_rows_and_cold_values_share():
    layer = hybrid()
    assert isinstance(layer, HybridEmbedding)
    rows = layer.rows_of(0, torch.arange(ROWS["user"]))
    assert rows[[0, 1, 2, 40]].tolist() == [0, 1, 2, 3]  # hot ids: rows 0..H-1, in id order
    cold = rows[torch.tensor([i for i in range(ROWS["user"]) if i not in (0, 1, 2, 40)])]
    assert int(cold.min()) >= 4 and int(cold.max()) < 4 + 9 and cold.unique().numel() == 9
    assert layer.num_rows()["user"] == 13
    assert layer.fixed_bytes()["user"] == 4 * 4 + 16  # int32 hot ids + one (a, b) pair


def test_qr_gives_every_value_its_own_vector():
    layer = qr()
    vectors = layer([FieldIds(torch.arange(ROWS["user"])), FieldIds(torch.zeros(500, dtype=torch.int64)),
                     FieldIds(torch.zeros(500, dtype=torch.int64))])[:, 0]
    assert torch.unique(vectors, dim=0).shape[0] == ROWS["user"]
    assert isinstance(layer, QREmbedding) and layer.table_rows()["user"] == (23, 22)  # ⌈500 / 23⌉ = 22


def test_robe_reads_chunks_contiguously_with_wrap_around():
    layer = robe()
    assert isinstance(layer, RobeEmbedding)
    positions, signs = layer.weight_positions(0, torch.arange(50))
    chunks = positions.view(50, layer.chunks, layer.chunk_size)
    assert torch.equal((chunks[..., 1:] - chunks[..., :-1]) % layer.size, torch.ones(50, 3, 2, dtype=torch.int64))
    assert signs is not None and set(signs.unique().tolist()) == {-1.0, 1.0}


BAD = [
    (lambda: QREmbedding(ROWS, {"user": 0, "item": 7, "tags": 3}, DIM), "remainder_rows is 0; use 1..500"),
    (lambda: QREmbedding(ROWS, {"user": 3}, DIM), "give one remainder table size per field"),
    (lambda: QREmbedding(ROWS, {"user": 3, "item": 3, "tags": 3}, DIM, combine="concat"), "QR combine"),
    (lambda: QREmbedding({"user": 0}, {"user": 1}, DIM), "field 'user' has 0 vocabulary rows"),
    (lambda: RobeEmbedding(ROWS, DIM, 2, chunk_size=4), "less than one chunk of 4"),
    (lambda: RobeEmbedding(ROWS, DIM, 100, chunk_size=9), "chunk_size is 9; use 1..8"),
    (lambda: HybridEmbedding({"a": 3}, {"a": torch.arange(4)}, {"a": 1}, DIM), "4 hot values but the vocabulary has 3"),
    (lambda: HybridEmbedding({"a": 3}, {"a": torch.tensor([1, 1])}, {"a": 1}, DIM), "distinct ids in 0..2"),
    (lambda: HybridEmbedding({"a": 3}, {"a": torch.tensor([1])}, {"a": 0}, DIM), "need 1 or more rows"),
    (lambda: MixedDimEmbedding({"a": [(3, 4), (5, 4)]}, DIM), "dims must decrease block by block"),
    (lambda: MixedDimEmbedding({"a": [(3, 16)]}, DIM), "use dims 1..8"),
    (lambda: MixedDimEmbedding({"a": [(0, 4)]}, DIM), "every block needs 1 or more rows"),
    (lambda: hashed_embedding("tt", ROWS, DIM, 1000), "hashed embedding kind"),
    (lambda: hashed_embedding("qr", ROWS, DIM, 10), "its floor over these fields is"),
    (lambda: hashed_embedding("robe", ROWS, DIM, 100), "its floor (hash parameters plus one chunk"),
    (lambda: hashed_embedding("hybrid", ROWS, DIM, 1000), "pass frequencies=value_counts(data)"),
    (lambda: hashed_embedding("qr", ROWS, DIM, 1000, hot_share=0.5), "qr takes no option ['hot_share']"),
    (lambda: hashed_embedding("mixed_dim", ROWS, DIM, 10_000, frequencies={"user": torch.arange(500.0)}),
     "ids are not numbered hottest first"),
]


@pytest.mark.parametrize(("build", "message"), BAD)
def test_bad_settings_are_one_line_config_errors(build, message):
    with pytest.raises(ConfigError) as error:
        build()
    assert message in str(error.value) and "\n" not in str(error.value)


def test_the_seed_picks_the_hash_parameters():
    def robe_of(seed: int) -> RobeEmbedding:
        return RobeEmbedding(ROWS, DIM, 301, seed=seed)

    assert torch.equal(robe_of(5).offset_hash, robe_of(5).offset_hash)
    assert not torch.equal(robe_of(5).offset_hash, robe_of(6).offset_hash)
    assert not torch.equal(robe_of(5).sign_hash, robe_of(6).sign_hash)
    one, again, other = hybrid(seed=5), hybrid(seed=5), hybrid(seed=6)
    assert isinstance(one, HybridEmbedding) and isinstance(again, HybridEmbedding)
    assert isinstance(other, HybridEmbedding) and not torch.equal(one.cold_hash, other.cold_hash)
    cold = torch.arange(100, 500)  # no hot user id here
    assert torch.equal(one.rows_of(0, cold), again.rows_of(0, cold))
    assert not torch.equal(one.rows_of(0, cold), other.rows_of(0, cold))
