"""prepare_data: splits, vocabularies, encoding, bad-line policy, cache, and the real datasets."""

from __future__ import annotations

import gzip
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from sharkrec.data.cache import CACHE_VERSION
from sharkrec.data.encode import MISSING_VALUE, signed_log1p
from sharkrec.data.prepare import check_split, prepare_data
from sharkrec.data.schema import FieldKind, FieldSpec, Schema
from sharkrec.data.sources import split_of
from sharkrec.data.vocab import OOV_ROW
from sharkrec.errors import ConfigError, DataError

SCHEMA = Schema(
    (
        FieldSpec("click", FieldKind.LABEL, column="y"),
        FieldSpec("x", FieldKind.DENSE),
        FieldSpec("c", FieldKind.SPARSE),
    ),
    name="tiny",
)


def write_csv(path: Path, rows: list[tuple[object, object, object]], header: str = "y,x,c") -> Path:
    path.write_text(header + "\n" + "".join(f"{y},{x},{c}\n" for y, x, c in rows), encoding="utf-8")
    return path


def criteo_line(label: str = "0", dense: str = "1", sparse: str = "68fd1e64") -> str:
    return "\t".join([label, *[dense] * 13, *[sparse] * 26])


def dense_of(split) -> list[float]:
    return split.dense[:, 0].tolist()


# ---------------------------------------------------------------------------------------------- splits


def test_single_file_is_split_by_row_order(tmp_path):
    path = write_csv(tmp_path / "d.csv", [(i % 2, i, f"v{i}") for i in range(20)])
    data = prepare_data("csv", path, SCHEMA, split=(0.7, 0.2, 0.1))
    assert data.report["rows"] == {"train": 14, "valid": 4, "test": 2}
    expected = signed_log1p(np.arange(20, dtype=np.float64)[:, None])[:, 0]
    assert dense_of(data.train) == pytest.approx(expected[:14].tolist())
    assert dense_of(data.valid) == pytest.approx(expected[14:18].tolist())
    assert dense_of(data.test) == pytest.approx(expected[18:].tolist())


@pytest.mark.parametrize("split", [(0.8, 0.1), (0.8, 0.2, 0.0), (0.9, 0.2, -0.1), (0.5, 0.3, 0.3), ("a", 1, 1)])
def test_bad_split_fractions_are_config_errors(split):
    with pytest.raises(ConfigError, match="sum to 1"):
        check_split(split)


def test_too_few_rows_for_a_split(tmp_path):
    path = write_csv(tmp_path / "d.csv", [(1, 1, "a"), (0, 2, "b")])
    with pytest.raises(DataError, match="split is empty"):
        prepare_data("csv", path, SCHEMA)


def test_folder_with_train_dev_test_files(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "README.md").write_text("not data")
    write_csv(folder / "train.csv", [(1, i, "a") for i in range(5)])
    with gzip.open(folder / "dev.csv.gz", "wt") as handle:
        handle.write("y,x,c\n0,100,b\n")
    write_csv(folder / "test.csv", [(0, 200, "c"), (1, 300, "a")])
    data = prepare_data("csv", folder, SCHEMA)
    assert data.report["rows"] == {"train": 5, "valid": 1, "test": 2}
    assert data.report["split_rule"] == "files"
    assert dense_of(data.valid) == pytest.approx([math.log1p(100)])


def test_folder_with_train_and_test_carves_valid_from_the_end_of_train(tmp_path):
    folder = tmp_path / "adult_like"
    folder.mkdir()
    write_csv(folder / "adult.data", [(i % 2, i, "a") for i in range(20)])
    write_csv(folder / "adult.test", [(1, 99, "b")] * 3)
    data = prepare_data("csv", folder, SCHEMA, split=(0.7, 0.1, 0.2))  # valid takes split[1] of the train file
    assert data.report["rows"] == {"train": 18, "valid": 2, "test": 3}
    assert dense_of(data.valid) == pytest.approx([math.log1p(18), math.log1p(19)])
    assert data.report["split_rule"] == "files; valid is the last 10% of the train file rows"


