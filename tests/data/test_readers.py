"""Readers: raw cells, 1-based line numbers of bad lines, and the schema check that follows them."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sharkrec.data.encode import MISSING_VALUE, parse_rows
from sharkrec.data.formats.criteo import COLUMNS as CRITEO_COLUMNS
from sharkrec.data.formats.libfm import FRAPPE_FIELDS
from sharkrec.data.formats.text import MAX_LINE_NUMBERS, BadLines, split_delimited
from sharkrec.data.readers import (
    DataFormat,
    OnBadLine,
    criteo_schema,
    libfm_schema,
    movielens_schema,
    read_raw,
    schema_for,
)
from sharkrec.data.schema import FieldKind, FieldSpec, Schema
from sharkrec.errors import ConfigError, DataError, SchemaError


def criteo_line(label: str = "0", dense: str = "1", sparse: str = "68fd1e64", n_dense: int = 13, n_sparse: int = 26):
    return "\t".join([label, *[dense] * n_dense, *[sparse] * n_sparse])


def write(path: Path, text: str, compress: bool = False) -> Path:
    data = text.encode("utf-8")
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


# ---------------------------------------------------------------------------------------------- criteo


@pytest.mark.parametrize("compress", [False, True])
def test_criteo_wrong_column_count_lines_are_counted_with_their_line_numbers(tmp_path, compress):
    lines = [
        criteo_line("1"),
        criteo_line("0", n_sparse=25),  # line 2: 39 columns
        criteo_line("0"),
        "",  # line 4: blank lines are ignored, not bad
        criteo_line("0", n_sparse=27),  # line 5: 41 columns
        criteo_line("1"),
    ]
    path = write(tmp_path / ("day.txt.gz" if compress else "day.txt"), "\n".join(lines) + "\n", compress)
    table = read_raw("criteo", path, criteo_schema())
    assert list(table.frame.columns) == list(CRITEO_COLUMNS)
    assert table.line_numbers.tolist() == [1, 3, 6]
    (bad,) = table.bad_lines
    assert bad.count == 2
    assert bad.first_line_numbers == (2, 5)
    assert bad.reasons == {"column_count": 2}
    assert bad.first_problem == "expected 40 tab-separated columns, found 39"


def test_criteo_non_numeric_dense_and_bad_label_are_found_by_the_schema_check(tmp_path):
    lines = [
        criteo_line("1", dense="-2"),
        criteo_line("0", dense="abc"),  # line 2: dense not a number
        criteo_line("2"),  # line 3: label not 0/1
        criteo_line("0", dense=""),  # missing dense values are fine
        criteo_line("x"),  # line 5: label not a number
    ]
    path = write(tmp_path / "day.txt", "\n".join(lines))
    table = read_raw("criteo", path, criteo_schema())
    rows, bad = parse_rows(table, criteo_schema())
    assert rows.line_numbers.tolist() == [1, 4]
    assert bad.count == 3
    assert bad.first_line_numbers == (2, 3, 5)
    assert bad.reasons == {"dense": 1, "label": 2}  # lines, not cells: all 13 dense cells of line 2 fail
    assert bad.first_problem == "dense field 'I1' value 'abc' is not a number"
    assert rows.dense[0].tolist() == [-2.0] * 13
    assert np.isnan(rows.dense[1]).all()
    assert rows.labels[:, 0].tolist() == [1.0, 0.0]


def test_criteo_missing_sparse_value_gets_its_own_value(tmp_path):
    path = write(tmp_path / "day.txt", criteo_line(sparse="") + "\n" + criteo_line(sparse="abc") + "\n")
    rows, _ = parse_rows(read_raw("criteo", path, criteo_schema()), criteo_schema())
    assert rows.sparse[0].values.tolist() == [MISSING_VALUE, "abc"]


def test_bad_lines_keep_only_the_first_twenty_line_numbers(tmp_path):
    lines = [criteo_line() if i % 2 else "short\tline" for i in range(60)]
    table = read_raw("criteo", write(tmp_path / "day.txt", "\n".join(lines)), criteo_schema())
    (bad,) = table.bad_lines
    assert bad.count == 30
    assert len(bad.first_line_numbers) == MAX_LINE_NUMBERS
    assert bad.first_line_numbers == tuple(range(1, 40, 2))


# ---------------------------------------------------------------------------------------------- libfm


def test_libfm_frappe_names_and_global_index_values(tmp_path):
    pairs = " ".join(f"{100 + j}:1" for j in range(10))
    path = write(tmp_path / "f.libfm", f"1 {pairs}\n-1 {pairs}\n")
    schema = schema_for("libfm", path)
    assert schema.sparse_names == FRAPPE_FIELDS
    rows, bad = parse_rows(read_raw("libfm", path, schema), schema)
    assert bad.count == 0
    assert rows.labels[:, 0].tolist() == [1.0, 0.0]
    assert rows.sparse[0].values.tolist() == ["100", "100"]
    assert rows.sparse[9].values.tolist() == ["109", "109"]


def test_libfm_malformed_lines(tmp_path):
    text = "\n".join([
        "1 1:1 20:1 300:1",
        "-1 1:1 20:1",  # line 2: 2 pairs
        "2 1:1 20:1 300:1",  # line 3: bad label
        "0 1:1 x:1 300:1",  # line 4: pair syntax
        "+1  4:1\t50:0.5 600:1  ",  # extra whitespace is fine
        "1 1:1 20 300:1",  # line 6: pair syntax (no colon)
    ])
    path = write(tmp_path / "f.libfm", text)
    schema = schema_for("libfm", path)
    assert schema.sparse_names == ("f1", "f2", "f3")
    table = read_raw("libfm", path, schema)
    (bad,) = table.bad_lines
    assert bad.first_line_numbers == (2, 3, 4, 6)
    assert bad.reasons == {"pair_count": 1, "label": 1, "pair_syntax": 2}
    assert bad.first_problem == "expected 3 idx:value pairs, found 2"
    assert table.line_numbers.tolist() == [1, 5]
    assert table.frame["f2"].tolist() == ["20", "50"]
    assert table.frame["label"].tolist() == ["1", "1"]


# ---------------------------------------------------------------------------------------------- movielens


def write_movielens(folder: Path, ratings: list[str], compress_data: bool = True) -> Path:
    folder.mkdir()
    write(folder / ("u.data.gz" if compress_data else "u.data"), "\n".join(ratings) + "\n", compress_data)
    write(folder / "u.user", "1|17|M|student|12345\n2|30|F|writer|T8H1N\n3|56|M|retired|99999\n")
    flags_a = ["0"] * 19
    flags_a[1] = flags_a[5] = "1"  # Action, Comedy
    flags_b = ["0"] * 19
    item_a = "|".join(["10", "A (1995)", "01-Jan-1995", "", "http://a", *flags_a])
    item_b = "|".join(["20", "Café (1997)", "", "", "http://b", *flags_b])  # no date, no genre
    (folder / "u.item").write_bytes((item_a + "\n" + item_b + "\n").encode("latin-1"))
    return folder


def test_movielens_join_time_order_and_fields(tmp_path):
    folder = write_movielens(tmp_path / "ml", [
        "1\t10\t5\t300",
        "2\t20\t3\t100",
        "3\t10\t4\t300",  # ties with line 1 at t=300: stable sort keeps file order
        "9\t10\t4\t50",  # line 4: unknown user
        "1\t20\t7\t60",  # line 5: rating out of range
        "1\t10\t4",  # line 6: 3 columns
    ])
    schema = movielens_schema()
    table = read_raw("movielens", folder, schema)
    assert table.line_numbers.tolist() == [2, 1, 3]
    frame = table.frame
    assert frame["age"].tolist() == ["25-34", "<18", "56+"]
    assert frame["zip"].tolist() == ["T8H1N", "12345", "99999"]
    assert frame["genres"].tolist() == ["", "Action|Comedy", "Action|Comedy"]
    assert frame["release_year"].tolist() == ["", "1995", "1995"]
    data_bad = table.bad_lines[0]
    assert data_bad.first_line_numbers == (4, 5, 6)
    assert data_bad.reasons == {"column_count": 1, "rating": 1, "unknown_user": 1}

    rows, _ = parse_rows(table, schema)
    assert rows.labels[:, 0].tolist() == [0.0, 1.0, 1.0]  # rating >= 4
    genres = rows.sparse[schema.sparse_names.index("genres")]
    assert genres.offsets.tolist() == [0, 0, 2, 4]  # an item without genres is an empty bag
    assert genres.values.tolist() == ["Action", "Comedy", "Action", "Comedy"]
    years = rows.sparse[schema.sparse_names.index("release_year")]
    assert years.values.tolist() == [MISSING_VALUE, "1995", "1995"]


def test_movielens_missing_file_is_named(tmp_path):
    folder = write_movielens(tmp_path / "ml", ["1\t10\t5\t300"])
    (folder / "u.user").unlink()
    with pytest.raises(DataError, match=r"lacks u\.user"):
        read_raw("movielens", folder, movielens_schema())


# ---------------------------------------------------------------------------------------------- csv / tsv / parquet


def people_schema(**overrides: object) -> Schema:
    fields = (
        FieldSpec("clicked", FieldKind.LABEL, column="outcome", positive=("yes",)),
        FieldSpec("age", FieldKind.DENSE),
        FieldSpec("city", FieldKind.SPARSE),
        FieldSpec("tags", FieldKind.SPARSE, separator=";"),
    )
    return Schema(fields, **overrides)  # type: ignore[arg-type]


def test_csv_with_header_quotes_and_whitespace(tmp_path):
    text = 'outcome,age,city,tags\nyes, 31 ,"Paris, FR",a;b\nno,?, Oslo ,\nmaybe,7,Oslo,b\n'
    path = write(tmp_path / "people.csv", text)
    schema = people_schema()
    rows, bad = parse_rows(read_raw("csv", path, schema), schema)
    assert bad.count == 0
    assert rows.line_numbers.tolist() == [2, 3, 4]
    assert rows.labels[:, 0].tolist() == [1.0, 0.0, 0.0]
    assert rows.dense[0, 0] == 31.0 and np.isnan(rows.dense[1, 0])
    assert rows.sparse[0].values.tolist() == ["Paris, FR", "Oslo", "Oslo"]
    assert rows.sparse[1].offsets.tolist() == [0, 2, 2, 3]


def test_quoted_csv_counts_physical_lines(tmp_path):
    schema = Schema((FieldSpec("y", FieldKind.LABEL), FieldSpec("note", FieldKind.SPARSE)))
    path = write(tmp_path / "q.csv", 'note,y\n"two\nlines",1\n"a",0,extra\nplain,0\n')
    table = read_raw("csv", path, schema)
    assert table.line_numbers.tolist() == [2, 5]
    assert table.bad_lines[0].first_line_numbers == (4,)
    assert table.frame["note"].tolist() == ["two\nlines", "plain"]


def test_tsv_headerless_positions_and_bad_lines(tmp_path):
    schema = Schema(
        (FieldSpec("y", FieldKind.LABEL, column=0), FieldSpec("x", FieldKind.DENSE, column=1),
         FieldSpec("c", FieldKind.SPARSE, column=2)),
        has_header=False,
    )
    path = write(tmp_path / "d.tsv", "1\t2.5\ta\n0\t3\n0\tz\tb\n1\t-4\tc\n")
    rows, bad = parse_rows(read_raw("tsv", path, schema), schema)
    table_bad = read_raw("tsv", path, schema).bad_lines[0]
    assert table_bad.first_line_numbers == (2,)
    assert bad.first_line_numbers == (3,)
    assert rows.dense[:, 0].tolist() == [2.5, -4.0]


def test_parquet_reads_typed_columns(tmp_path):
    frame = pd.DataFrame({"outcome": ["yes", "no"], "age": [31.0, None], "city": ["Paris", None], "tags": ["a", ""]})
    frame.to_parquet(tmp_path / "p.parquet")
    schema = people_schema()
    rows, bad = parse_rows(read_raw("parquet", tmp_path / "p.parquet", schema), schema)
    assert bad.count == 0
    assert rows.labels[:, 0].tolist() == [1.0, 0.0]
    assert rows.sparse[0].values.tolist() == ["Paris", MISSING_VALUE]
    assert np.isnan(rows.dense[1, 0])


def test_schema_naming_an_absent_column_lists_what_is_there(tmp_path):
    path = write(tmp_path / "people.csv", "outcome,age,town,tags\nyes,1,a,b\n")
    with pytest.raises(SchemaError, match=r"names columns \['city'\].*it has columns outcome, age, town, tags"):
        parse_rows(read_raw("csv", path, people_schema()), people_schema())


def test_empty_and_missing_files(tmp_path):
    with pytest.raises(DataError, match="is empty"):
        read_raw("criteo", write(tmp_path / "empty.txt", "\n\n"), criteo_schema())
    with pytest.raises(DataError, match="does not exist"):
        read_raw("criteo", tmp_path / "nope.txt", criteo_schema())
    broken = tmp_path / "broken.txt.gz"
    broken.write_bytes(gzip.compress(criteo_line().encode())[:-8])
    with pytest.raises(DataError, match="is not a valid gzip file"):
        read_raw("criteo", broken, criteo_schema())


# ---------------------------------------------------------------------------------------------- formats, schemas


def test_format_and_policy_names_are_checked():
    with pytest.raises(ConfigError, match="criteo, libfm, movielens, csv, tsv, parquet"):
        DataFormat.parse("xlsx")
    with pytest.raises(ConfigError, match="generated"):
        DataFormat.parse("synthetic")
    with pytest.raises(ConfigError, match="'skip' or 'error'"):
        OnBadLine.parse("ignore")


def test_schema_for_builtins_and_csv_needs_a_schema(tmp_path):
    assert len(criteo_schema().dense) == 13 and len(criteo_schema().sparse) == 26
    assert libfm_schema(3).sparse_names == ("f1", "f2", "f3")
    assert movielens_schema().field("genres").separator == "|"
    with pytest.raises(ConfigError, match="--schema"):
        schema_for("csv", tmp_path)


def test_adult_example_schema_does_not_leak_its_second_label():
    schema = Schema.load(Path(__file__).resolve().parents[2] / "examples" / "schemas" / "adult.json")
    assert schema.label_names == ("income", "never_married")
    assert "marital_status" not in schema.sparse_names
    label_columns = {spec.column for spec in schema.labels}
    assert not label_columns & {spec.column for spec in schema.sparse + schema.dense}
    assert 2 not in {spec.column for spec in schema.fields}  # fnlwgt is a sample weight


# ---------------------------------------------------------------------------------------------- splitter


@settings(max_examples=60, deadline=None)
@given(
    widths=st.lists(st.sampled_from([0, 1, 2, 3, 3, 3, 3, 4]), min_size=1, max_size=40),
    trailing_newline=st.booleans(),
    header=st.booleans(),
)
@example(widths=[4, 2], trailing_newline=False, header=False)  # separators add up, first line too wide
@example(widths=[2, 4, 3], trailing_newline=True, header=True)
def test_split_delimited_keeps_exactly_the_full_width_lines(widths, trailing_newline, header):
    lines = ["\t".join(f"r{i}c{j}" for j in range(w)) for i, w in enumerate(widths)]
    data = ("\n".join(lines) + ("\n" if trailing_newline else "")).encode()
    if not data.strip():
        return
    if header:
        table = split_delimited(b"a\tb\tc\n" + data, "mem", "\t", has_header=True)
    else:
        table = split_delimited(data, "mem", "\t", n_columns=3)
    offset = 2 if header else 1  # 1-based physical line numbers
    expected = [i + offset for i, w in enumerate(widths) if w == 3]
    assert table.line_numbers.tolist() == expected
    first_column = "a" if header else 0
    assert table.frame[first_column].tolist() == [f"r{n - offset}c0" for n in expected]
    bad = [i + offset for i, w in enumerate(widths) if w not in (0, 3)]
    assert table.bad_lines[0].count == len(bad)
    assert list(table.bad_lines[0].first_line_numbers) == bad[:MAX_LINE_NUMBERS]


def test_bad_lines_merge_keeps_the_earliest_problem():
    a = BadLines("f", 2, (5, 9), {"column_count": 2}, "late")
    b = BadLines("f", 1, (3,), {"dense": 1}, "early")
    merged = a.merge(b)
    assert merged.count == 3
    assert merged.first_line_numbers == (3, 5, 9)
    assert merged.reasons == {"column_count": 2, "dense": 1}
    assert merged.first_problem == "early"
    assert "line 3: early" in str(merged.error())
