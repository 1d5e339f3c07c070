"""Parquet dataset folders (Spark/Hive layout): partitions as splits, ranks reading their own files, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sharkrec.data.mapped import load_prepared_dir
from sharkrec.data.parquet_dir import open_dataset, parse_selection
from sharkrec.data.prepare import prepare_data
from sharkrec.data.schema import FieldKind, FieldSpec, Schema
from sharkrec.data.sources import SPLITS
from sharkrec.data.stream import prepare_stream
from sharkrec.errors import ConfigError, DataError
from tests.ranks import run_ranks

SCHEMA = Schema(
    (
        FieldSpec("click", FieldKind.LABEL),
        FieldSpec("price", FieldKind.DENSE),
        FieldSpec("item", FieldKind.SPARSE),
        FieldSpec("user", FieldKind.SPARSE),
    ),
    name="shop",
)
SELECTIONS = {"train": "day<=2", "valid": "day==3", "test": "day==4"}


def day_frame(day: int, rows: int = 400) -> pd.DataFrame:
    rng = np.random.default_rng(day)
    frame = pd.DataFrame({
        "click": (rng.random(rows) < 0.3).astype(np.int64),
        "price": rng.gamma(2.0, 10.0, rows).round(1),
        "item": [f"i{v}" for v in rng.zipf(1.4, rows) % 300],
        "user": (rng.zipf(1.2, rows) % 500).astype(np.int64),
    })
    frame.loc[rng.random(rows) < 0.05, "item"] = None  # missing sparse value
    frame.loc[rng.random(rows) < 0.05, "price"] = np.nan
    return frame


def write_dataset(root: Path, days: int = 5, files_per_day: int = 2) -> dict[int, pd.DataFrame]:
    """``root/day=D/part-0000K.parquet`` as Spark writes them (plus a _SUCCESS marker), 2 row groups a file."""
    frames = {}
    for day in range(days):
        frame = day_frame(day)
        frame.loc[7, "click"] = 3  # one bad label a day
        frames[day] = frame
        folder = root / f"day={day}"
        folder.mkdir(parents=True)
        for k, part in enumerate(np.array_split(np.arange(len(frame)), files_per_day)):
            table = pa.Table.from_pandas(frame.iloc[part].reset_index(drop=True), preserve_index=False)
            pq.write_table(table, folder / f"part-{k:05d}-c000.snappy.parquet", row_group_size=120)
    (root / "_SUCCESS").write_text("")
    return frames


def assert_same(a, b) -> None:
    for name in SPLITS:
        x, y = a.split(name), b.split(name)
        assert len(x) == len(y), name
        np.testing.assert_array_equal(x.dense.numpy(), y.dense.numpy())
        np.testing.assert_array_equal(x.labels.numpy(), y.labels.numpy())
        for f in range(x.num_sparse):
            np.testing.assert_array_equal(x.column(f).values, y.column(f).values)
    for field, vocabulary in a.vocabularies.items():
        assert list(vocabulary.keys_) == list(b.vocabularies[field].keys_)
        np.testing.assert_array_equal(vocabulary.counts_, b.vocabularies[field].counts_)


def test_partitions_select_the_splits_as_the_in_memory_prepare_of_the_same_rows(tmp_path):
    frames = write_dataset(tmp_path / "logs")
    flat = tmp_path / "flat"
    flat.mkdir()
    for name, days in (("train", [0, 1, 2]), ("valid", [3]), ("test", [4])):
        pd.concat([frames[d] for d in days]).to_parquet(flat / f"{name}.parquet", index=False)
    memory = prepare_data("parquet", flat, SCHEMA)
    report = prepare_stream("parquet", tmp_path / "logs", tmp_path / "out", SCHEMA, partitions=SELECTIONS,
                            chunk_bytes=1 << 14)
    streamed = load_prepared_dir(tmp_path / "out")
    assert report["rows"] == memory.report["rows"] == {"train": 1197, "valid": 399, "test": 399}
    assert report["bad_lines"]["count"] == memory.report["bad_lines"]["count"] == 5
    assert report["sources"]["valid"] == [str(p) for p in sorted((tmp_path / "logs" / "day=3").glob("part-*"))]
    assert_same(memory, streamed)
    # no selections: every file is train, valid and test are carved by the fractions, files in partition order
    report = prepare_stream("parquet", tmp_path / "logs", tmp_path / "all", SCHEMA, chunk_bytes=1 << 14)
    assert sum(report["rows"].values()) == 1995 and report["split_rule"].startswith("fractions")


def test_partition_values_compare_as_numbers_and_ranges(tmp_path):
    root = tmp_path / "logs"
    for day in (2, 10, 11):
        (root / f"day={day}").mkdir(parents=True)
        pq.write_table(pa.Table.from_pandas(day_frame(day, 50), preserve_index=False),
                       root / f"day={day}" / "part-0.parquet")
    dataset = open_dataset(root, {"train": "day>=2&day<11", "test": "day == 11"})
    assert [p.parent.name for p in dataset.files("train")] == ["day=2", "day=10"]  # 2 before 10
    assert dataset.carved == ("valid",)
    assert parse_selection("day!=3")({"day": "4"}) and not parse_selection("day<3")({"day": "10"})


def two_rank_prepare(root: str, out: str) -> dict:
    return prepare_stream("parquet", root, out, SCHEMA, partitions=SELECTIONS, chunk_bytes=1 << 14)


def test_two_ranks_each_read_only_their_files_and_write_what_one_process_writes(tmp_path):
    write_dataset(tmp_path / "logs")
    single = prepare_stream("parquet", tmp_path / "logs", tmp_path / "one", SCHEMA, partitions=SELECTIONS,
                            chunk_bytes=1 << 14)
    reports = run_ranks(two_rank_prepare, tmp_path / "ranks", str(tmp_path / "logs"), str(tmp_path / "two"))
    files_by_rank = reports[0]["files_read_by_rank"]
    assert reports[1]["files_read_by_rank"] == files_by_rank
    all_files = sorted(str(p) for p in (tmp_path / "logs").rglob("part-*.parquet"))
    assert sorted(files_by_rank[0] + files_by_rank[1]) == all_files
    assert len(files_by_rank[0]) < len(all_files) and len(files_by_rank[1]) < len(all_files)
    # each rank reads some of every split's files
    for day in ("day=0", "day=3", "day=4"):
        assert not all(day in f for f in files_by_rank[0]) and not all(day in f for f in files_by_rank[1])
    for key in ("rows", "bad_lines", "vocabulary_sizes", "oov_share", "positive_share"):
        assert reports[0][key] == single[key], key
    assert_same(load_prepared_dir(tmp_path / "one"), load_prepared_dir(tmp_path / "two"))


def one_file_valid(root: str, out: str) -> str:
    try:
        prepare_stream("parquet", root, out, SCHEMA, partitions=SELECTIONS)
    except DataError as exc:
        return str(exc)
    return "no error"


def test_a_rank_with_no_files_is_one_line_error_and_nothing_is_written(tmp_path):
    write_dataset(tmp_path / "logs", files_per_day=1)
    for day in (3,):  # the valid day as one file of one row group: one rank would read nothing
        path = next((tmp_path / "logs" / f"day={day}").glob("*.parquet"))
        pq.write_table(pq.read_table(path), path, row_group_size=10_000)
    messages = run_ranks(one_file_valid, tmp_path / "ranks", str(tmp_path / "logs"), str(tmp_path / "out"))
    assert messages[0] == messages[1]
    assert messages[0].startswith("the valid split has 1 Parquet row group(s) for 2 ranks") and "\n" not in messages[0]
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_bad_dataset_folders_are_one_line_errors_and_write_nothing(tmp_path):
    root = tmp_path / "logs"
    write_dataset(root)
    out = tmp_path / "out"

    def fails(error, match, **kwargs):
        with pytest.raises(error, match=match) as caught:
            prepare_stream("parquet", root, out, SCHEMA, **kwargs)
        assert "\n" not in str(caught.value)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["logs"]

    fails(DataError, "matches no file .* partitions found: day=0, day=1",
          partitions={"train": "day<=2", "valid": "day==9"})
    fails(ConfigError, "selected by both train", partitions={"train": "day<=3", "valid": "day==3"})
    fails(ConfigError, "is not understood", partitions={"train": "day <== 3"})
    fails(ConfigError, "names key 'hour'", partitions={"train": "hour<3"})
    fails(ConfigError, "need one for train", partitions={"valid": "day==3"})

    (root / "day=5").mkdir()
    fails(DataError, r"partition folder .*day=5 holds no Parquet files")
    (root / "day=5").rmdir()

    other = day_frame(6)
    other["price"] = other["price"].astype(str)  # one file with another column type
    (root / "day=6").mkdir()
    pq.write_table(pa.Table.from_pandas(other, preserve_index=False), root / "day=6" / "part-00000.parquet")
    fails(DataError, r"day=6/part-00000.parquet has columns \[price: string\] but "
                     r".*day=0/part-00000-c000.snappy.parquet has \[price: double\]; "
                     "rewrite the dataset with one schema")


def test_one_parquet_file_streams_as_it_reads_in_memory(tmp_path):
    frame = pd.concat([day_frame(d) for d in range(3)]).reset_index(drop=True)
    frame.loc[11, "click"] = 2
    path = tmp_path / "log.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path, row_group_size=250)
    memory = prepare_data("parquet", path, SCHEMA, min_count=2)
    report = prepare_stream("parquet", path, tmp_path / "out", SCHEMA, min_count=2, chunk_bytes=1 << 15)
    assert report["bad_lines"] == memory.report["bad_lines"]  # row 12 of the file, named as in memory
    assert report["rows"] == memory.report["rows"]
    assert_same(memory, load_prepared_dir(tmp_path / "out"))


def test_cli_prepares_a_partitioned_dataset_and_trains_on_it(tmp_path):
    from typer.testing import CliRunner

    from sharkrec.cli import app

    write_dataset(tmp_path / "logs")
    schema = tmp_path / "schema.json"
    SCHEMA.save(schema)
    runner = CliRunner()
    result = runner.invoke(app, ["prepare", "--format", "parquet", "--data", str(tmp_path / "logs"), "--schema",
                                 str(schema), "--out", str(tmp_path / "out"), "--train", "day<=2", "--valid",
                                 "day==3", "--test", "day==4", "--chunk-mb", "1"])
    assert result.exit_code == 0, result.output
    assert "rows train/valid/test: 1197/399/399; bad lines skipped: 5" in result.output
    assert (tmp_path / "out" / "prepared" / "manifest.json").is_file()
    result = runner.invoke(app, ["train", "--format", "prepared", "--data", str(tmp_path / "out"), "--out",
                                 str(tmp_path / "model"), "--epochs", "1", "--tune", "off"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["train", "--format", "parquet", "--data", str(tmp_path / "logs"), "--schema",
                                 str(schema), "--out", str(tmp_path / "model2")])
    assert result.exit_code != 0 and "is a Parquet dataset folder; prepare it once" in str(result.exception)
    result = runner.invoke(app, ["prepare", "--format", "parquet", "--data", str(tmp_path / "logs"), "--schema",
                                 str(schema), "--out", str(tmp_path / "out3"), "--train", "day<=2", "--valid",
                                 "day==2"])
    assert result.exit_code != 0 and "selected by both train" in str(result.exception)
    assert not (tmp_path / "out3").exists()
