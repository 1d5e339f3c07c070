"""DLRM: shapes, the field-vector split, interaction, heads, config, and that a tiny model learns."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score
from torch import nn

from sharkrec.data.batch import Batch, FieldIds
from sharkrec.errors import ConfigError, DataError
from sharkrec.model.dlrm import DLRM, DLRMConfig, HeadKind, InteractionKind
from sharkrec.model.embedding import FloatEmbedding
from sharkrec.model.heads import MMoEHead

FIELD_ROWS = (("user", 9), ("item", 13), ("genres", 6))


def make_batch(batch_size: int = 5, num_dense: int = 3, num_tasks: int = 1, seed: int = 0) -> Batch:
    """Two single-hot fields and one multi-hot field (with empty bags)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 4, (batch_size,), generator=g)
    lengths[0] = 0
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    return Batch(
        dense=torch.randn(batch_size, num_dense, generator=g),
        sparse=(
            FieldIds(torch.randint(0, 9, (batch_size,), generator=g)),
            FieldIds(torch.randint(0, 13, (batch_size,), generator=g)),
            FieldIds(torch.randint(0, 6, (int(offsets[-1]),), generator=g), offsets),
        ),
        labels=torch.randint(0, 2, (batch_size, num_tasks), generator=g).float(),
    )


def make_model(**overrides: object) -> DLRM:
    torch.manual_seed(0)
    settings_ = {"num_dense": 3, "field_rows": FIELD_ROWS, "embedding_dim": 4, "bottom_mlp": (8,), "top_mlp": (16, 8)}
    settings_.update(overrides)
    return DLRM(DLRMConfig(**settings_))  # type: ignore[arg-type]


ARCHITECTURES = [
    pytest.param(
        head, interaction, num_dense, tasks, id=f"{head.value}-{interaction.value}-dense{num_dense}-t{len(tasks)}"
    )
    for head in HeadKind
    for interaction in InteractionKind
    for num_dense in (0, 3)
    for tasks in (("click",), ("click", "like", "follow"))
]


@pytest.mark.parametrize(("head", "interaction", "num_dense", "tasks"), ARCHITECTURES)
def test_output_shapes(head: HeadKind, interaction: InteractionKind, num_dense: int, tasks: tuple[str, ...]) -> None:
    model = make_model(num_dense=num_dense, head=head, interaction=interaction, tasks=tasks, tower_mlp=(4,))
    batch = make_batch(num_dense=num_dense, num_tasks=len(tasks))
    num_fields = 3 + (num_dense > 0)
    assert model.num_fields == num_fields
    assert model.field_vectors(batch).shape == (5, num_fields, 4)
    logits = model(batch)
    assert logits.shape == (5, len(tasks))
    assert torch.isfinite(logits).all()
    probabilities = model.predict_proba(batch)
    assert probabilities.shape == (5, len(tasks))
    assert ((probabilities > 0) & (probabilities < 1)).all()


def test_field_names_put_dense_first() -> None:
    assert make_model().field_names == ("dense", "user", "item", "genres")
    assert make_model(num_dense=0).field_names == ("user", "item", "genres")


def test_sparse_field_vectors_are_the_embedding_and_dense_is_the_bottom_mlp() -> None:
    model = make_model()
    batch = make_batch()
    vectors = model.field_vectors(batch)
    torch.testing.assert_close(vectors[:, 1:], model.embedding(batch.sparse))
    assert model.bottom is not None
    torch.testing.assert_close(vectors[:, 0], model.bottom(batch.dense))
    assert (vectors[:, 0] >= 0).all()  # ReLU on the bottom MLP's output


@pytest.mark.parametrize("head", list(HeadKind))
def test_logits_from_fields_of_field_vectors_equals_forward(head: HeadKind) -> None:
    model = make_model(head=head, tasks=("a", "b"))
    batch = make_batch(num_tasks=2)
    torch.testing.assert_close(model.logits_from_fields(model.field_vectors(batch)), model(batch))


def naive_interaction(vectors: torch.Tensor, kind: InteractionKind, has_dense: bool) -> torch.Tensor:
    rows = []
    for v in vectors:  # (F, D)
        dots = [torch.dot(v[i], v[j]) for i in range(len(v)) for j in range(i + 1, len(v))]
        if kind is InteractionKind.CONCAT:  # the field vectors alone, no dots
            rows.append(v.flatten())
            continue
        if kind is InteractionKind.DOT_CONCAT:
            head = list(v.flatten())  # every field vector
        elif has_dense:
            head = list(v[0])  # the dense field's vector
        else:
            head = []
        rows.append(torch.stack(head + dots))
    return torch.stack(rows)


