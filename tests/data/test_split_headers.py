"""Split folders whose files differ in header lines: only train.csv has one, dev/test start with data."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from sharkrec.data.prepare import prepare_data
from sharkrec.data.schema import FieldKind, FieldSpec, Schema
from sharkrec.errors import DataError
from tests.data.avazu_like import COLUMNS, DENSE, SPARSE, write_split_folder

AVAZU = Schema(
    (
        FieldSpec("click", FieldKind.LABEL),
        *(FieldSpec(name, FieldKind.DENSE) for name in DENSE),
        *(FieldSpec(name, FieldKind.SPARSE) for name in SPARSE),
    ),
    name="avazu-like",
    delimiter=",",
)


def with_header(folder: Path, name: str, header: str = ",".join(COLUMNS)) -> None:
    path = folder / name
    path.write_text(header + "\n" + path.read_text(encoding="utf-8"), encoding="utf-8")


def test_only_train_has_a_header_line(tmp_path):
    folder = write_split_folder(tmp_path / "avazu")
    prepared = prepare_data("csv", folder, AVAZU)
    assert prepared.report["rows"] == {"train": 2400, "valid": 300, "test": 300}
    assert prepared.report["bad_lines"]["count"] == 0
    # the same rows as when every file carries the header
    headed = write_split_folder(tmp_path / "headed")
    with_header(headed, "dev.csv")
    with_header(headed, "test.csv")
    expected = prepare_data("csv", headed, AVAZU)
    for split in ("train", "valid", "test"):
        got, want = getattr(prepared, split), getattr(expected, split)
        assert np.array_equal(got.labels, want.labels)
        assert np.array_equal(got.dense, want.dense)
        for field in range(len(AVAZU.sparse)):
            assert np.array_equal(got.column(field).values, want.column(field).values)


def test_headerless_gzip_dev_and_quoted_test(tmp_path):
    folder = write_split_folder(tmp_path / "avazu")
    dev = folder / "dev.csv"
    (folder / "dev.csv.gz").write_bytes(gzip.compress(dev.read_bytes()))
    dev.unlink()
    test = folder / "test.csv"
    lines = test.read_text(encoding="utf-8").splitlines()
    quoted = [",".join(f'"{cell}"' if j == 5 else cell for j, cell in enumerate(line.split(","))) for line in lines]
    test.write_text("\n".join(quoted) + "\n", encoding="utf-8")
    prepared = prepare_data("csv", folder, AVAZU)
    assert prepared.report["rows"] == {"train": 2400, "valid": 300, "test": 300}
    assert prepared.report["bad_lines"]["count"] == 0


def test_a_header_naming_other_columns_is_a_one_line_error(tmp_path):
    renamed = ",".join("clicked" if name == "click" else name for name in COLUMNS)
    folder = write_split_folder(tmp_path / "avazu", dev_header=renamed)
    with pytest.raises(DataError) as caught:
        prepare_data("csv", folder, AVAZU)
    message = str(caught.value)
    assert "\n" not in message
    assert "dev.csv" in message and "train.csv" in message
    assert "column 2 is 'clicked'" in message and "'click'" in message
    assert "same header line, or none" in message


def test_a_header_with_other_names_everywhere_is_found_by_its_numeric_columns(tmp_path):
    folder = write_split_folder(tmp_path / "avazu", dev_header=",".join(f"f{j}" for j in range(len(COLUMNS))))
    with pytest.raises(DataError, match=r"dev\.csv starts with a header line that differs .*column 1 is 'f0'"):
        prepare_data("csv", folder, AVAZU)


def test_a_header_with_another_column_count_is_a_one_line_error(tmp_path):
    folder = write_split_folder(tmp_path / "avazu", dev_header=",".join(COLUMNS[:-1]))
    with pytest.raises(DataError, match=r"dev\.csv .*it names 23 columns, .*train\.csv names 24"):
        prepare_data("csv", folder, AVAZU)


def test_a_headerless_file_with_another_column_count_names_the_file(tmp_path):
    folder = write_split_folder(tmp_path / "avazu")
    dev = folder / "dev.csv"
    dev.write_text("".join(line.rsplit(",", 1)[0] + "\n" for line in dev.read_text().splitlines()), encoding="utf-8")
    with pytest.raises(DataError, match=r"dev\.csv has no valid rows: all 300 lines .*expected 24 comma-separated"):
        prepare_data("csv", folder, AVAZU)


def test_a_bad_first_data_line_is_a_counted_bad_line_not_a_header(tmp_path):
    folder = write_split_folder(tmp_path / "avazu")
    dev = folder / "dev.csv"
    lines = dev.read_text(encoding="utf-8").splitlines()
    cells = lines[0].split(",")
    cells[1] = "x"  # the label
    dev.write_text("\n".join([",".join(cells), *lines[1:]]) + "\n", encoding="utf-8")
    prepared = prepare_data("csv", folder, AVAZU)
    assert prepared.report["rows"]["valid"] == 299
    assert prepared.report["bad_lines"]["first_line_numbers"] == {str(dev): [1]}
