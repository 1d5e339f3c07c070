"""Schema inference (``sharkrec schema``): kinds from a bounded sample, ids left out, the written JSON trains."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest

from sharkrec.data.formats.text import read_bytes
from sharkrec.data.infer import infer_schema
from sharkrec.data.prepare import prepare_data
from sharkrec.data.schema import FieldKind, Schema
from sharkrec.errors import DataError, SchemaError
from tests.data.avazu_like import COLUMNS, DENSE, SPARSE, avazu_rows, write_split_folder
from tests.test_cli import assert_one_line_error, run_cli


def kinds(schema: Schema) -> dict[str, tuple[str, ...]]:
    return {kind.value: tuple(f.name for f in schema.fields if f.kind is kind) for kind in FieldKind}


def test_avazu_like_log(tmp_path):
    folder = write_split_folder(tmp_path / "avazu")
    inferred = infer_schema(folder / "train.csv", ["click"])
    schema = inferred.schema
    assert kinds(schema) == {"label": ("click",), "dense": DENSE, "sparse": SPARSE}
    assert schema.field("click").positive is None
    assert (schema.delimiter, schema.has_header, schema.name) == (",", True, "avazu")
    assert inferred.sampled_rows == 2400
    (left_out,) = inferred.left_out
    assert left_out.column == "id" and left_out.distinct == 2400 and "an id" in left_out.reason
    notes = {note.column: note for note in inferred.columns}
    assert "8 digits wide" in notes["hour"].reason
    assert "id (all 2400 sampled values distinct" in inferred.to_dict()["description"]
    assert Schema.from_dict(json.loads(json.dumps(inferred.to_dict()))) == schema
    # a folder means its train file
    assert infer_schema(folder, ["click"]).schema == schema


def test_sample_is_bounded(tmp_path):
    text = "".join(",".join(row) + "\n" for row in avazu_rows(3000)).encode()
    path = tmp_path / "log.csv.gz"
    path.write_bytes(gzip.compress(text * 5)[:-4000])  # the tail is cut off: reading the whole file fails
    with pytest.raises(DataError, match="not a valid gzip file"):
        read_bytes(path)
    inferred = infer_schema(path, ["1"], sample_rows=500)
    assert inferred.sampled_rows == 500
    assert not inferred.schema.has_header  # the first line is data: columns are numbered
    assert inferred.schema.field("1").column == 1 and inferred.schema.field("1").kind is FieldKind.LABEL
    assert [note.column for note in inferred.left_out] == [0]


@pytest.mark.parametrize("delimiter", [";", "|", "\t"])
def test_delimiter_and_header_are_detected(tmp_path, delimiter):
    lines = ["outcome;age;city;zip".replace(";", delimiter)]
    for i in range(300):
        outcome = "yes" if i % 3 == 0 else "no"
        city = ["Oslo", "Paris, FR", "Rome"][i % 3]
        lines.append(delimiter.join([outcome, f"{20 + i % 150}", city, f"0{1000 + i % 7}"]))
    path = tmp_path / "people.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    inferred = infer_schema(path, ["outcome"])
    schema = inferred.schema
    assert schema.delimiter == delimiter and schema.has_header
    assert schema.field("outcome").positive == ("yes",)
    assert kinds(schema) == {"label": ("outcome",), "dense": ("age",), "sparse": ("city", "zip")}
    assert "leading zeros" in {n.column: n for n in inferred.columns}["zip"].reason
    # the inferred schema reads the file
    schema_path = tmp_path / "schema.json"
    schema_path.write_text(json.dumps(inferred.to_dict()), encoding="utf-8")
    prepared = prepare_data("csv", path, Schema.load(schema_path))
    assert prepared.report["bad_lines"]["count"] == 0
    assert sum(prepared.report["rows"].values()) == 300


def test_two_valued_labels_get_positive(tmp_path):
    frame = pd.DataFrame({
        "y": [-1, 1, -1, -1] * 50,
        "clicked": ["no", "no", "no", "maybe"] * 50,
        "tier": ["gold", "silver", "gold", "gold"] * 50,
        "x": [float(i) / 7 for i in range(200)],
    })
    path = tmp_path / "t.parquet"
    frame.to_parquet(path)
    inferred = infer_schema(path, ["y", "clicked"])
    schema = inferred.schema
    assert schema.field("y").positive == ("1",)  # the larger number
    assert schema.field("clicked").positive == ("maybe",)  # the rarer value
    assert "rarer" in {n.column: n for n in inferred.columns}["clicked"].reason
    assert kinds(schema) == {"label": ("y", "clicked"), "dense": ("x",), "sparse": ("tier",)}
    assert schema.delimiter is None


def test_label_errors_name_the_columns(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a,b,c\n" + "".join(f"{i % 3},{i},x{i % 5}\n" for i in range(50)), encoding="utf-8")
    with pytest.raises(SchemaError, match=r"\['click'\] are not columns of .*d\.csv; its columns: a, b, c"):
        infer_schema(path, ["click"])
    with pytest.raises(SchemaError, match=r"label column 'a' .* has 3 distinct values .*must be binary"):
        infer_schema(path, ["a"])


def test_cli_schema_then_train_on_a_folder_whose_dev_and_test_have_no_header(tmp_path):
    folder = write_split_folder(tmp_path / "avazu")
    schema_path = tmp_path / "schema.json"
    result = run_cli("schema", "--data", str(folder / "train.csv"), "--label", "click", "--out", str(schema_path))
    assert result.returncode == 0, result.stderr
    summary = {line.split()[0]: line.split()[1] for line in result.stdout.splitlines()[1:25]}
    assert summary["id"] == "left" and summary["click"] == "label" and summary["C21"] == "dense"
    assert "1 label, 2 dense, 20 sparse fields" in result.stdout
    written = json.loads(schema_path.read_text())
    assert "id" not in [field["name"] for field in written["fields"]]
    assert kinds(Schema.from_dict(written)) == {"label": ("click",), "dense": DENSE, "sparse": SPARSE}

    out = tmp_path / "run"
    trained = run_cli("train", "--format", "csv", "--schema", str(schema_path), "--data", str(folder),
                      "--out", str(out), "--epochs", "1", "--tune", "off", "--quiet")
    assert trained.returncode == 0, trained.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["bad_lines"]["count"] == 0
    assert report["data"]["rows"] == {"train": 2400, "valid": 300, "test": 300}
    assert 0.0 < report["metrics"]["test"]["click"]["auc"] <= 1.0


def test_cli_one_line_errors(tmp_path):
    folder = write_split_folder(tmp_path / "avazu", dev_header=",".join(COLUMNS[:-1]))
    result = run_cli("schema", "--data", str(folder), "--label", "clik", "--out", str(tmp_path / "s.json"))
    assert_one_line_error(result, "['clik']", "its columns: id, click, hour")
    assert not (tmp_path / "s.json").exists()
    inferred = run_cli("schema", "--data", str(folder), "--label", "click", "--out", str(tmp_path / "s.json"))
    assert inferred.returncode == 0, inferred.stderr
    trained = run_cli("train", "--format", "csv", "--schema", str(tmp_path / "s.json"), "--data", str(folder),
                      "--out", str(tmp_path / "run"), "--epochs", "1", "--quiet")
    assert_one_line_error(trained, "dev.csv", "header line that differs", "it names 23 columns", "train.csv")


def test_cli_writes_schema_json_in_the_working_folder_by_default(tmp_path):
    write_split_folder(tmp_path / "avazu")
    result = run_cli("schema", "--data", "avazu", "--label", "click", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert Path(tmp_path / "schema.json").is_file()


def test_cli_never_overwrites_an_edited_schema_without_force(tmp_path):
    write_split_folder(tmp_path / "avazu")
    edited = tmp_path / "schema.json"
    edited.write_text('{"edited": true}')
    refused = run_cli("schema", "--data", "avazu", "--label", "click", cwd=tmp_path)
    assert_one_line_error(refused, "exists", "--force")
    assert edited.read_text() == '{"edited": true}'
    replaced = run_cli("schema", "--data", "avazu", "--label", "click", "--force", cwd=tmp_path)
    assert replaced.returncode == 0, replaced.stderr
    assert "fields" in json.loads(edited.read_text())
