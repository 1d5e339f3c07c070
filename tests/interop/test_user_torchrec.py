"""A user's TorchRec model on sharkrec's field path: torchrec's DLRM_DCN (EmbeddingBagCollection + KJT) found,
wrapped, scored and pruned with the same code as any PyTorch model; weighted EBCs, EmbeddingCollections, KJT
and Batch inputs."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

torchrec = pytest.importorskip("torchrec", reason="install the TorchRec extra: make setup-torchrec (CI does)")

from torch import nn  # noqa: E402
from torchrec.datasets.utils import Batch as TorchRecBatch  # noqa: E402
from torchrec.models.dlrm import DLRM_DCN  # noqa: E402

from sharkrec.data.user import UserData, from_batches, tree_cat, tree_take  # noqa: E402
from sharkrec.errors import ConfigError, DataError  # noqa: E402
from sharkrec.importance.base import field_importance  # noqa: E402
from sharkrec.interop.torchrec import from_torchrec_batches  # noqa: E402
from sharkrec.model.fieldmap import find_fields  # noqa: E402
from sharkrec.model.wrapped import FieldModel  # noqa: E402
from sharkrec.prune.loop import prune  # noqa: E402

CARD = {"f0": 40, "f1": 30, "f2": 20, "f3": 12}  # f0, f1 drive the label; f2 (mean bags) and f3 (sum bags) are noise
DIM = 8


def _batches(rows: int, seed: int, batch: int = 250) -> list[TorchRecBatch]:
    rng = np.random.default_rng(seed)
    label_rng = np.random.default_rng(0)  # the same effects in every split
    effect0, effect1 = label_rng.normal(0, 2.0, CARD["f0"]), label_rng.normal(0, 1.0, CARD["f1"])
    ids = {f: rng.integers(0, CARD[f], rows) for f in ("f0", "f1")}
    bags = {f: rng.integers(0, 4, rows) for f in ("f2", "f3")}  # 0..3 ids per sample (empty bags too)
    bag_ids = {f: rng.integers(0, CARD[f], bags[f].sum()) for f in bags}
    bag_starts = {f: np.concatenate([[0], np.cumsum(bags[f])]) for f in bags}
    dense = rng.normal(size=(rows, 3)).astype(np.float32)
    logit = effect0[ids["f0"]] + effect1[ids["f1"]] + dense[:, 0]
    labels = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    out = []
    for lo in range(0, rows, batch):
        hi = min(lo + batch, rows)
        values = [torch.from_numpy(ids[f][lo:hi]) for f in ("f0", "f1")]
        values += [torch.from_numpy(bag_ids[f][bag_starts[f][lo]:bag_starts[f][hi]]) for f in ("f2", "f3")]
        lengths = [torch.ones(hi - lo, dtype=torch.int64)] * 2
        lengths += [torch.from_numpy(bags[f][lo:hi]) for f in ("f2", "f3")]
        kjt = torchrec.KeyedJaggedTensor(keys=list(CARD), values=torch.cat(values), lengths=torch.cat(lengths))
        out.append(TorchRecBatch(torch.from_numpy(dense[lo:hi]), kjt, torch.from_numpy(labels[lo:hi])))
    return out


def _dcn() -> DLRM_DCN:
    torch.manual_seed(0)
    tables = [torchrec.EmbeddingBagConfig(name=f"t_{f}", embedding_dim=DIM, num_embeddings=card, feature_names=[f],
                                          pooling=torchrec.PoolingType.MEAN if f == "f2" else torchrec.PoolingType.SUM)
              for f, card in CARD.items()]
    ebc = torchrec.EmbeddingBagCollection(tables=tables, device=torch.device("cpu"))
    return DLRM_DCN(ebc, dense_in_features=3, dense_arch_layer_sizes=[16, DIM], over_arch_layer_sizes=[16, 1],
                    dcn_num_layers=2, dcn_low_rank_dim=4)


@pytest.fixture(scope="module")
def trained() -> tuple[DLRM_DCN, dict[str, list[TorchRecBatch]]]:
    torch.set_num_threads(1)
    model = _dcn()
    data = {"train": _batches(4000, seed=1), "valid": _batches(1000, seed=2), "test": _batches(1000, seed=3)}
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(3):
        for b in data["train"]:
            optimizer.zero_grad()
            logits = model(b.dense_features, b.sparse_features).squeeze(1)
            nn.functional.binary_cross_entropy_with_logits(logits, b.labels).backward()
            optimizer.step()
    return model.eval(), data


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _auc(outputs: torch.Tensor, batches: list[TorchRecBatch]) -> float:
    return float(roc_auc_score(torch.cat([b.labels for b in batches]).numpy(), outputs.reshape(-1).numpy()))


def test_dlrm_dcn_is_found_wrapped_and_answers_as_itself(trained) -> None:
    model, data = trained
    b = data["test"][0]
    fmap = find_fields(model, (b.dense_features, b.sparse_features))
    assert fmap.names == ("f0", "f1", "f2", "f3")  # the EBC's output order
    assert {f.module for f in fmap.fields} == {"sparse_arch.embedding_bag_collection"}
    assert [f.pooling for f in fmap.fields] == ["sum", "sum", "mean", "sum"]
    assert fmap.field_rows() == CARD
    before = _state(model)
    wrapped = FieldModel.wrap(model, fmap)
    bags = model.sparse_arch.embedding_bag_collection.embedding_bags
    for f in CARD:
        torch.testing.assert_close(wrapped.embedding.table(f).detach(), bags[f"t_{f}"].weight.detach(), rtol=0, atol=0)
    with torch.no_grad():
        for b in data["test"][:2]:
            torch.testing.assert_close(wrapped(b.dense_features, b.sparse_features),
                                       model(b.dense_features, b.sparse_features), rtol=0, atol=1e-6)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_from_batches_collates_and_indexes_kjts(trained) -> None:
    model, data = trained
    b = data["test"][0]
    wrapped = FieldModel.wrap(model, find_fields(model, (b.dense_features, b.sparse_features)))
    split = from_torchrec_batches(wrapped, data["test"][:2])
    assert len(split) == 500 and split.column(2).offsets is not None  # f2 stays a bag
    index = torch.tensor([499, 3, 3, 260, 0])
    batch = split.batch(index)
    dense, kjt = batch.inputs
    joined = tree_cat([(x.dense_features, x.sparse_features) for x in data["test"][:2]])[1]
    for key in CARD:
        lengths = joined[key].lengths()
        starts = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(lengths, 0)])
        expected = torch.cat([joined[key].values()[starts[i]:starts[i + 1]] for i in index.tolist()])
        assert torch.equal(kjt[key].lengths(), lengths[index]) and torch.equal(kjt[key].values(), expected)
    # the sparse columns are the ids the EBC saw; the FieldModel's (B, 1) logits are the model's on those inputs
    assert torch.equal(batch.sparse[0].values, kjt["f0"].values())
    with torch.no_grad():
        torch.testing.assert_close(wrapped(batch), model(dense, kjt), rtol=0, atol=1e-6)


def test_taylor2_ranks_the_fields_as_exact_does(trained) -> None:
    model, data = trained
    b = data["valid"][0]
    wrapped = FieldModel.wrap(model, find_fields(model, (b.dense_features, b.sparse_features)))
    valid = from_torchrec_batches(wrapped, data["valid"])
    taylor2 = field_importance(wrapped, valid, "taylor2", batch_size=500)
    exact = field_importance(wrapped, valid, "exact", batch_size=500)
    assert taylor2.ranking()[:2] == exact.ranking()[:2] and set(exact.ranking()[:2]) == {"f0", "f1"}
    assert exact.score("f0") > 10 * max(exact.score("f2"), exact.score("f3"))
    assert taylor2.score("f0") > 10 * max(taylor2.score("f2"), taylor2.score("f3"))


def test_algorithm_1_prunes_the_user_dlrm_dcn(trained) -> None:
    model, data = trained
    b = data["train"][0]
    wrapped = FieldModel.wrap(model, find_fields(model, (b.dense_features, b.sparse_features)))
    splits = {name: from_torchrec_batches(wrapped, batches) for name, batches in data.items()}
    user = UserData(wrapped, splits["train"], splits["valid"], splits["test"])
    before = _state(model)
    result = prune(wrapped, user, target_memory=0.6, batch_size=500)
    assert set(result.plan.removed) == {"f2", "f3"} and result.plan.kept == ("f0", "f1")
    assert result.stopped_because.startswith("target memory")
    base, last = result.history[0], result.history[-1]
    assert base["metrics"]["test"]["label"]["auc"] > 0.8
    assert last["metrics"]["test"]["label"]["auc"] >= 0.9925 * base["metrics"]["test"]["label"]["auc"]
    assert last["embedding_bytes"] == (40 + 30) * DIM * 4 + 2 * DIM * 4  # kept tables + two constants
    # the pruned FieldModel still answers like the user's model: inputs in, (B, 1) logits out
    with torch.no_grad():
        outputs = torch.cat([result.model(x.dense_features, x.sparse_features) for x in data["test"]])
    assert outputs.shape == (1000, 1) and _auc(outputs, data["test"]) >= 0.99 * base["metrics"]["test"]["label"]["auc"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the user's model is untouched


class _WeightedTower(nn.Module):
    """A weighted EBC (per-id weights) and a one-id EmbeddingCollection under a custom over-arch."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        tables = [torchrec.EmbeddingBagConfig(name=f"t_{f}", embedding_dim=4, num_embeddings=rows, feature_names=[f])
                  for f, rows in (("tags", 9), ("cats", 5))]
        self.bags = torchrec.EmbeddingBagCollection(tables=tables, is_weighted=True, device=torch.device("cpu"))
        self.ids = torchrec.EmbeddingCollection(
            tables=[torchrec.EmbeddingConfig(name="t_user", embedding_dim=4, num_embeddings=7, feature_names=["user"])],
            device=torch.device("cpu"))
        self.head = nn.Linear(12, 1)

    def forward(self, bag_features, id_features):  # type: ignore[no-untyped-def]
        pooled = self.bags(bag_features)  # KeyedTensor: tags, cats
        user = self.ids(id_features)["user"].values()  # (B, 4): one id per sample
        return self.head(torch.cat([pooled["tags"], pooled["cats"], user], dim=1)).squeeze(1)


