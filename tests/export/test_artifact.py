"""Artifact round trip (every embedding kind), tier-ordered slots, and the errors of broken artifacts."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import sharkrec
from sharkrec.errors import CheckpointError
from sharkrec.export import artifact as artifact_module
from sharkrec.export import load_artifact, read_manifest, save_artifact
from sharkrec.export.artifact import serving_model
from sharkrec.prune import PrunedEmbedding, remove_fields
from sharkrec.quant import MixedPrecisionEmbedding, Precision, build_embedding
from tests.export.conftest import serving_batch


def compressed(model, data, kind):
    """The in-memory model of each compression scheme the artifact must reproduce."""
    if kind == "fp32":
        return model
    if kind == "f-quant":
        embedding = build_embedding("f-quant", model.embedding, data, tier_fractions=(0.2, 0.3, 0.5))
        return model.with_embedding(embedding)
    if kind in ("fp16", "int8", "int4"):
        return model.with_embedding(build_embedding(kind, model.embedding))
    if kind == "pruned":
        return remove_fields(model, ["b"], data.valid)
    if kind == "pruned+mixed":  # prune the fp32 model, then quantize the kept tables
        pruned = remove_fields(model, ["b"], data.valid).embedding
        assert isinstance(pruned, PrunedEmbedding)
        kept = build_embedding("f-quant", pruned.kept, None, tier_fractions=(0.3, 0.3, 0.4))
        constants = dict(zip(pruned.removed, pruned.constants, strict=True))
        return model.with_embedding(PrunedEmbedding(pruned.field_names, kept, constants))
    raise AssertionError(kind)


KINDS = ["fp32", "f-quant", "fp16", "int8", "int4", "pruned", "pruned+mixed"]


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_equals_the_in_memory_model(toy_model, tmp_path, kind):
    model, data = toy_model
    reference = compressed(model, data, kind).eval()
    save_artifact(reference, data.schema, data.vocabularies, tmp_path / "art")
    served = sharkrec.load(tmp_path / "art")
    batch = data.test.slice(0, len(data.test))
    expected = reference.predict_proba(batch)
    got = served.predict_proba(serving_batch(served, batch, data.vocabularies))
    # fp32 and int8 rows are read exactly (int8 through FBGEMM: u·s − 128·s vs q·s, float rounding);
    # multi-hot fp16 bags sum in fp16 (fp16 output: ~5e-4 relative per vector); int4 goes through
    # FBGEMM's fp16 scale (≤ 5e-4 relative per row)
    atol = {"int4": 2e-3, "fp16": 1e-4, "f-quant": 1e-4, "pruned+mixed": 1e-4}.get(kind, 1e-5)
    torch.testing.assert_close(got, expected, atol=atol, rtol=0)
    assert not any(p.requires_grad for p in served.parameters())
    assert not hasattr(served.embedding, "priorities") and served.embedding.sparse_parameters() == []


@pytest.mark.parametrize("kind", ["f-quant", "int4", "pruned+mixed"])
def test_fused_fbgemm_and_reference_kernels_agree(toy_model, tmp_path, kind):
    model, data = toy_model
    save_artifact(compressed(model, data, kind), data.schema, data.vocabularies, tmp_path / "art")
    fused, slow = load_artifact(tmp_path / "art"), load_artifact(tmp_path / "art", kernel="reference")
    assert fused.embedding.kernel == "fused"
    batch = serving_batch(fused, data.test.slice(0, len(data.test)), data.vocabularies)
    # the fused kernel reads single-hot rows exactly as the reference dequantizes them; multi-hot
    # fields go through FBGEMM (int4 there has an fp16 scale)
    packed = fused.embedding._packed_positions
    assert packed is not None and len(packed) >= 1
    got, want = fused.embedding(batch.sparse), slow.embedding(batch.sparse)
    torch.testing.assert_close(got[:, packed], want[:, packed], atol=0, rtol=0)
    torch.testing.assert_close(got, want, atol=1e-3, rtol=0)
    fbgemm = load_artifact(tmp_path / "art", kernel="fbgemm")
    torch.testing.assert_close(fbgemm.embedding(batch.sparse), slow.embedding(batch.sparse), atol=1e-3, rtol=0)
    torch.testing.assert_close(fbgemm.predict_proba(batch), slow.predict_proba(batch), atol=1e-3, rtol=0)


@pytest.mark.parametrize("kind", ["f-quant", "pruned+mixed"])
def test_in_memory_serving_model_equals_the_loaded_artifact(toy_model, tmp_path, kind):
    model, data = toy_model
    reference = compressed(model, data, kind).eval()
    save_artifact(reference, data.schema, data.vocabularies, tmp_path / "art")
    loaded = load_artifact(tmp_path / "art")
    built = serving_model(reference, data.schema, data.vocabularies)
    batch = serving_batch(loaded, data.test.slice(0, len(data.test)), data.vocabularies)
    torch.testing.assert_close(built.predict_proba(batch), loaded.predict_proba(batch), atol=0, rtol=0)
    assert built.embedding.embedding_bytes() == loaded.embedding.embedding_bytes()
    assert built.manifest["memory"] == loaded.manifest["memory"]


def test_slots_are_tier_ordered_and_hottest_first(toy_model, tmp_path):
    model, data = toy_model
    reference = compressed(model, data, "f-quant")
    manifest = save_artifact(reference, data.schema, data.vocabularies, tmp_path / "art")
    served = load_artifact(tmp_path / "art")
    assert isinstance(reference.embedding, MixedPrecisionEmbedding)
    tiers = reference.embedding.tier_of_rows()
    for entry in manifest["embedding"]["fields"]:
        name = entry["name"]
        vocab = served.vocabularies[name]
        counts = data.vocabularies[name].counts_
        rows = torch.arange(len(counts))
        raw = [-1, *data.vocabularies[name].keys_]  # row r's raw key (row 0: an unknown value)
        slots = torch.from_numpy(vocab.slots(raw))
        assert sorted(slots.tolist()) == list(range(len(counts)))  # one id -> one slot
        ends = [0]
        for tier in entry["tiers"]:  # tiers are contiguous slot ranges in precision order
            assert tier["slots"][0] == ends[-1]
            ends.append(tier["slots"][1])
            members = rows[tiers[name] == Precision(tier["precision"]).code]
            member_slots = slots[members]
            assert sorted(member_slots.tolist()) == list(range(*tier["slots"]))
            in_slot_order = members[member_slots.argsort()]
            assert (torch.diff(torch.from_numpy(counts[in_slot_order.numpy()])) <= 0).all()  # hottest first
    tiers_used = [[t["precision"] for t in entry["tiers"]] for entry in manifest["embedding"]["fields"]]
    assert all(len(used) >= 2 for used in tiers_used)  # routing across tiers is exercised in every field
    assert {p for used in tiers_used for p in used} == {"fp32", "fp16", "int8"}
    header = manifest["embedding"]["row_header"]
    assert [(w["word"], w["bytes"]) for w in header] == [("precision", 1), ("dimension", 2), ("scale", 4)]
    memory = manifest["memory"]
    assert memory["table1_header_bytes"] == 7 * memory["rows"]
    assert memory["embedding_bytes"] < memory["fp32_bytes"]


def test_string_keys_round_trip(csv_model, tmp_path):
    model, data = csv_model
    save_artifact(model, data.schema, data.vocabularies, tmp_path / "art")
    served = load_artifact(tmp_path / "art")
    batch = data.test.slice(0, len(data.test))
    got = served.predict_proba(serving_batch(served, batch, data.vocabularies))
    torch.testing.assert_close(got, model.predict_proba(batch), atol=1e-6, rtol=0)
    assert served.vocabularies["city"].key_kind == "str"


@pytest.fixture
def artifact(toy_model, tmp_path):
    model, data = toy_model
    save_artifact(compressed(model, data, "f-quant"), data.schema, data.vocabularies, tmp_path / "art")
    return tmp_path / "art"


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_corrupted_byte_is_reported(artifact):
    file = artifact / "embedding.safetensors"
    raw = bytearray(file.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    file.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError) as exc:
        load_artifact(artifact)
    assert "corrupted" in _one_line(exc) and "re-export" in _one_line(exc)


def test_truncated_file_is_reported(artifact):
    file = artifact / "dense.safetensors"
    file.write_bytes(file.read_bytes()[:-10])
    with pytest.raises(CheckpointError) as exc:
        load_artifact(artifact)
    assert "truncated" in _one_line(exc)


def test_wrong_version_is_reported(artifact):
    manifest = json.loads((artifact / "manifest.json").read_text())
    manifest["version"] = 99
    (artifact / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError) as exc:
        load_artifact(artifact)
    assert "version 99" in _one_line(exc) and "upgrade sharkrec" in _one_line(exc)


@pytest.mark.parametrize("damage", ["missing", "not-json", "wrong-format", "missing-file"])
def test_broken_manifest_is_reported(artifact, damage):
    manifest = artifact / "manifest.json"
    if damage == "missing":
        manifest.unlink()
    elif damage == "not-json":
        manifest.write_text(manifest.read_text()[:50])
    elif damage == "wrong-format":
        manifest.write_text(json.dumps({"format": "something-else", "version": 1}))
    else:
        (artifact / "vocabulary.safetensors").unlink()
    with pytest.raises(CheckpointError) as exc:
        load_artifact(artifact)
    _one_line(exc)


def test_inconsistent_manifest_is_reported(artifact):
    manifest = json.loads((artifact / "manifest.json").read_text())
    manifest["embedding"]["fields"][0]["tiers"][0]["payload"] = "field.0.nothing"
    (artifact / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="inconsistent") as exc:
        load_artifact(artifact)
    _one_line(exc)


def test_missing_path_and_file_path_are_reported(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_artifact(tmp_path / "nothing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="is a file"):
        load_artifact(tmp_path / "file")


def test_writes_are_atomic(toy_model, tmp_path, monkeypatch):
    model, data = toy_model
    target = tmp_path / "art"
    save_artifact(model, data.schema, data.vocabularies, target)
    before = read_manifest(target)

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(artifact_module, "save_file", fail)
    with pytest.raises(OSError, match="disk full"):
        save_artifact(compressed(model, data, "int8"), data.schema, data.vocabularies, target)
    assert read_manifest(target) == before  # the old artifact is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]  # no temporary left behind


def test_overwrites_an_artifact_but_not_other_folders(toy_model, tmp_path):
    model, data = toy_model
    save_artifact(model, data.schema, data.vocabularies, tmp_path / "art")
    save_artifact(compressed(model, data, "int8"), data.schema, data.vocabularies, tmp_path / "art")
    assert read_manifest(tmp_path / "art")["embedding"]["fields"][0]["tiers"][0]["precision"] == "int8"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="not a sharkrec artifact"):
        save_artifact(model, data.schema, data.vocabularies, tmp_path / "other")
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
    shutil.rmtree(tmp_path / "other")


def test_field_vectors_written_in_place_equal_the_network_concat(toy_model, tmp_path):
    """ServingModel fills the sparse columns of the (B, F, D) matrix directly; same values as DLRM's concat."""
    from sharkrec.data.batch import Batch, FieldIds
    from sharkrec.errors import DataError

    model, data = toy_model
    save_artifact(compressed(model, data, "f-quant"), data.schema, data.vocabularies, tmp_path / "art")
    served = load_artifact(tmp_path / "art")
    batch = serving_batch(served, data.test.slice(0, 64), data.vocabularies)
    with torch.inference_mode():
        torch.testing.assert_close(served.field_vectors(batch), served.network.field_vectors(batch), atol=0, rtol=0)
        torch.testing.assert_close(served(batch), served.network(batch), atol=0, rtol=0)
    short = Batch(batch.dense[:3], tuple(FieldIds(ids.values[:2]) if ids.offsets is None else ids
                                         for ids in batch.sparse), batch.labels[:3])
    with pytest.raises(DataError, match="dense rows but sparse fields"):
        served.predict_proba(short)


def test_the_folder_compress_wrote_is_accepted_as_the_artifact(toy_model, tmp_path):
    model, data = toy_model
    run = tmp_path / "comp"  # what `sharkrec compress --out comp` writes: comp/artifact/ beside model.pt
    save_artifact(model, data.schema, data.vocabularies, run / "artifact")
    by_artifact, by_run = sharkrec.load(run / "artifact"), sharkrec.load(run)
    batch = next(data.test.batches(64))
    assert torch.equal(by_artifact.predict_proba(serving_batch(by_artifact, batch, data.vocabularies)),
                       by_run.predict_proba(serving_batch(by_run, batch, data.vocabularies)))
    with pytest.raises(CheckpointError, match=r"has no manifest\.json"):
        sharkrec.load(tmp_path)  # a folder without an artifact in it
