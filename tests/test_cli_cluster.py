"""``sharkrec cluster`` end to end: a loadable clustered model, bytes both ways, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_cli import SMALL, assert_one_line_error, run_cli


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli-cluster") / "run"
    result = run_cli("train", "--format", "synthetic", "--data", SMALL, "--out", str(out), "--epochs", "3",
                     "--quiet", "--batch-size", "256", "--optimizer", "adagrad", "--lr", "0.05")
    assert result.returncode == 0, result.stderr
    return out / "model.pt"


def test_cluster_writes_a_loadable_model_and_report(trained, tmp_path):
    out = tmp_path / "clustered"
    result = run_cli("cluster", "--model", str(trained), "--format", "synthetic", "--data", SMALL, "--out", str(out),
                     "--rows-ratio", "0.1", "--fine-tune-steps", "5", "--quantize", "int8")
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    memory = report["memory"]
    assert memory["rows_compression"] == pytest.approx(memory["rows_before"] / memory["cluster_rows"])
    assert 9.0 <= memory["rows_compression"] <= 10.5
    assert memory["bytes_map_as_index"] == memory["bytes_map_folded_into_vocabulary"] + memory["map_index_bytes"]
    assert memory["map_index_bytes"] == memory["value_rows"] * 4
    assert report["quantize"] == {"precision": "int8"} and report["fine_tune"]["steps"] == 5
    assert "rows " in result.stdout and "(map as index)" in result.stdout
    evaluated = run_cli("evaluate", "--model", str(out / "model.pt"), "--format", "synthetic", "--data", SMALL,
                        "--out", str(tmp_path / "eval"))
    assert evaluated.returncode == 0, evaluated.stderr
    again = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert again["metrics"]["test"]["click"]["auc"] == pytest.approx(report["metrics"]["test"]["click"]["auc"],
                                                                     abs=1e-9)


@pytest.mark.parametrize(("args", "fragment"), [
    (("--rows-ratio", "1.5"), "rows_ratio is 1.5"),
    ((), "give exactly one budget"),
    (("--rows-ratio", "0.5", "--fields", "C1,C99"), "fields ['C99'] are not in the model's tables"),
    (("--target-bytes", "10"), "a budget of 0 rows cannot hold the model"),
    (("--rows-ratio", "0.5", "--method", "lsh"), "unknown cluster method 'lsh'"),
])
def test_bad_options_are_one_line_errors_and_write_nothing(trained, tmp_path, args, fragment):
    out = tmp_path / "bad"
    result = run_cli("cluster", "--model", str(trained), "--format", "synthetic", "--data", SMALL, "--out", str(out),
                     "--fine-tune-steps", "0", *args)
    assert_one_line_error(result, fragment)
    assert not out.exists()


def test_cluster_then_export_then_predict_on_csv(tmp_path):
    """sharkrec cluster → export → predict: the artifact's scores equal the clustered model's, unknown values too."""
    import numpy as np

    from sharkrec.data.encode import encode_rows, parse_rows
    from sharkrec.data.formats.tabular import read_delimited
    from sharkrec.train.checkpoint import load_model
    from tests.export.conftest import CSV_SCHEMA, write_csv

    data = write_csv(tmp_path / "shop.csv", 1500, seed=0)
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(CSV_SCHEMA.to_dict()))
    common = ("--format", "csv", "--data", str(data), "--schema", str(schema))
    trained = run_cli("train", *common, "--out", str(tmp_path / "run"), "--epochs", "2", "--quiet", "--tune", "off")
    assert trained.returncode == 0, trained.stderr
    clustered = run_cli("cluster", "--model", str(tmp_path / "run" / "model.pt"), *common, "--out",
                        str(tmp_path / "cl"), "--rows-ratio", "0.3", "--fine-tune-steps", "0", "--quantize", "int8")
    assert clustered.returncode == 0, clustered.stderr
    exported = run_cli("export", "--model", str(tmp_path / "cl" / "model.pt"), "--out", str(tmp_path / "art"))
    assert exported.returncode == 0, exported.stderr
    assert "key -> slot arrays" in exported.stdout
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert manifest["version"] == 2 and manifest["memory"]["key_slot_bytes"] > 0
    unseen = write_csv(tmp_path / "new.csv", 120, seed=7)
    with unseen.open("a") as handle:
        handle.write("u999,atlantis,t1|t99,40,0\nu1,paris,,,1\n")  # unknown user, city and tag; empty bag
    scored = run_cli("predict", "--model", str(tmp_path / "art"), "--input", str(unseen),
                     "--output", str(tmp_path / "scores.tsv"))
    assert scored.returncode == 0, scored.stderr
    lines = (tmp_path / "scores.tsv").read_text().splitlines()
    assert lines[0] == "line\tclick" and len(lines) == 123
    got = np.loadtxt(lines[1:], delimiter="\t", ndmin=2)[:, 1]
    bundle = load_model(tmp_path / "cl" / "model.pt")
    parsed, _ = parse_rows(read_delimited(unseen, bundle.schema), bundle.schema)
    split = encode_rows(parsed, bundle.schema, bundle.vocabularies)
    want = bundle.model.eval().predict_proba(split.slice(0, len(split))).numpy()[:, 0]
    np.testing.assert_allclose(got, want, atol=1e-5)
