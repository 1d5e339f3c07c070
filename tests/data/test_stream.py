"""Streaming preparation of Criteo text: equal to the in-memory prepare, bounded chunks, atomic output."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from sharkrec.data.mapped import MappedSplit, load_prepared_dir
from sharkrec.data.prepare import prepare_data
from sharkrec.data.sources import SPLITS
from sharkrec.data.stream import prepare_stream
from sharkrec.errors import ConfigError, DataError

REPORT_KEYS = ("rows", "bad_lines", "split_rule", "vocabulary_sizes")
SHARE_KEYS = ("oov_share", "missing_share", "positive_share")  # the same shares, summed in another order


def messy_criteo(rows: int, seed: int = 0) -> str:
    """Criteo text with what real logs hold: missing cells ('' and '?'), negative counts, a few float counts,
    and bad lines of every kind the reader knows (wrong width, non-numeric dense, label 3), plus blank lines."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(rows):
        dense = [str(int(v)) for v in rng.integers(-3, 400, 13)]
        for j in np.flatnonzero(rng.random(13) < 0.1):
            dense[j] = "" if rng.random() < 0.8 else "?"
        sparse = [f"{int(v):08x}" for v in (rng.zipf(1.3, 26) % 5000)]
        for j in np.flatnonzero(rng.random(26) < 0.05):
            sparse[j] = "" if rng.random() < 0.8 else "?"
        label = str(int(rng.random() < 0.3))
        kind = rng.random()
        if kind < 0.004:
            lines.append("\t".join([label, *dense[:5]]))  # too few columns
        elif kind < 0.007:
            dense[2] = "abc"
        elif kind < 0.009:
            label = "3"
        elif kind < 0.011:
            lines.append("")
        elif kind < 0.013:
            dense[0] = "2.5"
        if not (kind < 0.004):
            lines.append("\t".join([label, *dense, *sparse]))
        del i
    return "\n".join(lines) + "\n"


def assert_same_as_memory(memory, streamed, report) -> None:
    for name in SPLITS:
        a, b = memory.split(name), streamed.split(name)
        assert isinstance(b, MappedSplit)
        assert len(a) == len(b)
        np.testing.assert_array_equal(a.dense.numpy(), b.dense.numpy())
        np.testing.assert_array_equal(a.labels.numpy(), b.labels.numpy())
        for f in range(a.num_sparse):
            np.testing.assert_array_equal(a.column(f).values, b.column(f).values)
    for field, vocabulary in memory.vocabularies.items():
        other = streamed.vocabularies[field]
        assert list(vocabulary.keys_) == list(other.keys_)
        np.testing.assert_array_equal(vocabulary.counts_, other.counts_)
        np.testing.assert_array_equal(vocabulary.positive_counts_, other.positive_counts_)
        assert vocabulary.min_count == other.min_count
    for key in REPORT_KEYS:
        assert report[key] == memory.report[key], key
        assert streamed.report[key] == memory.report[key], key
    for key in SHARE_KEYS:
        assert flat(report[key]) == pytest.approx(flat(memory.report[key]), rel=1e-12, abs=0), key


def flat(shares: dict, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in shares.items():
        out.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value})
    return out


@pytest.mark.parametrize("chunk_bytes", [4096, 50_000])
@pytest.mark.parametrize("min_count", [None, 3])
def test_stream_equals_in_memory_on_a_messy_file(tmp_path, chunk_bytes, min_count):
    path = tmp_path / "train.txt"
    path.write_text(messy_criteo(3000))
    assert path.stat().st_size > 5 * chunk_bytes  # many chunks: some clean (Arrow), some with bad lines
    memory = prepare_data("criteo", path, min_count=min_count)
    report = prepare_stream("criteo", path, tmp_path / "out", min_count=min_count, chunk_bytes=chunk_bytes)
    assert report["chunks"] >= 5
    assert memory.report["bad_lines"]["count"] > 20
    assert set(memory.report["bad_lines"]["reasons"]) == {"column_count", "dense", "label"}
    assert_same_as_memory(memory, load_prepared_dir(tmp_path / "out"), report)


