"""Clustered (Saec) models in the artifact: shared slots behind a key → slot array, equal predictions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import sharkrec
from sharkrec.cluster import ClusteredEmbedding, Saec, SaecConfig
from sharkrec.data.batch import Batch, FieldIds
from sharkrec.errors import CheckpointError
from sharkrec.export import artifact as artifact_module
from sharkrec.export import load_artifact, save_artifact
from sharkrec.export.artifact import serving_model
from sharkrec.export.rows import parse_records
from sharkrec.prune import PrunedEmbedding
from sharkrec.quant import Precision
from tests.export.conftest import serving_batch

KINDS = ["clustered", "clustered+int8", "clustered+f-quant", "clustered+int4", "clustered+pruned",
         "clustered+pruned+int8", "partly-clustered"]


def clustered(model, data, kind):
    """The in-memory clustered model of each scheme (the Saec maps + rows, optionally quantized / pruned)."""
    quantize = {"clustered+int8": "int8", "clustered+f-quant": "f-quant", "clustered+int4": "int4",
                "clustered+pruned+int8": "int8"}.get(kind)
    options = {"tier_fractions": (0.3, 0.3, 0.4)} if quantize == "f-quant" else {}
    if "pruned" in kind:
        model = model.with_embedding(PrunedEmbedding.wrap(model.embedding, {"b": torch.full((8,), 0.25)}))
    fields = ("a",) if kind == "partly-clustered" else None
    saec = Saec(SaecConfig(rows_ratio=0.6 if fields else 0.3, fields=fields)).fit(model, data)
    return saec.transform(model, quantize=quantize, **options).eval()


def with_unknowns(batch):
    """``batch`` with every 7th id of every field set to row 0 (sent to the artifact as an unknown raw key)."""
    sparse = []
    for ids in batch.sparse:
        values = ids.values.clone()
        values[::7] = 0
        sparse.append(FieldIds(values, ids.offsets))
    return Batch(batch.dense, tuple(sparse), batch.labels)


def _clustered_part(model):
    embedding = model.embedding
    inner = embedding.kept if isinstance(embedding, PrunedEmbedding) else embedding
    assert isinstance(inner, ClusteredEmbedding)
    return inner


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_equals_the_in_memory_clustered_model(toy_model, tmp_path, kind):
    model, data = toy_model
    reference = clustered(model, data, kind)
    manifest = save_artifact(reference, data.schema, data.vocabularies, tmp_path / "art")
    served = sharkrec.load(tmp_path / "art")
    batch = with_unknowns(data.test.slice(0, len(data.test)))
    # serving_batch sends row 0 as an unknown raw key: it must read the OOV value's cluster row
    got = served.predict_proba(serving_batch(served, batch, data.vocabularies))
    atol = {"clustered+int4": 2e-3, "clustered+f-quant": 1e-4}.get(kind, 1e-5)
    torch.testing.assert_close(got, reference.predict_proba(batch), atol=atol, rtol=0)
    inner = _clustered_part(reference)
    key_slot_bytes = 0
    for entry in manifest["embedding"]["fields"]:
        if entry["status"] == "pruned":
            continue
        vocab = served.vocabularies[entry["name"]]
        row_map = inner.row_map(entry["name"])
        rows = inner.num_rows()[entry["name"]]
        assert entry["rows"] == rows
        if rows == row_map.numel():  # a field Saec left whole: one key per slot, no extra bytes
            assert vocab.key_slots is None and entry["vocabulary"]["key_slots"] is None
            continue
        assert vocab.key_slots is not None and vocab.key_slots.dtype == np.int32
        assert len(vocab.key_slots) == row_map.numel() - 1
        key_slot_bytes += 4 * (row_map.numel() - 1)
        # two values share a slot exactly when they share a cluster row (the OOV value included)
        slots = vocab.slots([-12345, *data.vocabularies[entry["name"]].keys_])
        same_slot = slots[:, None] == slots[None, :]
        same_row = (row_map[:, None] == row_map[None, :]).numpy()
        assert np.array_equal(same_slot, same_row)
    assert key_slot_bytes > 0
    memory = manifest["memory"]
    assert memory["key_slot_bytes"] == key_slot_bytes
    assert memory["embedding_bytes"] == (memory["payload_bytes"] + memory["scale_bytes"] + memory["constant_bytes"]
                                         + key_slot_bytes)
    assert memory["rows"] == sum(inner.num_rows().values()) < memory["value_rows"]
    assert manifest["version"] == 2 == served.manifest["version"]


@pytest.mark.parametrize("kind", ["clustered+f-quant", "clustered+pruned+int8"])
def test_fused_fbgemm_and_reference_kernels_agree_on_shared_slots(toy_model, tmp_path, kind):
    model, data = toy_model
    reference = clustered(model, data, kind)  # built once: int8 rounding draws at random
    save_artifact(reference, data.schema, data.vocabularies, tmp_path / "art")
    fused, slow = load_artifact(tmp_path / "art"), load_artifact(tmp_path / "art", kernel="reference")
    batch = serving_batch(fused, with_unknowns(data.test.slice(0, len(data.test))), data.vocabularies)
    packed = fused.embedding._packed_positions
    assert packed is not None and len(packed) >= 1
    got, want = fused.embedding(batch.sparse), slow.embedding(batch.sparse)
    torch.testing.assert_close(got[:, packed], want[:, packed], atol=0, rtol=0)
    torch.testing.assert_close(got, want, atol=1e-3, rtol=0)
    fbgemm = load_artifact(tmp_path / "art", kernel="fbgemm")
    torch.testing.assert_close(fbgemm.predict_proba(batch), slow.predict_proba(batch), atol=1e-3, rtol=0)
    built = serving_model(reference, data.schema, data.vocabularies)
    torch.testing.assert_close(built.predict_proba(batch), fused.predict_proba(batch), atol=0, rtol=0)
    assert built.manifest["memory"] == fused.manifest["memory"]


def test_cluster_rows_are_tier_ordered_and_hottest_by_summed_member_counts(toy_model, tmp_path):
    model, data = toy_model
    reference = clustered(model, data, "clustered+f-quant")
    manifest = save_artifact(reference, data.schema, data.vocabularies, tmp_path / "art")
    served = load_artifact(tmp_path / "art")
    inner = _clustered_part(reference)
    tiers = inner.inner.tier_of_rows()
    tiers_used = set()
    for entry in manifest["embedding"]["fields"]:
        name = entry["name"]
        row_map = inner.row_map(name).long()
        counts = torch.zeros(inner.num_rows()[name], dtype=torch.int64)
        counts.index_add_(0, row_map, torch.from_numpy(np.asarray(data.vocabularies[name].counts_, np.int64)))
        slots = torch.from_numpy(served.vocabularies[name].slots([-12345, *data.vocabularies[name].keys_]))
        slot_of_row = torch.full((len(counts),), -1, dtype=torch.int64)
        slot_of_row[row_map] = slots  # consistent: values of one row share its slot (checked above)
        assert torch.equal(slot_of_row[row_map], slots)
        for tier in entry["tiers"]:
            tiers_used.add(tier["precision"])
            members = (tiers[name] == Precision(tier["precision"]).code).nonzero().squeeze(1)
            assert sorted(slot_of_row[members].tolist()) == list(range(*tier["slots"]))
            in_slot_order = members[slot_of_row[members].argsort()]
            assert (torch.diff(counts[in_slot_order]) <= 0).all()  # hottest cluster row first
            assert tier["traffic"] == int(counts[members].sum())
    assert {"fp32", "fp16", "int8"} <= tiers_used


def test_string_keys_multi_hot_and_unknown_values(csv_model, tmp_path):
    model, data = csv_model
    reference = Saec(SaecConfig(rows_ratio=0.25)).fit(model, data).transform(model).eval()
    save_artifact(reference, data.schema, data.vocabularies, tmp_path / "art")
    served = load_artifact(tmp_path / "art")
    batch = data.test.slice(0, len(data.test))
    got = served.predict_proba(serving_batch(served, batch, data.vocabularies))
    torch.testing.assert_close(got, reference.predict_proba(batch), atol=1e-5, rtol=0)
    assert served.vocabularies["user"].key_kind == "str" and served.vocabularies["user"].key_slots is not None
    # raw records: an unknown user and tag read the OOV values' cluster rows, like the in-memory model
    records = [{"user": "u1", "city": "oslo", "tags": ["t1", "t3"], "age": 30},
               {"user": "never-seen", "city": "atlantis", "tags": ["t2", "zz"], "age": None}]
    scores = served.predict_proba(served.encode(parse_records(served, records)))
    encoded = []
    for record in records:
        encoded.append({"user": data.vocabularies["user"].transform(np.asarray([record["user"]], dtype=object))[0],
                        "city": data.vocabularies["city"].transform(np.asarray([record["city"]], dtype=object))[0],
                        "tags": data.vocabularies["tags"].transform(np.asarray(record["tags"], dtype=object))})
    assert encoded[1]["user"] == 0 and encoded[1]["tags"][1] == 0  # the unknown values really are OOV
    sparse = (FieldIds(torch.tensor([e["user"] for e in encoded])),
              FieldIds(torch.tensor([e["city"] for e in encoded])),
              FieldIds(torch.from_numpy(np.concatenate([e["tags"] for e in encoded]).astype(np.int64)),
                       torch.tensor([0, 2, 4])))
    dense = served.encode(parse_records(served, records)).dense
    expected = reference.predict_proba(Batch(dense, sparse, torch.zeros(2, 1)))
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=0)


def test_unclustered_artifacts_stay_version_one_and_still_load(toy_model, tmp_path):
    model, data = toy_model
    manifest = save_artifact(model, data.schema, data.vocabularies, tmp_path / "art")
    assert manifest["version"] == 1 and manifest["memory"]["key_slot_bytes"] == 0
    assert all(e["vocabulary"]["key_slots"] is None for e in manifest["embedding"]["fields"])
    assert "key_slots" not in " ".join(load_file(str(tmp_path / "art" / "vocabulary.safetensors")))
    # a manifest written before key -> slot arrays existed has no "key_slots" entries: it loads the same
    for entry in manifest["embedding"]["fields"]:
        del entry["vocabulary"]["key_slots"]
    del manifest["memory"]["key_slot_bytes"]
    del manifest["manifest_digest"]  # (nor a digest of the manifest, which came later still)
    (tmp_path / "art" / artifact_module.DIGEST).unlink()
    (tmp_path / "art" / "manifest.json").write_text(json.dumps(manifest))
    served = load_artifact(tmp_path / "art")
    batch = data.test.slice(0, len(data.test))
    torch.testing.assert_close(served.predict_proba(serving_batch(served, batch, data.vocabularies)),
                               model.predict_proba(batch), atol=1e-5, rtol=0)


def _rewrite_key_slots(path, change):
    """Replace the first key -> slot array with ``change(array)`` and re-sign the file (a consistent checksum)."""
    manifest_path = path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    name = next(e["vocabulary"]["key_slots"] for e in manifest["embedding"]["fields"]
                if e["status"] == "kept" and e["vocabulary"]["key_slots"])
    tensors = load_file(str(path / "vocabulary.safetensors"))
    tensors[name] = change(tensors[name])
    save_file(tensors, str(path / "vocabulary.safetensors"))
    file = path / "vocabulary.safetensors"
    manifest["files"]["vocabulary.safetensors"] = {"sha256": artifact_module._sha256(file),
                                                   "bytes": file.stat().st_size}
    manifest_path.write_text(json.dumps(manifest))
    # re-sealed, so the key -> slot checks behind the manifest's digest are what is tested
    (path / artifact_module.DIGEST).write_text(artifact_module._digest_line(manifest_path.read_bytes()))


@pytest.mark.parametrize(("change", "fragment"), [
    (lambda slots: slots + 1000, "key -> slot array"),
    (lambda slots: slots[:-1].clone(), "key -> slot array of shape"),
    (lambda slots: slots.to(torch.int64), "int64"),
])
def test_inconsistent_key_slots_are_one_line_errors(toy_model, tmp_path, change, fragment):
    model, data = toy_model
    save_artifact(clustered(model, data, "clustered"), data.schema, data.vocabularies, tmp_path / "art")
    _rewrite_key_slots(tmp_path / "art", change)
    with pytest.raises(CheckpointError, match="inconsistent") as exc:
        load_artifact(tmp_path / "art")
    assert "\n" not in str(exc.value) and fragment in str(exc.value) and "re-export" in str(exc.value)


def test_damaged_key_slots_fail_the_checksum(toy_model, tmp_path):
    model, data = toy_model
    save_artifact(clustered(model, data, "clustered"), data.schema, data.vocabularies, tmp_path / "art")
    file = tmp_path / "art" / "vocabulary.safetensors"
    raw = bytearray(file.read_bytes())
    raw[-3] ^= 0x01
    file.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupted"):
        load_artifact(tmp_path / "art")


def test_key_slot_vocabulary_maps_shared_keys_unknowns_and_converted_types():
    from sharkrec.export.tables import ServingVocabulary

    vocab = ServingVocabulary("f", "int", np.array([10, 20, 30, 40]), oov_slot=1,
                              key_slots=np.array([0, 2, 0, 1], dtype=np.int32))
    assert vocab.slots([10, "30", 20.0, 40, 99, "x", None]).tolist() == [0, 0, 2, 1, 1, 1, 1]
    assert vocab.num_slots == 3 and vocab.key_slot_bytes == 16
    words = ServingVocabulary("g", "str", np.array(["a", "b"], dtype=object), oov_slot=0,
                              key_slots=np.array([1, 1], dtype=np.int32))
    assert words.slots(["b", "a", "c", 5]).tolist() == [1, 1, 0, 0]
    empty = ServingVocabulary("h", "str", np.array([], dtype=object), oov_slot=0, key_slots=np.zeros(0, np.int32))
    assert empty.slots(["a", "b"]).tolist() == [0, 0]