@pytest.mark.parametrize("kind", list(InteractionKind))
@pytest.mark.parametrize("num_dense", [0, 3])
def test_interaction_equals_naive_double_loop(kind: InteractionKind, num_dense: int) -> None:
    model = make_model(num_dense=num_dense, interaction=kind)
    vectors = torch.randn(4, model.num_fields, 4)
    out = model.interact(vectors)
    assert out.shape == (4, model.config.interaction_features)
    torch.testing.assert_close(out, naive_interaction(vectors, kind, num_dense > 0))


def test_gradient_flows_to_every_field_vector() -> None:
    model = make_model()
    vectors = model.field_vectors(make_batch()).detach().requires_grad_(True)
    model.logits_from_fields(vectors).sum().backward()
    assert vectors.grad is not None
    assert (vectors.grad.abs().sum(dim=(0, 2)) > 0).all()


def test_single_task_shared_bottom_is_plain_dlrm() -> None:
    model = make_model(top_mlp=(16, 8))
    layers = [m for m in model.head.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in layers] == [(4 + 6, 16), (16, 8), (8, 1)]
    assert model.bottom is not None
    assert [(m.in_features, m.out_features) for m in model.bottom if isinstance(m, nn.Linear)] == [(3, 8), (8, 4)]


def test_mmoe_gates_sum_to_one() -> None:
    model = make_model(head=HeadKind.MMOE, num_experts=3, tasks=("a", "b"))
    assert isinstance(model.head, MMoEHead)
    with torch.no_grad():
        model.head.gates.weight.normal_()  # make the gates far from uniform
    gates = model.head.gate_weights(model.interact(model.field_vectors(make_batch())))
    assert gates.shape == (5, 2, 3)
    assert (gates >= 0).all()
    torch.testing.assert_close(gates.sum(-1), torch.ones(5, 2))
    assert not torch.allclose(gates, torch.full_like(gates, 1 / 3), atol=1e-3)


def test_multi_task_heads_give_tasks_their_own_towers() -> None:
    model = make_model(tasks=("a", "b"), tower_mlp=(4,))
    logits = model(make_batch(num_tasks=2))
    assert not torch.allclose(logits[:, 0], logits[:, 1])


def test_predict_proba_uses_eval_mode_and_restores_training() -> None:
    model = make_model(dropout=0.5)
    batch = make_batch()
    model.train()
    first, second = model.predict_proba(batch), model.predict_proba(batch)
    torch.testing.assert_close(first, second)
    assert model.training
    model.eval()
    torch.testing.assert_close(first, torch.sigmoid(model(batch)))
    assert not first.requires_grad


def test_wrong_dense_width_raises_data_error() -> None:
    with pytest.raises(DataError, match=r"dense features of shape \(5, 2\) but the model expects \(B, 3\)"):
        make_model()(make_batch(num_dense=2))


def test_wrong_field_vector_shape_raises_data_error() -> None:
    with pytest.raises(DataError, match=r"expected \(B, 4, 4\)"):
        make_model().logits_from_fields(torch.zeros(2, 3, 4))


def test_out_of_range_id_names_the_field() -> None:
    batch = make_batch()
    bad = Batch(batch.dense, (batch.sparse[0], FieldIds(torch.full((5,), 13)), batch.sparse[2]), batch.labels)
    with pytest.raises(DataError, match="field 'item' has ids from 13 to 13"):
        make_model()(bad)


def test_dense_only_model() -> None:
    model = make_model(field_rows=())
    batch = Batch(torch.randn(5, 3), (), torch.zeros(5, 1))
    assert model.field_names == ("dense",)
    assert model(batch).shape == (5, 1)


def test_parameters_split_into_sparse_and_dense() -> None:
    model = make_model(head=HeadKind.MMOE)
    sparse = model.sparse_parameters()
    dense = model.dense_parameters()
    assert len(sparse) == 3
    assert {id(p) for p in sparse} | {id(p) for p in dense} == {id(p) for p in model.parameters()}
    assert not {id(p) for p in sparse} & {id(p) for p in dense}
    assert dict(model.named_dense_parameters()).keys() == {
        n for n, _ in model.named_parameters() if not n.startswith("embedding.")
    }


