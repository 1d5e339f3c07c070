"""Hashed embeddings (QR, ROBE-Z, hybrid, mixed dims) export and serve: artifact scores equal in-memory scores."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import sharkrec
from sharkrec.cluster.saec import value_counts
from sharkrec.data.batch import Batch, FieldIds
from sharkrec.errors import CheckpointError
from sharkrec.export import load_artifact, save_artifact, save_user_artifact
from sharkrec.export.artifact import serving_model
from sharkrec.hashed import HashedKind, hashed_model
from sharkrec.hashed import kernels as hashed_kernels
from sharkrec.prune import PrunedEmbedding, remove_fields
from tests.export.conftest import serving_batch
from tests.export.test_artifact_hardening import _edit_manifest, _one_line, _rewrite_tensors
from tests.export.test_user_artifact import wrapped

KINDS = [kind.value for kind in HashedKind]


def hashed(model, data, kind, share=2):
    """``model``'s network over an untrained ``kind`` layer (fixed seed) of 1/``share`` of its fp32 bytes."""
    counts = value_counts(data)
    if kind == "mixed_dim" and any(bool((c[2:] > c[1:-1]).any()) for c in counts.values()):
        counts = None  # ids not numbered hottest first (identity vocabularies): blocks are plain id ranges
    budget = model.embedding.embedding_bytes() // share
    return hashed_model(model, kind, budget, seed=7, frequencies=counts).eval()


def with_oov(batch: Batch) -> Batch:
    """``batch`` with the first samples' ids set to row 0 (OOV): every field, the first id of each bag too."""
    sparse = []
    for ids in batch.sparse:
        values = ids.values.clone()
        if ids.offsets is None:
            values[:3] = 0
        else:
            values[ids.offsets[:3][ids.offsets[:3] < values.numel()]] = 0
        sparse.append(FieldIds(values, ids.offsets, ids.weights))
    return Batch(batch.dense, tuple(sparse), batch.labels)


@pytest.fixture(scope="module")
def exported(toy_model, csv_model, tmp_path_factory):
    """{(data set, kind): (in-memory model, data, artifact path, manifest)}, each saved once."""
    out = {}
    for source, (model, data) in (("toy", toy_model), ("csv", csv_model)):
        for kind in KINDS:
            reference = hashed(model, data, kind)
            path = tmp_path_factory.mktemp(f"{source}-{kind}") / "art"
            manifest = save_artifact(reference, data.schema, data.vocabularies, path)
            out[(source, kind)] = (reference, data, path, manifest)
    return out


@pytest.mark.parametrize("source", ["toy", "csv"])
@pytest.mark.parametrize("kind", KINDS)
def test_loaded_scores_equal_the_in_memory_model(exported, source, kind):
    reference, data, path, _ = exported[(source, kind)]
    served = sharkrec.load(path)
    batch = with_oov(data.test.slice(0, len(data.test)))
    multi_hot = [k for k, spec in enumerate(data.schema.sparse) if spec.is_multi_hot]
    assert multi_hot and all(batch.sparse[k].offsets is not None for k in multi_hot)
    assert all(bool((ids.values == 0).any()) for ids in batch.sparse)  # every field has unseen values
    encoded = serving_batch(served, batch, data.vocabularies)  # raw keys (row 0: a key never seen) → slots
    for row_ids, slots in zip(batch.sparse, encoded.sparse, strict=True):
        assert torch.equal(row_ids.values, slots.values)  # a hashed field's slot is its vocabulary row, OOV 0
    expected = reference.predict_proba(batch)
    got = served.predict_proba(encoded)
    assert torch.allclose(got, expected, atol=1e-6, rtol=0)
    assert float((got - expected).abs().max()) == 0.0  # the same layer on the same ids: bit for bit
    fused = kind in hashed_kernels.KINDS and hashed_kernels.extension() is not None  # the layer's fused lookup
    assert served.embedding.backend == f"{'c++' if fused else 'pytorch'} {kind} layer"
    assert not any(p.requires_grad for p in (*served.parameters(), *served.embedding.layer.parameters()))


