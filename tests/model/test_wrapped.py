"""FieldModel mechanics: discovery rules, record / replay, copies, errors (the model families are in test_any_model)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sharkrec.data.user import UserData, from_batches
from sharkrec.errors import ConfigError, DataError
from sharkrec.model.fieldmap import FieldMap, find_fields
from sharkrec.model.wrapped import FieldModel


class TwoLookups(nn.Module):
    """A user id table, an item bag table (mean) and a dense tower; counts its forward calls."""

    def __init__(self) -> None:
        super().__init__()
        self.user = nn.Embedding(7, 4)
        self.items = nn.EmbeddingBag(5, 4, mode="mean")
        self.top = nn.Sequential(nn.Linear(8 + 2, 8), nn.ReLU(), nn.Linear(8, 1))
        self.calls = 0

    def forward(self, user: torch.Tensor, items: torch.Tensor, offsets: torch.Tensor, dense: torch.Tensor):
        self.calls += 1
        v = torch.cat([self.user(user), self.items(items, offsets), dense], dim=1)
        return self.top(v).squeeze(1)


def inputs(batch: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 4, (batch,), generator=g)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)[:-1]])
    items = torch.randint(0, 5, (int(lengths.sum()),), generator=g)
    return torch.randint(0, 7, (batch,), generator=g), items, offsets, torch.randn(batch, 2, generator=g)


def test_discovery_and_exact_replay():
    torch.manual_seed(0)
    model = TwoLookups()
    fmap = find_fields(model, inputs(6))
    assert [(f.name, f.rows, f.dim, f.pooling) for f in fmap.fields] == [("user", 7, 4, "none"),
                                                                       ("items", 5, 4, "mean")]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    wrapped = FieldModel.wrap(model, fmap)
    x = inputs(32, seed=1)
    assert torch.allclose(wrapped(*x), model(*x), atol=1e-6)  # mean bags (with empty ones) are exact
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert wrapped.embedding.embedding_bytes() == (7 + 5) * 4 * 4
    # the copy's tables are its own: training it leaves the user's tables alone
    with torch.no_grad():
        wrapped.embedding.table("user").add_(1.0)
    assert torch.equal(model.user.weight, before["user.weight"])


def test_record_stops_after_the_last_lookup_and_replays_once():
    model = TwoLookups()
    wrapped = FieldModel.wrap(model, find_fields(model, inputs(4)))
    network = wrapped.network
    network.calls = 0
    ids = wrapped.record(inputs(8))
    assert network.calls == 1 and [i.batch_size() for i in ids] == [8, 8]
    wrapped(*inputs(8))
    assert network.calls == 3  # one record pass, one replay


def test_renames_declared_offsets_and_field_map_round_trip():
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table = nn.Embedding(10, 3)
            self.head = nn.Linear(6, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.table(x).flatten(1)).squeeze(1)

    model = Shared()
    x = torch.stack([torch.randint(0, 4, (5,)), torch.randint(4, 10, (5,))], dim=1)
    with pytest.raises(ConfigError, match="no per-field offsets"):
        find_fields(model, x)
    fmap = find_fields(model, x, shared={"table": [0, 4]}, names={"table.0": "user", "table.1": "item"})
    assert [(f.name, f.row_start, f.rows) for f in fmap.fields] == [("user", 0, 4), ("item", 4, 6)]
    assert FieldMap.from_dict(fmap.to_dict()) == fmap
    wrapped = FieldModel.wrap(model, fmap)
    assert torch.allclose(wrapped(x), model(x), atol=1e-6)
    assert torch.equal(wrapped.embedding.table("item"), model.table.weight[4:])


def test_with_embedding_copies_the_network_and_keeps_slots_apart():
    model = TwoLookups()
    wrapped = FieldModel.wrap(model, find_fields(model, inputs(4)))
    other = wrapped.with_embedding(wrapped.embedding.subset(list(wrapped.field_names)))
    assert other.tape is not wrapped.tape and other.network is not wrapped.network
    x = inputs(16, seed=3)
    assert torch.allclose(other(*x), wrapped(*x))


def test_one_line_errors():
    model = TwoLookups()
    fmap = find_fields(model, inputs(4))
    with pytest.raises(ConfigError, match="not in the model"):
        find_fields(model, inputs(4), modules=["missing.path"])
    with pytest.raises(DataError, match="failed on the example batch"):
        find_fields(model, (torch.zeros(3, dtype=torch.int64),))
    with pytest.raises(ConfigError, match="not in the field map"):
        fmap.rename({"nope": "x"})
    wrapped = FieldModel.wrap(model, fmap)
    with pytest.raises(ConfigError, match="call the FieldModel"):
        wrapped.network(*inputs(4))
    with pytest.raises(DataError, match="rejected the batch"):
        wrapped(torch.zeros(4, dtype=torch.int64))
    with pytest.raises(DataError, match="not \\(inputs, labels\\)"):
        from_batches(wrapped, [inputs(4)])
    with pytest.raises(DataError, match="0 or 1"):
        from_batches(wrapped, [(inputs(4), torch.full((4,), 2.0))])

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table = nn.Embedding(5, 2)

        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return (self.table(a) * self.table(b)).sum(1)

    with pytest.raises(ConfigError, match="more than once"):
        find_fields(Twice(), (torch.zeros(2, dtype=torch.int64), torch.ones(2, dtype=torch.int64)))


def test_user_split_gathers_inputs_ids_and_labels_together():
    model = TwoLookups()
    wrapped = FieldModel.wrap(model, find_fields(model, inputs(4)))
    batches = [(inputs(10, seed=s), torch.randint(0, 2, (10,)).float()) for s in range(3)]
    split = from_batches(wrapped, batches)
    assert len(split) == 30 and split.num_tasks == 1
    index = torch.tensor([25, 3, 14])
    batch = split.batch(index)
    expected = torch.cat([model(*x) for x, _ in batches])[index]
    assert torch.allclose(wrapped(batch)[:, 0], expected, atol=1e-6)  # recorded ids and inputs stay aligned
    data = UserData(wrapped, split)
    assert data.cardinalities == {"user": 7, "items": 5} and len(data.valid) == 0
