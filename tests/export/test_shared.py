"""The serving cache: tables memory-mapped from one file score exactly like a plain load, the cache is built
once, reused, rebuilt when damaged, and str keys are found byte for byte even when fingerprints collide."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sharkrec.cluster import Saec, SaecConfig
from sharkrec.errors import CheckpointError
from sharkrec.export import load_artifact, save_artifact
from sharkrec.export.records import RecordEncoder
from sharkrec.export.shared import SortedKeys, StrKeys, fingerprint, read_mapped
from sharkrec.prune import PrunedEmbedding

ROWS = [
    {"user": "u1", "city": "paris", "tags": ["t1", "t3"], "age": 31},
    {"user": "u0", "city": "lima", "tags": [], "age": None},
    {"user": "never-seen", "city": "oslo", "tags": "t2|t5", "age": 44.5},
    {"user": 7, "city": None},
    {"user": "u3", "city": "", "tags": "?", "age": "?"},
]


def scores(model, rows):
    return model.predict_proba(RecordEncoder(model).encode(rows)).numpy()


def cache_files(folder):
    return sorted(p for p in folder.iterdir() if p.suffix == ".safetensors")


def test_mapped_str_keys_and_multi_hot_score_like_a_plain_load(artifact_path, tmp_path):
    plain = load_artifact(artifact_path)
    mapped = load_artifact(artifact_path, cache_dir=tmp_path)
    np.testing.assert_array_equal(scores(mapped, ROWS), scores(plain, ROWS))
    assert mapped.embedding.embedding_bytes() == plain.embedding.embedding_bytes()
    vocabulary = mapped.vocabularies["user"]
    assert vocabulary.lookup is not None and vocabulary.lookup.texts is not None  # no hash table, no str objects
    assert isinstance(vocabulary.keys, StrKeys) and "_index" not in vocabulary.__dict__
    # every known key and unknown ones: the same slot as the hash table gives
    keys = [*np.asarray(plain.vocabularies["user"].keys), "u999", "", "never"]
    np.testing.assert_array_equal(vocabulary.slots(keys), plain.vocabularies["user"].slots(keys))
    (file,) = cache_files(tmp_path)
    tensors, _ = read_mapped(file)
    assert torch.equal(tensors["pools.int8"], mapped.embedding._pools.int8)  # the pools are the file's bytes


@pytest.mark.parametrize("kind", ["plain", "clustered+f-quant+pruned"])
def test_int_keys_clustered_fields_and_the_cache_is_built_once(toy_model, tmp_path, kind):
    model, data = toy_model
    if kind != "plain":  # key -> slot arrays (clustered), tiers, and a pruned field's constant
        model = model.with_embedding(PrunedEmbedding.wrap(model.embedding, {"b": torch.full((8,), 0.25)}))
        model = Saec(SaecConfig(rows_ratio=0.3)).fit(model, data).transform(
            model, quantize="f-quant", tier_fractions=(0.3, 0.3, 0.4)).eval()
    save_artifact(model, data.schema, data.vocabularies, tmp_path / "art")
    plain = load_artifact(tmp_path / "art")
    cache = tmp_path / "cache"
    first = load_artifact(tmp_path / "art", cache_dir=cache)
    (file,) = cache_files(cache)
    stamp = file.stat().st_mtime_ns
    second = load_artifact(tmp_path / "art", cache_dir=cache)
    assert file.stat().st_mtime_ns == stamp  # reused, not rebuilt
    rows = [{"a": 1, "b": 2, "x0": 0.5}, {"a": "3", "b": 4.0}, {"a": 10**9, "b": "-1"}, {"a": "abc"}]
    for got in (first, second):
        np.testing.assert_array_equal(scores(got, rows), scores(plain, rows))
    keys = np.asarray(plain.vocabularies["a"].keys)
    probe = np.concatenate([keys, [-5, 10**12]]).astype(object)
    np.testing.assert_array_equal(first.vocabularies["a"].slots(probe), plain.vocabularies["a"].slots(probe))


def test_a_damaged_cache_is_rebuilt(artifact_path, tmp_path):
    load_artifact(artifact_path, cache_dir=tmp_path)
    (file,) = cache_files(tmp_path)
    raw = bytearray(file.read_bytes())
    raw[-1] ^= 0xFF  # one byte of the pools flipped
    file.write_bytes(bytes(raw))
    again = load_artifact(artifact_path, cache_dir=tmp_path)
    np.testing.assert_array_equal(scores(again, ROWS), scores(load_artifact(artifact_path), ROWS))
    assert file.read_bytes() != bytes(raw)


def test_an_unwritable_cache_folder_is_a_one_line_error(artifact_path, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(CheckpointError) as error:
        load_artifact(artifact_path, cache_dir=blocker / "cache")
    assert "--cache-dir" in str(error.value) and "\n" not in str(error.value)


def test_equal_fingerprints_are_told_apart_by_their_bytes():
    texts = ["alpha", "beta", "gamma"]
    blob = np.frombuffer("".join(texts).encode(), dtype=np.uint8)
    keys = StrKeys(blob, np.array([0, 5, 9, 14], dtype=np.int64))
    collide = fingerprint("beta")
    # three entries with beta's fingerprint, gamma and alpha first: only the bytes tell beta apart; a text
    # whose fingerprint is not there is absent without a comparison
    lookup = SortedKeys(np.array([collide] * 3, dtype=np.int64), np.array([2, 0, 1], dtype=np.int64), keys)
    assert lookup.find_texts(["beta", "alpha", "delta"]).tolist() == [1, -1, -1]
    impostor = SortedKeys(np.array([collide] * 2, dtype=np.int64), np.array([2, 0], dtype=np.int64), keys)
    assert impostor.find_texts(["beta"]).tolist() == [-1]  # same fingerprint, other bytes: not beta
    sorted_keys, order = SortedKeys.build(keys)
    real = SortedKeys(sorted_keys, order, keys)
    assert real.find_texts([*texts, "zeta"]).tolist() == [0, 1, 2, -1]
    assert list(keys) == texts and np.asarray(keys).tolist() == texts


def test_int_lookup_on_an_empty_vocabulary():
    lookup = SortedKeys(np.zeros(0, np.int64), np.zeros(0, np.int64))
    assert lookup.find(np.array([1, 2])).tolist() == [-1, -1]