@pytest.mark.parametrize("kind", KINDS)
def test_memory_figures_are_the_layer_bytes(exported, kind):
    reference, _, path, manifest = exported[("csv", kind)]
    memory = manifest["memory"]
    assert memory["embedding_bytes"] == memory["layer_bytes"] == reference.embedding.embedding_bytes()
    assert memory["payload_bytes"] == memory["rows"] == 0
    vocabulary = load_file(str(path / "vocabulary.safetensors"))
    assert memory["vocabulary_bytes"] == sum(t.numel() * t.element_size() for t in vocabulary.values()) > 0
    served = load_artifact(path)
    assert served.embedding.embedding_bytes() == reference.embedding.embedding_bytes()
    layer = manifest["embedding"]["layer"]
    assert layer["kind"] == kind and layer["bytes"] == reference.embedding.embedding_bytes()
    assert layer["row_rule"] and layer["spec"] == json.loads(json.dumps(reference.embedding.spec()))
    stored = load_file(str(path / "embedding.safetensors"))
    assert sorted(stored) == sorted(f"layer.{name}" for name in reference.embedding.state_dict())
    assert manifest["version"] == 3
    assert all(f["store"] == "layer" and f["tiers"] == [] for f in manifest["embedding"]["fields"])


@pytest.mark.parametrize("kind", KINDS)
def test_pruned_hashed_model_round_trips(toy_model, tmp_path, kind):
    model, data = toy_model
    pruned = remove_fields(hashed(model, data, kind), ["b"], data.valid).eval()
    assert isinstance(pruned.embedding, PrunedEmbedding)
    manifest = save_artifact(pruned, data.schema, data.vocabularies, tmp_path / "art")
    assert manifest["memory"]["embedding_bytes"] == pruned.embedding.embedding_bytes()
    assert manifest["memory"]["constant_bytes"] == 4 * model.embedding.embedding_dim
    served = load_artifact(tmp_path / "art", kernel="reference")
    batch = with_oov(data.test.slice(0, len(data.test)))
    got = served.predict_proba(serving_batch(served, batch, data.vocabularies))
    assert torch.allclose(got, pruned.predict_proba(batch), atol=1e-6, rtol=0)


def test_in_memory_serving_model_leaves_the_trained_layer_alone(toy_model):
    model, data = toy_model
    reference = hashed(model, data, "robe")
    served = serving_model(reference, data.schema, data.vocabularies)
    assert reference.embedding.weights.requires_grad and served.embedding.layer is not reference.embedding
    batch = data.test.slice(0, 64)
    assert torch.equal(served.predict_proba(serving_batch(served, batch, data.vocabularies)),
                       reference.predict_proba(batch))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", ["deepfm", "shared-bag"])