@pytest.mark.parametrize(
    ("name", "split"),
    [("train.txt.gz", "train"), ("adult.data", "train"), ("frappe.train.libfm", "train"), ("dev.csv", "valid"),
     ("validation.csv", "valid"), ("criteo_val.tsv", "valid"), ("adult.test.gz", "test"), ("Test-2.csv", "test"),
     ("notes.csv", None), ("contest.csv", None)],
)
def test_split_of_file_names(name, split):
    assert split_of(name) == split


def test_folder_with_one_file_is_that_file(tmp_path):
    folder = tmp_path / "frappe"
    folder.mkdir()
    write_csv(folder / "frappe.validation.csv", [(i % 2, i, "a") for i in range(10)])
    (folder / "README.md").write_text("docs")
    data = prepare_data("csv", folder, SCHEMA)
    assert data.report["rows"] == {"train": 8, "valid": 1, "test": 1}


def test_folder_without_split_names_or_train_file(tmp_path):
    folder = tmp_path / "two"
    folder.mkdir()
    write_csv(folder / "a.csv", [(1, 1, "a")])
    write_csv(folder / "b.csv", [(1, 1, "a")])
    with pytest.raises(DataError, match="none is named train"):
        prepare_data("csv", folder, SCHEMA)
    (folder / "a.csv").rename(folder / "test.csv")
    (folder / "b.csv").rename(folder / "valid.csv")
    with pytest.raises(DataError, match="no train file"):
        prepare_data("csv", folder, SCHEMA)


# ---------------------------------------------------------------------------------------------- vocabulary, encoding


def test_vocabulary_is_fitted_on_train_only_hottest_first_with_oov(tmp_path):
    # train: b x3 (2 positive), a x2 (1 positive), c x1 (0 positive); valid/test hold unseen "z"
    train = [(1, 0, "b"), (1, 0, "a"), (0, 0, "b"), (1, 0, "b"), (0, 0, "a"), (0, 0, "c")]
    path = write_csv(tmp_path / "d.csv", [*train, *[(0, 0, "z")] * 2, (1, 0, "a"), (0, 0, "b")])
    data = prepare_data("csv", path, SCHEMA, split=(0.6, 0.2, 0.2))
    vocabulary = data.vocabularies["c"]
    assert vocabulary.keys_.tolist() == ["b", "a", "c"]
    assert vocabulary.counts_.tolist() == [0, 3, 2, 1]
    assert vocabulary.positive_counts_.tolist() == [0, 2, 1, 0]
    assert data.train.column(0).values.tolist() == [1, 2, 1, 1, 2, 3]
    assert data.valid.column(0).values.tolist() == [OOV_ROW, OOV_ROW]
    assert data.test.column(0).values.tolist() == [2, 1]
    assert data.report["oov_share"]["valid"]["c"] == 1.0
    assert data.report["vocabulary_sizes"] == {"c": 4}

    rare = prepare_data("csv", path, SCHEMA, split=(0.6, 0.2, 0.2), min_count=2)
    assert rare.vocabularies["c"].keys_.tolist() == ["b", "a"]
    assert rare.vocabularies["c"].counts_.tolist() == [1, 3, 2]  # "c" fell into the OOV row
    assert rare.train.column(0).values.tolist() == [1, 2, 1, 1, 2, OOV_ROW]
    assert rare.report["oov_share"]["train"]["c"] == pytest.approx(1 / 6)


def test_given_vocabularies_encode_new_data_with_the_model_rows(tmp_path):
    first = prepare_data("csv", write_csv(tmp_path / "a.csv", [(1, 0, "a"), (0, 0, "b"), (1, 0, "a")] * 4), SCHEMA)
    other = write_csv(tmp_path / "b.csv", [(0, 0, "b"), (0, 0, "new"), (1, 0, "b")] * 4)
    data = prepare_data("csv", other, SCHEMA, vocabularies=first.vocabularies, cache_dir=tmp_path / "cache")
    assert data.vocabularies["c"].keys_.tolist() == ["a", "b"]
    assert data.train.column(0).values.tolist()[:3] == [2, OOV_ROW, 2]
    assert data.report["vocabulary_source"] == "given"
    again = prepare_data("csv", other, SCHEMA, vocabularies=first.vocabularies, cache_dir=tmp_path / "cache")
    assert again.report["cache"] == "hit"
    assert prepare_data("csv", other, SCHEMA, cache_dir=tmp_path / "cache").report["cache"] == "miss"
    with pytest.raises(ConfigError, match="the schema the model was trained with"):
        prepare_data("csv", other, SCHEMA, vocabularies={"d": first.vocabularies["c"]})