def _weighted_inputs(seed: int, rows: int = 6) -> tuple[object, object]:
    g = torch.Generator().manual_seed(seed)
    tags, cats = torch.randint(0, 3, (rows,), generator=g), torch.randint(1, 3, (rows,), generator=g)
    count = int(tags.sum() + cats.sum())
    bags = torchrec.KeyedJaggedTensor(
        keys=["tags", "cats"], lengths=torch.cat([tags, cats]),
        values=torch.cat([torch.randint(0, 9, (int(tags.sum()),), generator=g),
                          torch.randint(0, 5, (int(cats.sum()),), generator=g)]),
        weights=torch.rand(count, generator=g))
    users = torchrec.KeyedJaggedTensor(keys=["user"], values=torch.randint(0, 7, (rows,), generator=g),
                                       lengths=torch.ones(rows, dtype=torch.int64))
    return bags, users


def test_weighted_ebc_and_embedding_collection_and_kjt_weights() -> None:
    model = _WeightedTower().eval()
    example = _weighted_inputs(0)
    fmap = find_fields(model, example)
    assert fmap.names == ("tags", "cats", "user")
    assert [f.pooling for f in fmap.fields] == ["weighted-sum", "weighted-sum", "none"]
    wrapped = FieldModel.wrap(model, fmap)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(*example), model(*example), rtol=0, atol=1e-6)
    # from_batches keeps the KJT weights when it joins and takes samples
    items = [(_weighted_inputs(seed), torch.tensor([0.0, 1.0] * 3)) for seed in (1, 2)]
    split = from_batches(wrapped, items)
    index = torch.tensor([11, 0, 7])
    bags, users = split.batch(index).inputs
    joined = tree_cat([x for x, _ in items])
    with torch.no_grad():
        torch.testing.assert_close(wrapped(bags, users), model(*joined)[index], rtol=0, atol=1e-6)
    assert bags.weights().shape == bags.values().shape
    assert torch.equal(tree_take(joined[1], index)["user"].values(), joined[1]["user"].values()[index])


