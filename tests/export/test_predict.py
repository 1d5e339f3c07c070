"""predict_file: scores equal the in-memory model's, bad lines are skipped or stop the run, output is atomic."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from sharkrec.data.encode import encode_rows, parse_rows
from sharkrec.data.formats.tabular import read_delimited
from sharkrec.errors import ConfigError, DataError
from sharkrec.export import load_artifact, predict_file, save_artifact
from tests.export.conftest import CSV_SCHEMA, write_csv


@pytest.fixture(scope="module")
def served(csv_model, tmp_path_factory):
    model, data = csv_model
    path = tmp_path_factory.mktemp("art") / "art"
    save_artifact(model, data.schema, data.vocabularies, path)
    return load_artifact(path), path


def expected_scores(csv_model, path):
    """The in-memory model's probabilities for the good rows of a CSV file, with their line numbers."""
    model, data = csv_model
    parsed, _ = parse_rows(read_delimited(path, CSV_SCHEMA), CSV_SCHEMA)
    split = encode_rows(parsed, CSV_SCHEMA, data.vocabularies)
    return parsed.line_numbers, model.predict_proba(split.slice(0, len(split))).numpy()


def read_output(path):
    lines = path.read_text().splitlines()
    assert lines[0] == "line\tclick"
    table = np.loadtxt(lines[1:], delimiter="\t", ndmin=2)
    return table[:, 0].astype(int), table[:, 1:]


@pytest.mark.parametrize("chunk_rows", [7, 100000])
def test_scores_equal_the_in_memory_model(csv_model, served, tmp_path, chunk_rows):
    source = write_csv(tmp_path / "new.csv", 230, seed=5)
    report = predict_file(served[1], source, tmp_path / "out.tsv", chunk_rows=chunk_rows)  # format from the schema
    lines, scores = read_output(tmp_path / "out.tsv")
    want_lines, want = expected_scores(csv_model, source)
    assert report.rows == 230 and report.bad_lines == 0
    np.testing.assert_array_equal(lines, want_lines)
    np.testing.assert_allclose(scores, want, atol=1e-6)


def test_labels_may_be_absent_and_input_gzipped(csv_model, served, tmp_path):
    with_labels = write_csv(tmp_path / "a.csv", 50, seed=3)
    without = write_csv(tmp_path / "b.csv", 50, seed=3, label=False)
    gz = tmp_path / "b.csv.gz"
    gz.write_bytes(gzip.compress(without.read_bytes()))
    predict_file(served[0], with_labels, tmp_path / "a.tsv", "csv", chunk_rows=16)
    predict_file(served[0], gz, tmp_path / "b.tsv", "csv", chunk_rows=16)
    assert (tmp_path / "a.tsv").read_text() == (tmp_path / "b.tsv").read_text()


def corrupt(path):
    lines = path.read_text().splitlines()
    lines[3] = "u1,paris,t1"  # too few columns (line 4)
    lines[10] = "u2,oslo,t2,not-a-number,1"  # bad dense value (line 11)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bad_lines_are_skipped_and_counted(served, tmp_path):
    source = corrupt(write_csv(tmp_path / "in.csv", 40, seed=1))
    report = predict_file(served[0], source, tmp_path / "out.tsv", "csv", chunk_rows=6)
    lines, _ = read_output(tmp_path / "out.tsv")
    assert report.bad_lines == 2 and report.first_bad_lines == (4, 11) and report.rows == 38
    assert 4 not in lines and 11 not in lines and len(lines) == 38


def test_bad_line_error_leaves_no_output(served, tmp_path):
    source = corrupt(write_csv(tmp_path / "in.csv", 40, seed=1))
    out = tmp_path / "out.tsv"
    with pytest.raises(DataError, match="line 4") as exc:
        predict_file(served[0], source, out, "csv", on_bad_line="error", chunk_rows=6)
    assert "\n" not in str(exc.value)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]


def test_failure_after_scored_chunks_leaves_no_partial_output(served, tmp_path):
    """Chunks before the bad line were already scored and written: the output still never appears,
    and an older output file at that path is left as it was."""
    source = write_csv(tmp_path / "in.csv", 40, seed=1)
    lines = source.read_text().splitlines()
    lines[35] = "u9,rome,t1,not-a-number,0"  # line 36, in the 6th chunk of 6 rows
    source.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.tsv"
    out.write_text("previous results\n")
    with pytest.raises(DataError, match="line 36"):
        predict_file(served[0], source, out, "csv", on_bad_line="error", chunk_rows=6)
    assert out.read_text() == "previous results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "out.tsv"]


def test_unusable_inputs_are_clear_errors(served, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        predict_file(served[0], tmp_path / "missing.csv", tmp_path / "out.tsv", "csv")
    (tmp_path / "junk.csv").write_text("user,city,tags,age\nonly-one-column\n")
    with pytest.raises(DataError, match="no valid rows"):
        predict_file(served[0], tmp_path / "junk.csv", tmp_path / "out.tsv", "csv")
    with pytest.raises(ConfigError, match="predict reads formats"):
        predict_file(served[0], tmp_path / "junk.csv", tmp_path / "out.tsv", "movielens")
    assert not (tmp_path / "out.tsv").exists()


def test_criteo_without_labels(tmp_path):
    """The criteo reader path: 39-column lines (no label) get a placeholder label."""
    from sharkrec.data.formats.criteo import criteo_schema
    from sharkrec.export.predict import _chunks

    row = "\t".join(["3"] * 13 + ["68fd1e64"] * 26)
    (tmp_path / "test.txt").write_text(f"{row}\n\n{row}\n")
    tables = list(_chunks("criteo", tmp_path / "test.txt", criteo_schema(), 2))
    assert [t.line_numbers.tolist() for t in tables] == [[1], [3]]
    assert torch.tensor(tables[0].frame["label"].tolist()).eq(0).all()