def test_vocabulary_is_deterministic(tmp_path):
    rng = np.random.default_rng(0)
    rows = [(int(rng.integers(2)), 0, f"v{rng.zipf(1.5) % 50}") for _ in range(300)]
    path = write_csv(tmp_path / "d.csv", rows)
    first = prepare_data("csv", path, SCHEMA)
    second = prepare_data("csv", path, SCHEMA)
    assert first.vocabularies["c"].keys_.tolist() == second.vocabularies["c"].keys_.tolist()
    assert torch.equal(first.test.batch(torch.arange(30)).sparse[0].values,
                       second.test.batch(torch.arange(30)).sparse[0].values)
    counts = first.vocabularies["c"].counts_[1:]
    assert (np.diff(counts) <= 0).all()  # hottest first


def test_dense_transform_is_signed_log1p_with_missing_as_zero(tmp_path):
    path = write_csv(tmp_path / "d.csv", [(0, -3, "a"), (1, "", "a"), (0, 0, "a"), (1, 1e6, "a"), (0, "?", "a")] * 2)
    data = prepare_data("csv", path, SCHEMA, split=(0.5, 0.2, 0.3))
    assert dense_of(data.train) == pytest.approx([-math.log1p(3), 0.0, 0.0, math.log1p(1e6), 0.0])
    assert data.report["missing_share"]["x"] == pytest.approx(0.4)


def test_multi_hot_field_and_missing_sparse_value(tmp_path):
    schema = Schema(
        (FieldSpec("y", FieldKind.LABEL), FieldSpec("c", FieldKind.SPARSE), FieldSpec("tags", FieldKind.SPARSE,
                                                                                       separator="|")),
    )
    path = tmp_path / "d.csv"
    path.write_text("y,c,tags\n1,,a|b\n0,k,\n1,k,b\n0,k,b|c\n1,k,a\n")
    data = prepare_data("csv", path, schema, split=(0.6, 0.2, 0.2))
    tags = data.train.column(1)
    assert tags.offsets.tolist() == [0, 2, 2, 3]
    assert data.vocabularies["tags"].keys_.tolist() == ["b", "a"]
    assert data.vocabularies["tags"].positive_counts_.tolist() == [0, 2, 1]
    assert MISSING_VALUE in data.vocabularies["c"].keys_.tolist()


# ---------------------------------------------------------------------------------------------- bad lines


def test_bad_lines_are_skipped_and_reported(tmp_path):
    lines = [criteo_line("1"), criteo_line("0", dense="x"), "a\tb", *[criteo_line("0")] * 7, criteo_line("3")]
    path = tmp_path / "day.txt"
    path.write_text("\n".join(lines) + "\n")
    data = prepare_data("criteo", path)
    assert sum(data.report["rows"].values()) == 8
    bad = data.report["bad_lines"]
    assert bad["count"] == 3
    assert bad["first_line_numbers"] == {str(path): [2, 3, 11]}
    assert bad["reasons"] == {"column_count": 1, "dense": 1, "label": 1}


def test_on_bad_line_error_names_file_and_line(tmp_path):
    lines = [criteo_line("1")] * 4 + [criteo_line("0", dense="x")] + [criteo_line("0")] * 5
    path = tmp_path / "day.txt"
    path.write_text("\n".join(lines))
    with pytest.raises(DataError, match=rf"data file {path} line 5: dense field 'I1' value 'x' is not a number"):
        prepare_data("criteo", path, on_bad_line="error")
    with pytest.raises(ConfigError, match="on_bad_line"):
        prepare_data("criteo", path, on_bad_line="warn")