def test_weighted_ebc_and_embedding_collection_export_and_serve(tmp_path) -> None:
    from sharkrec.export import load_artifact, save_user_artifact

    model = _WeightedTower().eval()
    example = _weighted_inputs(0)
    wrapped = FieldModel.wrap(model, find_fields(model, example))
    manifest = save_user_artifact(wrapped, example, tmp_path / "art")
    assert [e["kind"] for e in manifest["lookups"]] == ["torchrec-ebc", "torchrec-ec"]
    served = load_artifact(tmp_path / "art")
    for seed in (3, 4):
        x = _weighted_inputs(seed, rows=9)
        with torch.no_grad():
            torch.testing.assert_close(served(*x), model(*x), rtol=0, atol=1e-6)
    bags, users = _weighted_inputs(5, rows=4)
    request = [{"values": bags.values().tolist(), "lengths": bags.lengths().tolist(),
                "weights": bags.weights().tolist()},
               {"values": users.values().tolist(), "lengths": users.lengths().tolist()}]
    with torch.no_grad():
        torch.testing.assert_close(served(*served.parse_inputs(request)), model(bags, users), rtol=0, atol=1e-6)
    with pytest.raises(DataError, match=r"has 3 weights for \d+ values; give one weight per value"):
        short = torchrec.KeyedJaggedTensor(keys=bags.keys(), values=bags.values(), lengths=bags.lengths(),
                                           weights=bags.weights()[:3])
        served(short, users)