def test_with_embedding_shares_the_new_embedding_and_copies_the_rest() -> None:
    model = make_model()
    batch = make_batch()
    tables = {name: model.embedding.table(name).detach() * 2 for name in model.embedding.field_names}
    tables["item"] = torch.cat([tables["item"], torch.zeros(7, 4)])  # more rows are fine
    new_embedding = FloatEmbedding.from_tables(tables)
    clone = model.with_embedding(new_embedding)
    assert clone.embedding is new_embedding
    assert dict(clone.config.field_rows)["item"] == 20
    vectors = model.field_vectors(batch)
    expected = model.logits_from_fields(torch.cat([vectors[:, :1], 2 * vectors[:, 1:]], dim=1))
    torch.testing.assert_close(clone(batch), expected)
    with torch.no_grad():
        for p in clone.dense_parameters():
            p.zero_()
    assert all(p.abs().sum() > 0 for n, p in model.named_dense_parameters() if n.endswith("weight"))
    with pytest.raises(ConfigError, match="new embedding fields"):
        model.with_embedding(FloatEmbedding({"user": 9}, 4))


def test_embedding_must_match_the_config() -> None:
    config = DLRMConfig(num_dense=3, field_rows=FIELD_ROWS, embedding_dim=4)
    with pytest.raises(ConfigError, match="embedding fields"):
        DLRM(config, FloatEmbedding({"user": 9}, 4))
    with pytest.raises(ConfigError, match="embedding dim 8"):
        DLRM(config, FloatEmbedding(dict(FIELD_ROWS), 8))


def test_embedding_bytes_of_the_default_embedding() -> None:
    model = make_model(embedding_dim=16)
    assert model.embedding.embedding_bytes() == (9 + 13 + 6) * 16 * 4


# ---------------------------------------------------------------- config


@settings(max_examples=40, deadline=None)
@given(
    num_dense=st.integers(0, 20),
    rows=st.lists(st.integers(1, 10**7), min_size=2, max_size=6),
    dim=st.integers(1, 64),
    top=st.lists(st.integers(1, 512), min_size=1, max_size=3),
    tasks=st.lists(st.sampled_from(["click", "like", "follow", "label"]), min_size=1, max_size=4, unique=True),
    head=st.sampled_from(HeadKind),
    interaction=st.sampled_from(InteractionKind),
    dropout=st.floats(0.0, 0.9),
)
def test_config_json_round_trip(
    num_dense: int, rows: list[int], dim: int, top: list[int], tasks: list[str],
    head: HeadKind, interaction: InteractionKind, dropout: float,
) -> None:
    config = DLRMConfig(
        num_dense=num_dense, field_rows=tuple((f"C{i}", r) for i, r in enumerate(rows)), embedding_dim=dim,
        top_mlp=tuple(top), tasks=tuple(tasks), head=head, interaction=interaction, dropout=dropout, tower_mlp=(3,),
    )
    restored = DLRMConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config
    assert isinstance(restored.head, HeadKind) and isinstance(restored.field_rows[0], tuple)


def test_config_to_dict_is_plain_json() -> None:
    payload = DLRMConfig(num_dense=2, field_rows=(("a", 3), ("b", 4)), head=HeadKind.MMOE).to_dict()
    assert payload["head"] == "mmoe" and payload["interaction"] == "dot"
    assert payload["field_rows"] == [["a", 3], ["b", 4]]


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"num_dense": -1}, "num_dense is -1"),
        ({"num_dense": 1.5}, "num_dense must be an integer"),
        ({"embedding_dim": 0}, "embedding_dim is 0"),
        ({"field_rows": (("a", 3), ("a", 4))}, r"more than once: \['a'\]"),
        ({"field_rows": (("a", 0),)}, "field 'a' has 0 rows"),
        ({"field_rows": (("dense", 3),)}, "'dense' is reserved"),
        ({"field_rows": 5}, "field_rows must be a list"),
        ({"num_dense": 0, "field_rows": ()}, "no fields"),
        ({"num_dense": 0, "field_rows": (("a", 3),)}, "use interaction 'dot-concat'"),
        ({"tasks": ()}, "tasks is empty"),
        ({"tasks": ("a", "a")}, "repeat a name"),
        ({"head": "tree"}, "unknown head 'tree'; use one of shared-bottom, mmoe"),
        ({"interaction": "cross"}, "unknown interaction 'cross'"),
        ({"head": "mmoe", "top_mlp": ()}, "MMoE head needs expert layers"),
        ({"num_experts": 0}, "num_experts is 0"),
        ({"top_mlp": (64, 0)}, r"top_mlp \[64, 0\] has a size below 1"),
        ({"dropout": 1.0}, "dropout is 1.0"),
    ],
)
def test_bad_config_raises_one_line_config_error(overrides: dict[str, object], match: str) -> None:
    settings_: dict[str, object] = {"num_dense": 2, "field_rows": (("a", 3), ("b", 4))}
    settings_.update(overrides)
    with pytest.raises(ConfigError, match=match) as error:
        DLRMConfig(**settings_)  # type: ignore[arg-type]
    assert "\n" not in str(error.value)