def test_empty_only_bad_and_missing_inputs(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match="is empty"):
        prepare_data("csv", empty, SCHEMA)
    header_only = tmp_path / "header.csv"
    header_only.write_text("y,x,c\n")
    with pytest.raises(DataError, match="is empty"):
        prepare_data("csv", header_only, SCHEMA)
    only_bad = write_csv(tmp_path / "bad.csv", [(5, 1, "a"), (7, 2, "b")])
    with pytest.raises(DataError, match=r"no valid rows: all 2 lines are malformed \(line 2"):
        prepare_data("csv", only_bad, SCHEMA)
    with pytest.raises(DataError, match="does not exist"):
        prepare_data("csv", tmp_path / "missing.csv", SCHEMA)


def test_unknown_format_and_schema_rules(tmp_path):
    path = write_csv(tmp_path / "d.csv", [(1, 1, "a")] * 10)
    with pytest.raises(ConfigError, match="not known"):
        prepare_data("excel", path, SCHEMA)
    with pytest.raises(ConfigError, match="synthetic"):
        prepare_data("synthetic", path)
    with pytest.raises(ConfigError, match="--schema"):
        prepare_data("csv", path)
    with pytest.raises(ConfigError, match="min_count"):
        prepare_data("csv", path, SCHEMA, min_count=0)


# ---------------------------------------------------------------------------------------------- cache


def assert_same_data(a, b) -> None:
    for name in ("train", "valid", "test"):
        left, right = a.split(name), b.split(name)
        assert torch.equal(left.dense, right.dense) and torch.equal(left.labels, right.labels)
        for field_index in range(left.num_sparse):
            lc, rc = left.column(field_index), right.column(field_index)
            assert np.array_equal(lc.values, rc.values)
            assert (lc.offsets is None) == (rc.offsets is None)
            if lc.offsets is not None:
                assert np.array_equal(lc.offsets, rc.offsets)
    for field in a.vocabularies:
        assert a.vocabularies[field].keys_.tolist() == b.vocabularies[field].keys_.tolist()
        assert a.vocabularies[field].keys_.dtype == b.vocabularies[field].keys_.dtype
        assert np.array_equal(a.vocabularies[field].counts_, b.vocabularies[field].counts_)
        assert np.array_equal(a.vocabularies[field].positive_counts_, b.vocabularies[field].positive_counts_)


def test_cache_hit_returns_identical_data(tmp_path):
    schema = Schema((FieldSpec("y", FieldKind.LABEL), FieldSpec("x", FieldKind.DENSE),
                     FieldSpec("tags", FieldKind.SPARSE, separator="|")))
    path = tmp_path / "d.csv"
    path.write_text("y,x,tags\n" + "".join(f"{i % 2},{i},t{i % 3}|t{i % 5}\n" for i in range(40)))
    cache = tmp_path / "cache"
    first = prepare_data("csv", path, schema, cache_dir=cache)
    second = prepare_data("csv", path, schema, cache_dir=cache)
    assert first.report["cache"] == "miss"
    assert second.report["cache"] == "hit"
    assert second.report["rows"] == first.report["rows"]
    assert_same_data(first, second)
    assert CACHE_VERSION >= 1
    assert len(list(cache.iterdir())) == 1
    # a different setting or different bytes is a different entry
    assert prepare_data("csv", path, schema, cache_dir=cache, min_count=2).report["cache"] == "miss"
    path.write_text(path.read_text().replace("t1|", "t9|"))
    assert prepare_data("csv", path, schema, cache_dir=cache).report["cache"] == "miss"


def test_corrupted_cache_entry_is_rebuilt(tmp_path):
    path = write_csv(tmp_path / "d.csv", [(i % 2, i, f"v{i % 4}") for i in range(30)])
    cache = tmp_path / "cache"
    first = prepare_data("csv", path, SCHEMA, cache_dir=cache)
    (entry,) = cache.iterdir()
    blob = bytearray(entry.read_bytes())
    blob[len(blob) // 2 : len(blob) // 2 + 64] = b"\0" * 64
    entry.write_bytes(bytes(blob))
    rebuilt = prepare_data("csv", path, SCHEMA, cache_dir=cache)
    assert rebuilt.report["cache"] == "rebuilt"
    assert_same_data(first, rebuilt)
    assert prepare_data("csv", path, SCHEMA, cache_dir=cache).report["cache"] == "hit"
    entry.write_bytes(b"")
    assert prepare_data("csv", path, SCHEMA, cache_dir=cache).report["cache"] == "rebuilt"


# ---------------------------------------------------------------------------------------------- real data


def unchanged(folder: Path):
    return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.iterdir()}