def test_stream_of_gzip_crlf_split_files_equals_in_memory(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    for name, seed, rows in (("train.txt.gz", 1, 2000), ("valid.txt", 2, 300)):
        text = messy_criteo(rows, seed).replace("\n", "\r\n")
        if name.endswith(".gz"):
            (folder / name).write_bytes(gzip.compress(text.encode()))
        else:
            (folder / name).write_text(text, newline="")
    memory = prepare_data("criteo", folder)
    report = prepare_stream("criteo", folder, tmp_path / "out", chunk_bytes=8192)
    assert report["split_rule"].startswith("files; test is the last")
    assert_same_as_memory(memory, load_prepared_dir(tmp_path / "out"), report)


def test_mapped_split_gives_the_in_memory_batches(tmp_path):
    path = tmp_path / "day0.txt"
    path.write_text(messy_criteo(1500, 4))
    memory = prepare_data("criteo", path)
    prepare_stream("criteo", path, tmp_path / "out", chunk_bytes=8192)
    mapped = load_prepared_dir(tmp_path / "out")
    pairs = zip(memory.train.batches(128, shuffle=True, seed=3, epoch=1),
                mapped.train.batches(128, shuffle=True, seed=3, epoch=1), strict=True)
    count = 0
    for a, b in pairs:
        count += 1
        assert torch.equal(a.dense, b.dense) and torch.equal(a.labels, b.labels)
        for x, y in zip(a.sparse, b.sparse, strict=True):
            assert torch.equal(x.values, y.values) and y.values.dtype == torch.int64
    assert count == memory.train.num_batches(128)
    shard = mapped.train.subset(np.arange(100, 300))
    assert isinstance(shard, MappedSplit) and len(shard) == 200
    assert torch.equal(shard.slice(0, 200).dense, memory.train.slice(100, 300).dense)


def test_training_on_the_mapped_split_equals_training_in_memory(tmp_path):
    from sharkrec.train.run import train_model
    from sharkrec.train.trainer import TrainConfig

    path = tmp_path / "day0.txt"
    path.write_text(messy_criteo(1200, 5))
    memory = prepare_data("criteo", path)
    prepare_stream("criteo", path, tmp_path / "out", chunk_bytes=8192)
    mapped = load_prepared_dir(tmp_path / "out")
    config = TrainConfig(epochs=1, batch_size=128, seed=0)
    options = {"embedding_dim": 4}
    model_a, report_a = train_model(memory, config, model_options=options)
    model_b, report_b = train_model(mapped, config, model_options=options)
    for (name, p), (_, q) in zip(model_a.state_dict().items(), model_b.state_dict().items(), strict=True):
        assert torch.equal(p, q), name
    assert report_a["metrics"] == report_b["metrics"]


def test_bad_lines_under_on_bad_line_error_and_empty_inputs_write_nothing(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text(messy_criteo(2000))
    with pytest.raises(DataError) as memory_error:
        prepare_data("criteo", path, on_bad_line="error")
    with pytest.raises(DataError) as stream_error:
        prepare_stream("criteo", path, tmp_path / "out", on_bad_line="error", chunk_bytes=4096)
    assert str(stream_error.value) == str(memory_error.value)
    assert "\n" not in str(stream_error.value)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="is empty"):
        prepare_stream("criteo", empty, tmp_path / "out")
    all_bad = tmp_path / "bad.txt"
    all_bad.write_text("a\tb\n" * 50)
    with pytest.raises(DataError, match="has no valid rows: all 50 lines are malformed"):
        prepare_stream("criteo", all_bad, tmp_path / "out", chunk_bytes=1024)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.txt", "empty.txt", "train.txt"]


def test_interrupted_prepare_leaves_no_partial_output_and_keeps_the_old_one(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text(messy_criteo(2000))
    out = tmp_path / "out"

    def stop_in_pass(number):
        def progress(rows, pass_number):
            if pass_number == number:
                raise KeyboardInterrupt
        return progress

    for number in (1, 2):
        with pytest.raises(KeyboardInterrupt):
            prepare_stream("criteo", path, out, chunk_bytes=4096, on_progress=stop_in_pass(number))
        assert sorted(p.name for p in tmp_path.iterdir()) == ["train.txt"]
    first = prepare_stream("criteo", path, out, chunk_bytes=4096)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(KeyboardInterrupt):
        prepare_stream("criteo", path, out, chunk_bytes=4096, min_count=2, on_progress=stop_in_pass(2))
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "train.txt"]
    prepare_stream("criteo", path, out, chunk_bytes=4096, min_count=2)  # a rerun replaces the old output
    assert load_prepared_dir(out).vocabularies["C1"].min_count == 2
    assert first["rows"] == load_prepared_dir(out).report["rows"]


def test_stream_config_errors(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text(messy_criteo(200))
    with pytest.raises(ConfigError, match="chunk size"):
        prepare_stream("criteo", path, tmp_path / "out", chunk_bytes=10)
    with pytest.raises(ConfigError, match="streaming preparation reads criteo and parquet"):
        prepare_stream("libfm", path, tmp_path / "out")
    with pytest.raises(ConfigError, match="partition selections"):
        prepare_stream("criteo", path, tmp_path / "out", partitions={"train": "day<=3"})
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        prepare_stream("criteo", path, tmp_path / "file")
    with pytest.raises(DataError, match="manifest"):
        load_prepared_dir(tmp_path)


def test_text_blocks_hold_about_chunk_bytes_and_number_lines_across_blocks(tmp_path):
    from sharkrec.data.chunks import text_blocks

    path = tmp_path / "train.txt"
    text = messy_criteo(2000, 7)
    path.write_text(text)
    blocks = list(text_blocks(path, 8192))
    longest_line = max(len(line) for line in text.split("\n")) + 1
    assert len(blocks) > 40
    assert all(len(block) <= 8192 + longest_line for block, _ in blocks)
    assert b"".join(block for block, _ in blocks) == text.encode()
    firsts = [first for _, first in blocks]
    assert firsts[0] == 1 and all(
        later == first + block.count(b"\n") for (block, first), later in zip(blocks, firsts[1:], strict=False)
    )


def test_given_vocabularies_encode_new_data_as_in_memory(tmp_path):
    old, new = tmp_path / "old.txt", tmp_path / "new.txt"
    old.write_text(messy_criteo(1500, 8))
    new.write_text(messy_criteo(800, 9))
    vocabularies = prepare_data("criteo", old, min_count=2).vocabularies
    memory = prepare_data("criteo", new, vocabularies=vocabularies)
    report = prepare_stream("criteo", new, tmp_path / "out", vocabularies=vocabularies, chunk_bytes=8192)
    assert report["vocabulary_source"] == "given"
    assert_same_as_memory(memory, load_prepared_dir(tmp_path / "out"), report)
