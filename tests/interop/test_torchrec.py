"""TorchRec round trip on a small torchrec DLRM (CPU): F-Permutation scores, table pruning, artifact export."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

torchrec = pytest.importorskip("torchrec", reason="install the TorchRec extra: make setup-torchrec (CI does)")

from torchrec.datasets.utils import Batch as TorchRecBatch  # noqa: E402
from torchrec.models.dlrm import DLRM as TorchRecDLRM  # noqa: E402

from sharkrec.data.batch import Batch, FieldIds  # noqa: E402
from sharkrec.errors import ConfigError  # noqa: E402
from sharkrec.export import load_artifact  # noqa: E402
from sharkrec.importance import field_importance  # noqa: E402
from sharkrec.interop.torchrec import (  # noqa: E402
    TorchRecFields,
    export_artifact,
    field_scores,
    prune_tables,
    prune_to_memory,
    split_from_torchrec,
    table_bytes,
    to_sharkrec,
)

CARD = {"f0": 40, "f1": 30, "f2": 20, "f3": 12}  # f0, f1 drive the label; f2 and the multi-hot f3 are noise
DIM = 8


def _batches(rows: int = 4000, batch: int = 200, seed: int = 0) -> list[TorchRecBatch]:
    rng = np.random.default_rng(seed)
    effect0, effect1 = rng.normal(0, 2.0, CARD["f0"]), rng.normal(0, 1.0, CARD["f1"])
    ids = {name: rng.integers(0, card, rows) for name, card in CARD.items() if name != "f3"}
    bag_lengths = rng.integers(1, 4, rows)
    bag_values = rng.integers(0, CARD["f3"], bag_lengths.sum())
    dense = rng.normal(size=(rows, 3)).astype(np.float32)
    logit = effect0[ids["f0"]] + effect1[ids["f1"]] + dense[:, 0]
    labels = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    offsets = np.concatenate([[0], np.cumsum(bag_lengths)])
    out = []
    for lo in range(0, rows, batch):
        hi = min(lo + batch, rows)
        values = [torch.from_numpy(ids[f][lo:hi]) for f in ("f0", "f1", "f2")]
        values.append(torch.from_numpy(bag_values[offsets[lo]:offsets[hi]]))
        lengths = [torch.ones(hi - lo, dtype=torch.int64)] * 3 + [torch.from_numpy(bag_lengths[lo:hi])]
        kjt = torchrec.KeyedJaggedTensor(keys=list(CARD), values=torch.cat(values), lengths=torch.cat(lengths))
        out.append(TorchRecBatch(torch.from_numpy(dense[lo:hi]), kjt, torch.from_numpy(labels[lo:hi])))
    return out


def _model(seed: int = 0) -> TorchRecDLRM:
    torch.manual_seed(seed)
    tables = [torchrec.EmbeddingBagConfig(name=f"t_{f}", embedding_dim=DIM, num_embeddings=card, feature_names=[f])
              for f, card in CARD.items()]
    ebc = torchrec.EmbeddingBagCollection(tables=tables, device=torch.device("cpu"))
    return TorchRecDLRM(embedding_bag_collection=ebc, dense_in_features=3, dense_arch_layer_sizes=[16, DIM],
                        over_arch_layer_sizes=[16, 1])


def _auc(model: torch.nn.Module, batches: list[TorchRecBatch]) -> float:
    with torch.no_grad():
        scores = torch.cat([model(b.dense_features, b.sparse_features).squeeze(1) for b in batches])
    return float(roc_auc_score(torch.cat([b.labels for b in batches]).numpy(), scores.numpy()))


@pytest.fixture(scope="module")
def trained() -> tuple[TorchRecDLRM, list[TorchRecBatch], list[TorchRecBatch]]:
    torch.set_num_threads(1)
    # same label effects (drawn first from the seed); the last 1000 rows of a 5000-row draw are held out
    model, train, test = _model(), _batches(4000, seed=0), _batches(5000, seed=0)[20:]
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(3):
        for b in train:
            optimizer.zero_grad()
            logits = model(b.dense_features, b.sparse_features).squeeze(1)
            torch.nn.functional.binary_cross_entropy_with_logits(logits, b.labels).backward()
            optimizer.step()
    return model.eval(), train, test


def test_fields_view_gives_the_models_own_logits(trained) -> None:
    model, train, _ = trained
    fields = TorchRecFields(model)
    assert fields.field_names == ("dense", "f0", "f1", "f2", "f3")
    split = split_from_torchrec(train[:2])
    assert len(split) == 400 and split.column(3).offsets is not None  # f3 stays multi-hot
    with torch.no_grad():
        ours = fields(split.slice(0, 400))
        theirs = torch.cat([model(b.dense_features, b.sparse_features) for b in train[:2]])
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_f_permutation_scores_rank_the_torchrec_fields(trained) -> None:
    model, _, test = trained
    assert _auc(model, test) > 0.8
    scores = field_scores(model, test, batch_size=500)
    assert scores.method == "taylor2" and scores.samples == 1000
    ranking = [f for f in scores.ranking() if f != "dense"]
    assert ranking[:2] == ["f0", "f1"]  # the two informative tables above the noise tables
    assert scores.score("f0") > 10 * max(scores.score("f2"), scores.score("f3"))
    # the converted sharkrec DLRM computes the same network, so the same scores
    network, _, _ = to_sharkrec(model, test)
    same = field_importance(network, split_from_torchrec(test), batch_size=500)
    np.testing.assert_allclose(same.scores, scores.scores, rtol=1e-4, atol=1e-7)


def test_prune_export_round_trip(trained, tmp_path) -> None:
    model, train, test = trained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # Algorithm 1 (sharkrec.prune.loop): keep at least 60% of the bytes; fine-tune on support samples of train
    pruned, result = prune_to_memory(model, test, 0.6, train=train, batch_size=500)
    assert set(result.plan.removed) == {"f2", "f3"} and result.plan.kept == ("f0", "f1")
    assert result.stopped_because.startswith("target memory")
    assert all(h["accepted"] for h in result.history)
    assert [h["removed"] for h in result.history[1:]] in ([["f2"], ["f3"]], [["f3"], ["f2"]])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the original is untouched
    # the torchrec model rebuilt from the loop's FieldModel computes the same logits
    with torch.no_grad():
        ours = torch.cat([result.model(b.dense_features, b.sparse_features) for b in test[:2]])
        theirs = torch.cat([pruned(b.dense_features, b.sparse_features) for b in test[:2]])
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    assert set(pruned.sparse_arch.embedding_bag_collection.embedding_bags) == {"t_f0", "t_f1"}
    assert table_bytes(pruned) == (40 + 30) * DIM * 4 + 2 * DIM * 4  # kept tables + two constant vectors
    assert table_bytes(pruned) >= 0.6 * table_bytes(model)
    assert _auc(pruned, test) > _auc(model, test) - 0.01  # the noise tables carried nothing
    assert table_bytes(model) == sum(CARD.values()) * DIM * 4  # the original model is untouched
    # pruning a pruned model again equals removing both at once (constants E[v_i] of the same data)
    twice = prune_tables(prune_tables(model, ["f2"], test, 500), ["f3"], test, 500)
    once = prune_tables(model, ["f2", "f3"], test, 500)
    assert twice.sparse_arch.removed == ("f2", "f3") and table_bytes(twice) == table_bytes(once)
    with torch.no_grad():
        torch.testing.assert_close(twice(test[0].dense_features, test[0].sparse_features),
                                   once(test[0].dense_features, test[0].sparse_features), rtol=0, atol=1e-6)

    manifest = export_artifact(pruned, train, tmp_path / "artifact", memory_budget=0.6)
    memory = manifest["memory"]
    assert memory["payload_bytes"] + memory["scale_bytes"] < 0.6 * (40 + 30) * DIM * 4
    status = {f["name"]: f["status"] for f in manifest["embedding"]["fields"]}
    assert status == {"f0": "kept", "f1": "kept", "f2": "pruned", "f3": "pruned"}
    served = load_artifact(tmp_path / "artifact")
    split = split_from_torchrec(test)
    batch = split.slice(0, len(split))
    sparse = []
    for name, ids in zip(CARD, batch.sparse, strict=True):
        vocabulary = served.vocabularies.get(name)
        slots = ids.values if vocabulary is None else torch.from_numpy(vocabulary.slots(ids.values.numpy()))
        sparse.append(FieldIds(slots, ids.offsets))
    probabilities = served.predict_proba(Batch(batch.dense, tuple(sparse), batch.labels))[:, 0]
    with torch.no_grad():
        expected = torch.sigmoid(torch.cat([pruned(b.dense_features, b.sparse_features) for b in test]))[:, 0]
    assert float((probabilities - expected).abs().max()) < 0.02  # int8 / fp16 rows: small rounding only
    assert float((probabilities - expected).abs().max()) > 0  # ... but the tables really are quantized


def test_bad_requests_are_one_line_errors(trained) -> None:
    model, _, test = trained
    with pytest.raises(ConfigError, match=r"cannot remove \['nope'\]: not a kept feature; kept features: f0, f1"):
        prune_tables(model, ["nope"], test)
    with pytest.raises(ConfigError, match="has no dense_arch, sparse_arch, inter_arch, over_arch"):
        TorchRecFields(torch.nn.Linear(2, 1))
    with pytest.raises(ConfigError, match=r"target memory 1.5 must be in \(0, 1\)"):
        prune_to_memory(model, test, 1.5)