def test_torchrec_batches_collate_as_inputs() -> None:
    parts = _batches(10, seed=4, batch=5)
    joined = tree_cat(parts)
    assert isinstance(joined, TorchRecBatch) and joined.dense_features.shape == (10, 3)
    taken = tree_take(joined, torch.tensor([9, 2]))
    assert torch.equal(taken.labels, joined.labels[[9, 2]])
    assert torch.equal(taken.sparse_features["f0"].values(), joined.sparse_features["f0"].values()[[9, 2]])


def test_unreadable_torchrec_lookups_are_one_line_errors() -> None:
    shared = nn.Sequential(torchrec.EmbeddingBagCollection(
        tables=[torchrec.EmbeddingBagConfig(name="t", embedding_dim=4, num_embeddings=9, feature_names=["a", "b"])],
        device=torch.device("cpu")))
    kjt = torchrec.KeyedJaggedTensor(keys=["a", "b"], values=torch.arange(4), lengths=torch.ones(4, dtype=torch.int64))
    with pytest.raises(ConfigError, match=r"table 't' of EmbeddingBagCollection '0' serves features \['a', 'b'\]"):
        find_fields(shared, (kjt,))
    sequences = nn.Sequential(torchrec.EmbeddingCollection(
        tables=[torchrec.EmbeddingConfig(name="t", embedding_dim=4, num_embeddings=9, feature_names=["clicks"])],
        device=torch.device("cpu")))
    history = torchrec.KeyedJaggedTensor(keys=["clicks"], values=torch.arange(5), lengths=torch.tensor([2, 3]))
    with pytest.raises(ConfigError, match=r"returns one vector per id .* has 2\.\.3 ids per sample"):
        find_fields(sequences, (history,))


def test_plain_models_never_import_torchrec() -> None:
    code = ("import sys, torch; from sharkrec.model.fieldmap import find_fields; "
            "find_fields(torch.nn.Embedding(5, 2), (torch.arange(3),)); print('torchrec' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