@pytest.mark.realdata
def test_real_frappe(frappe_path):
    before = unchanged(frappe_path)
    data = prepare_data("libfm", frappe_path)
    assert sum(data.report["rows"].values()) == 57_722
    assert data.schema.sparse_names == ("user", "item", "daytime", "weekday", "isweekend", "homework", "cost",
                                        "weather", "country", "city")
    labels = torch.cat([data.train.labels, data.valid.labels, data.test.labels])
    assert labels.mean().item() == pytest.approx(19_063 / 57_722, abs=1e-6)
    assert data.report["bad_lines"]["count"] == 0
    assert data.cardinalities["item"] <= 4_083
    assert unchanged(frappe_path) == before


@pytest.mark.realdata
def test_real_criteo_folder(criteo_path):
    data = prepare_data("criteo", criteo_path)
    assert data.report["rows"] == {"train": 7200, "valid": 409, "test": 391}
    assert data.report["bad_lines"]["count"] == 0
    assert data.train.dense.shape == (7200, 13) and data.num_tasks == 1
    assert data.report["positive_share"]["train"]["label"] == pytest.approx(0.215, abs=0.002)
    assert data.report["missing_share"]["I12"] == pytest.approx(0.777, abs=0.01)
    assert 0 < data.report["oov_share"]["test"]["C3"] < 1
    assert data.train.dense.min() < 0  # I2 has negative values


@pytest.mark.realdata
def test_real_movielens_time_order_and_genres(movielens_path):
    data = prepare_data("movielens", movielens_path)
    assert data.report["rows"] == {"train": 80_000, "valid": 10_000, "test": 10_000}
    genres = data.schema.sparse_names.index("genres")
    bags = np.diff(data.train.column(genres).offsets)
    assert bags.max() > 1 and bags.min() >= 0
    assert data.vocabularies["genres"].num_rows == 20  # 19 genres + OOV
    assert data.vocabularies["age"].num_rows == 8
    share = data.report["positive_share"]
    total = (share["train"]["label"] * 80_000 + share["valid"]["label"] * 10_000 + share["test"]["label"] * 10_000)
    assert total / 100_000 == pytest.approx(0.554, abs=0.001)


@pytest.mark.realdata
def test_real_movielens_rows_are_sorted_by_time(movielens_path):
    from sharkrec.data.readers import movielens_schema, read_raw

    table = read_raw("movielens", movielens_path, movielens_schema())
    timestamps = table.frame["timestamp"].to_numpy()
    assert len(table) == 100_000 and (np.diff(timestamps) >= 0).all()


@pytest.mark.realdata
def test_real_adult_two_labels(adult_path):
    schema = Schema.load(Path(__file__).resolve().parents[2] / "examples" / "schemas" / "adult.json")
    data = prepare_data("csv", adult_path, schema)
    assert data.report["rows"]["test"] == 16_281
    assert data.report["rows"]["train"] + data.report["rows"]["valid"] == 32_561
    assert data.num_tasks == 2
    labels = torch.cat([data.train.labels, data.valid.labels]).mean(0)
    assert labels[0].item() == pytest.approx(0.241, abs=0.002)
    assert labels[1].item() == pytest.approx(0.328, abs=0.002)
    assert data.report["missing_share"]["workclass"] > 0.05
    assert MISSING_VALUE in data.vocabularies["workclass"].keys_.tolist()


def test_inputs_are_never_written(tmp_path):
    path = write_csv(tmp_path / "d.csv", [(i % 2, i, "a") for i in range(20)])
    os.chmod(path, 0o444)
    before = path.read_bytes()
    prepare_data("csv", path, SCHEMA, cache_dir=tmp_path / "cache")
    assert path.read_bytes() == before