def test_from_dict_rejects_unknown_and_missing_keys() -> None:
    with pytest.raises(ConfigError, match=r"unknown keys \['depth'\]"):
        DLRMConfig.from_dict({"num_dense": 1, "field_rows": [], "depth": 3})
    with pytest.raises(ConfigError, match=r"lacks \['field_rows'\]"):
        DLRMConfig.from_dict({"num_dense": 1})


def test_single_string_task_is_one_task() -> None:
    assert DLRMConfig(num_dense=1, field_rows=(), tasks="click").tasks == ("click",)  # type: ignore[arg-type]


# ---------------------------------------------------------------- learning


def separable_data(n: int, seed: int, num_tasks: int) -> Batch:
    """Labels decided by per-id weights, a product of two fields' weights, and one dense feature."""
    g = torch.Generator().manual_seed(seed)
    weights = torch.Generator().manual_seed(99)
    w_user, w_item, w_genre = (torch.randn(rows, generator=weights) for rows in (9, 13, 6))
    user = torch.randint(0, 9, (n,), generator=g)
    item = torch.randint(0, 13, (n,), generator=g)
    lengths = torch.randint(0, 3, (n,), generator=g)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    genres = torch.randint(0, 6, (int(offsets[-1]),), generator=g)
    genre_sum = torch.zeros(n).index_add_(0, torch.repeat_interleave(torch.arange(n), lengths), w_genre[genres])
    dense = torch.randn(n, 3, generator=g)
    score = w_user[user] + w_item[item] * w_user[user] + genre_sum + dense[:, 0]
    labels = [score > 0, w_item[item] + dense[:, 1] > 0][:num_tasks]
    return Batch(dense, (FieldIds(user), FieldIds(item), FieldIds(genres, offsets)), torch.stack(labels, 1).float())


def take(data: Batch, index: torch.Tensor) -> Batch:
    genres = data.sparse[2]
    assert genres.offsets is not None
    starts, ends = genres.offsets[index], genres.offsets[index + 1]
    values = torch.cat([genres.values[s:e] for s, e in zip(starts.tolist(), ends.tolist(), strict=True)])
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), (ends - starts).cumsum(0)])
    return Batch(
        data.dense[index],
        (FieldIds(data.sparse[0].values[index]), FieldIds(data.sparse[1].values[index]), FieldIds(values, offsets)),
        data.labels[index],
    )


@pytest.mark.parametrize(
    ("head", "interaction", "num_tasks", "sparse_optimizer"),
    [
        (HeadKind.SHARED_BOTTOM, InteractionKind.DOT, 1, "sparse_adam"),
        (HeadKind.MMOE, InteractionKind.DOT_CONCAT, 2, "adagrad"),
    ],
)
def test_tiny_model_learns(head: HeadKind, interaction: InteractionKind, num_tasks: int, sparse_optimizer: str) -> None:
    tasks = ("first", "second")[:num_tasks]
    model = make_model(head=head, interaction=interaction, tasks=tasks, embedding_dim=8, top_mlp=(32, 16))
    train, test = separable_data(6000, seed=1, num_tasks=num_tasks), separable_data(2000, seed=2, num_tasks=num_tasks)
    dense_optimizer = torch.optim.Adam(model.dense_parameters(), lr=0.01)
    sparse: torch.optim.Optimizer = (
        torch.optim.SparseAdam(model.sparse_parameters(), lr=0.01)
        if sparse_optimizer == "sparse_adam"
        else torch.optim.Adagrad(model.sparse_parameters(), lr=0.05)
    )
    order = torch.randperm(6000, generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        for start in range(0, 6000, 128):
            batch = take(train, order[start : start + 128])
            loss = F.binary_cross_entropy_with_logits(model(batch), batch.labels, reduction="sum")
            dense_optimizer.zero_grad()
            sparse.zero_grad()
            loss.backward()
            dense_optimizer.step()
            sparse.step()
    probabilities = model.predict_proba(test)
    for t in range(num_tasks):
        assert roc_auc_score(test.labels[:, t].numpy(), probabilities[:, t].numpy()) > 0.9


def test_untrained_model_does_not_pass_the_learning_bar() -> None:
    """The AUC bar of ``test_tiny_model_learns`` is not met by chance."""
    test = separable_data(2000, seed=2, num_tasks=1)
    probabilities = make_model(embedding_dim=8, top_mlp=(32, 16)).predict_proba(test)
    assert roc_auc_score(test.labels[:, 0].numpy(), probabilities[:, 0].numpy()) < 0.8