def test_wrapped_user_model_with_a_hashed_layer_serves(tmp_path, name, kind):
    model, inputs = wrapped(name)
    counts = {n: torch.arange(r, 0, -1).double() for n, r in model.field_rows().items()}  # row order = hottest first
    reference = hashed_model(model, kind, model.embedding.embedding_bytes() // 2, seed=7, frequencies=counts).eval()
    manifest = save_user_artifact(reference, inputs(8, 1), tmp_path / "art")
    assert manifest["version"] == 2 and manifest["memory"]["embedding_bytes"] == reference.embedding.embedding_bytes()
    served = sharkrec.load(tmp_path / "art")
    x = inputs(37, 3)
    with torch.no_grad():
        want = reference(*x)
    assert torch.allclose(served(*x), want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_http_predict_and_the_serving_cache_score_raw_rows_as_the_model(exported, tmp_path, kind):
    from fastapi.testclient import TestClient

    from sharkrec.export.rows import parse_records
    from sharkrec.export.server import create_app
    from tests.export.test_server import ROWS  # raw rows: unseen values, empty and missing bags

    reference, _, path, _ = exported[("csv", kind)]
    served = load_artifact(path, cache_dir=tmp_path / "cache")  # a hashed layer is loaded, not cached
    batch = served.encode(parse_records(served, ROWS))  # slots = vocabulary rows, the ids the model takes
    want = reference.predict_proba(batch).numpy()
    with TestClient(create_app(served, max_wait_ms=5)) as client:
        response = client.post("/predict", json={"rows": ROWS})
        health = client.get("/health").json()
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(np.asarray(response.json()["scores"]), want, atol=1e-6, rtol=0)
    assert health["embedding_bytes"] == reference.embedding.embedding_bytes()


# ------------------------------------------------------------------------------------------ integrity
@pytest.fixture()
def artifact(exported, tmp_path):
    """A fresh copy of the csv mixed-dims artifact (per test: the tests damage it)."""
    path = tmp_path / "art"
    shutil.copytree(exported[("csv", "mixed_dim")][2], path)
    return path


def test_corrupted_layer_tensor_is_refused(artifact):
    path = artifact / "embedding.safetensors"
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF  # a byte of the last tensor's data
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupted") as exc:
        load_artifact(artifact)
    _one_line(exc)


def test_missing_layer_tensor_is_refused(artifact):
    _rewrite_tensors(artifact, "embedding.safetensors", lambda t: t.pop("layer.projections.0"))
    with pytest.raises(CheckpointError, match=r"layer\.projections\.0.*not stored") as exc:
        load_artifact(artifact)
    _one_line(exc)


def test_layer_tensor_of_the_wrong_shape_is_refused(artifact):
    _rewrite_tensors(artifact, "embedding.safetensors", lambda t: t.update({"layer.tables.0": t["layer.tables.0"][1:]}))
    with pytest.raises(CheckpointError, match=r"layer\.tables\.0.*shape") as exc:
        load_artifact(artifact)
    _one_line(exc)


def test_non_finite_layer_weights_are_refused(artifact):
    def poison(tensors):
        tensors["layer.tables.0"] = tensors["layer.tables.0"].clone()
        tensors["layer.tables.0"][0, 0] = float("nan")

    _rewrite_tensors(artifact, "embedding.safetensors", poison)
    with pytest.raises(CheckpointError, match="not finite") as exc:
        load_artifact(artifact)
    _one_line(exc)


def test_block_starts_that_index_outside_the_tables_are_refused(artifact):
    def shift(tensors):
        tensors["layer.starts_0"] = tensors["layer.starts_0"].clone()
        tensors["layer.starts_0"][-1] += 10**6  # the last block now starts past every id: earlier blocks overflow

    _rewrite_tensors(artifact, "embedding.safetensors", shift)
    with pytest.raises(CheckpointError, match="cannot compute its rows") as exc:
        load_artifact(artifact)
    _one_line(exc)


def test_stray_tensor_and_edited_spec_are_refused(artifact, tmp_path):
    shutil.copytree(artifact, tmp_path / "copy")
    _rewrite_tensors(artifact, "embedding.safetensors", lambda t: t.update({"layer.extra": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match=r"layer\.extra.*no field of the manifest declares") as exc:
        load_artifact(artifact)
    _one_line(exc)

    def grow(manifest):
        blocks = manifest["embedding"]["layer"]["spec"]["field_blocks"]
        first = next(iter(blocks))
        blocks[first][0][0] += 1  # one more row than the stored table holds

    _edit_manifest(tmp_path / "copy", grow)
    with pytest.raises(CheckpointError, match="shape") as exc:
        load_artifact(tmp_path / "copy")
    _one_line(exc)


def test_a_manifest_edit_without_resealing_is_refused(artifact):
    _edit_manifest(artifact, lambda m: m["embedding"]["layer"].update({"bytes": 1}), reseal=False)
    with pytest.raises(CheckpointError, match="digest") as exc:
        load_artifact(artifact)
    _one_line(exc)
    _edit_manifest(artifact, lambda m: m["embedding"]["layer"].update({"bytes": 1}))
    with pytest.raises(CheckpointError, match=r"holds \d+ bytes but the manifest says 1") as exc:
        load_artifact(artifact)
    _one_line(exc)


def test_hashed_fields_keep_their_keys_at_their_vocabulary_rows(exported):
    """Every vocabulary key of a hashed field sits at its vocabulary row (no slot order to fold in)."""
    _, data, path, _ = exported[("toy", "qr")]
    served = load_artifact(path)
    for name, vocabulary in served.vocabularies.items():
        keys = np.asarray(data.vocabularies[name].keys_)
        assert vocabulary.oov_slot == 0 and vocabulary.key_slots is None
        assert np.array_equal(vocabulary.slots(keys), np.arange(1, len(keys) + 1))
