"""The command line end to end: one-line errors, non-zero exits, nothing half-written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SMALL = "rows=6000,num_sparse=6,num_dense=3,max_cardinality=500,seed=1"


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "sharkrec.cli", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode != 0
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_help_lists_commands():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("demo", "prepare", "train", "evaluate", "importance", "prune", "predict", "serve"):
        assert command in result.stdout


def test_train_then_evaluate_on_synthetic_data(tmp_path):
    out = tmp_path / "run"
    result = run_cli(
        "train",
        "--format",
        "synthetic",
        "--data",
        SMALL,
        "--out",
        str(out),
        "--epochs",
        "2",
        "--quiet",
        "--batch-size",
        "256",
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    auc = report["metrics"]["test"]["click"]["auc"]
    assert 0.6 < auc <= 1.0
    assert report["memory"]["embedding_bytes"] == report["memory"]["embedding_bytes_fp32"]
    # no lr / L2 given and small data: the settings were searched on the validation split, the best kept
    tuning = report["tuning"]
    assert len(tuning["trials"]) == 9 and tuning["selected_by"] == "validation logloss"
    best = min(tuning["trials"], key=lambda t: t["value"])
    assert tuning["chosen_settings"] == best["settings"]
    assert report["config"]["train"]["lr"] == best["settings"]["lr"]
    assert report["metrics"]["valid"]["click"]["logloss"] == pytest.approx(best["value"], abs=1e-6)
    assert report["seconds"] > 0
    evaluated = run_cli(
        "evaluate",
        "--model",
        str(out / "model.pt"),
        "--format",
        "synthetic",
        "--data",
        SMALL,
        "--out",
        str(tmp_path / "eval"),
    )
    assert evaluated.returncode == 0, evaluated.stderr
    again = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert again["metrics"]["test"]["click"]["auc"] == pytest.approx(auc, abs=1e-9)


def test_missing_data_file(tmp_path):
    result = run_cli("train", "--format", "criteo", "--data", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "o"))
    assert_one_line_error(result, "nope.txt")
    assert not (tmp_path / "o" / "report.json").exists()


def test_empty_data_file(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    result = run_cli("train", "--format", "criteo", "--data", str(empty), "--out", str(tmp_path / "o"))
    assert_one_line_error(result, "empty")
    assert not (tmp_path / "o" / "model.pt").exists()


def test_csv_without_schema(tmp_path):
    data = tmp_path / "d.csv"
    data.write_text("a,b,y\n1,2,0\n")
    result = run_cli("train", "--format", "csv", "--data", str(data), "--out", str(tmp_path / "o"))
    assert_one_line_error(result, "--schema")


def test_bad_split_and_bad_numbers(tmp_path):
    result = run_cli(
        "train", "--format", "synthetic", "--data", SMALL, "--out", str(tmp_path / "o"), "--split", "0.5,0.5"
    )
    assert_one_line_error(result, "three fractions")
    result = run_cli("train", "--format", "synthetic", "--data", SMALL, "--out", str(tmp_path / "o"), "--lr", "-1")
    assert_one_line_error(result, "learning rate")
    result = run_cli("train", "--format", "synthetic", "--data", "rows=100,bogus=3", "--out", str(tmp_path / "o"))
    assert_one_line_error(result, "bogus")


def test_evaluate_with_corrupted_or_mismatched_model(tmp_path):
    broken = tmp_path / "model.pt"
    broken.write_bytes(b"PK\x03\x04 this is not a model")
    result = run_cli("evaluate", "--model", str(broken), "--format", "synthetic", "--data", SMALL)
    assert_one_line_error(result, "corrupted or truncated")
    out = tmp_path / "run"
    trained = run_cli("train", "--format", "synthetic", "--data", SMALL, "--out", str(out), "--epochs", "1", "--quiet",
                      "--tune", "off")
    assert trained.returncode == 0, trained.stderr
    other = "rows=3000,num_sparse=5,num_dense=3,max_cardinality=500,seed=1"
    result = run_cli("evaluate", "--model", str(out / "model.pt"), "--format", "synthetic", "--data", other)
    assert_one_line_error(result, "schema")


def test_resume_without_state_is_an_error(tmp_path):
    result = run_cli("train", "--format", "synthetic", "--data", SMALL, "--out", str(tmp_path / "o"), "--resume")
    assert_one_line_error(result, "nothing to resume")


def test_unknown_format_is_rejected(tmp_path):
    result = run_cli("train", "--format", "xml", "--data", "x", "--out", str(tmp_path))
    assert result.returncode != 0
    assert "xml" in result.stderr and "Traceback" not in result.stderr


def test_train_export_predict_on_csv(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    n = 3000
    a = rng.integers(0, 30, n)
    x = rng.normal(size=n)
    y = (rng.random(n) < 1 / (1 + np.exp(-((a % 3) - 1.0) * 2 - x))).astype(int)
    lines = ["a,x,y"] + [f"v{ai},{xi:.4f},{yi}" for ai, xi, yi in zip(a, x, y, strict=True)]
    data = tmp_path / "clicks.csv"
    data.write_text("\n".join(lines) + "\n")
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"fields": [{"name": "a", "kind": "sparse"}, {"name": "x", "kind": "dense"},
                                             {"name": "y", "kind": "label"}]}))
    trained = run_cli("train", "--format", "csv", "--data", str(data), "--schema", str(schema),
                      "--out", str(tmp_path / "run"), "--epochs", "3", "--quiet", "--batch-size", "128",
                      "--tune", "off")
    assert trained.returncode == 0, trained.stderr
    exported = run_cli("export", "--model", str(tmp_path / "run" / "model.pt"), "--out", str(tmp_path / "art"))
    assert exported.returncode == 0, exported.stderr
    unseen = tmp_path / "new.csv"
    unseen.write_text("a,x\nv3,0.5\nnever-seen,1.0\nv4,not-a-number\n")
    scored = run_cli("predict", "--model", str(tmp_path / "art"), "--input", str(unseen),
                     "--output", str(tmp_path / "scores.tsv"))
    assert scored.returncode == 0, scored.stderr
    rows = (tmp_path / "scores.tsv").read_text().strip().splitlines()
    assert rows[0].split("\t") == ["line", "y"]
    assert len(rows) == 3  # the malformed dense value is skipped and counted
    assert all(0.0 < float(r.split("\t")[1]) < 1.0 for r in rows[1:])
    assert "bad lines skipped: 1" in scored.stdout
