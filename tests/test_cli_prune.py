"""``sharkrec importance`` and ``sharkrec prune`` end to end: outputs, loadable pruned model, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_cli import SMALL, assert_one_line_error, run_cli


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli-prune") / "run"
    result = run_cli("train", "--format", "synthetic", "--data", SMALL, "--out", str(out), "--epochs", "3",
                     "--quiet", "--batch-size", "256", "--optimizer", "adagrad", "--lr", "0.05")
    assert result.returncode == 0, result.stderr
    return out / "model.pt"


def test_importance_writes_scores_and_a_chart(trained, tmp_path):
    out = tmp_path / "imp"
    result = run_cli("importance", "--model", str(trained), "--format", "synthetic", "--data", SMALL,
                     "--method", "permutation", "--repeats", "2", "--batch-size", "128", "--out", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    fields = ["dense", "C1", "C2", "C3", "C4", "C5", "C6"]
    assert set(report["scores"]) == set(fields) and set(report["std"]) == set(fields)
    assert report["method"] == "permutation" and report["samples"] == 600 and report["passes"] > 1
    assert report["seconds"] > 0
    assert (out / "importance.png").read_bytes()[:4] == b"\x89PNG"
    assert report["ranking"][0] in result.stdout


def test_prune_writes_a_loadable_model_plan_and_history(trained, tmp_path):
    out = tmp_path / "pruned"
    result = run_cli("prune", "--model", str(trained), "--format", "synthetic", "--data", SMALL, "--out", str(out),
                     "--target-memory", "0.5", "--t-accuracy", "0.5", "--fine-tune-steps", "5")
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    plan = json.loads((out / "plan.json").read_text())
    assert report["plan"] == plan and len(plan["removed"]) >= 1
    assert report["memory"]["embedding_bytes"] <= 0.5 * report["memory"]["embedding_bytes_before"] + 1e-9 or (
        report["stopped_because"].startswith("target memory"))
    assert report["memory"]["embedding_bytes"] / report["memory"]["embedding_bytes_before"] >= 0.5
    assert [h["step"] for h in report["history"]] == list(range(len(report["history"])))
    assert report["history"][0]["removed"] == [] and report["history"][1]["removed"] == plan["removed"][:1]
    assert (out / "pruning_curve.png").read_bytes()[:4] == b"\x89PNG"
    evaluated = run_cli("evaluate", "--model", str(out / "model.pt"), "--format", "synthetic", "--data", SMALL,
                        "--out", str(tmp_path / "eval"))
    assert evaluated.returncode == 0, evaluated.stderr
    again = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert again["metrics"]["test"]["click"]["auc"] == pytest.approx(report["metrics"]["test"]["click"]["auc"],
                                                                     abs=1e-9)
    assert again["memory"]["embedding_bytes"] == report["memory"]["embedding_bytes"]


@pytest.mark.parametrize(("args", "fragment"), [
    (("--target-memory", "1.5"), "target memory 1.5 must be in (0, 1)"),
    (("--target-memory", "0.5", "--t-accuracy", "1.5"), "T_accuracy 1.5 must be in (0, 1]"),
])  # unknown field names: --keep C99 below, --fields in the importance case; the rest in tests/prune
def test_prune_bad_input_is_a_one_line_error_and_writes_nothing(trained, tmp_path, args, fragment):
    out = tmp_path / "o"
    result = run_cli("prune", "--model", str(trained), "--format", "synthetic", "--data", SMALL, "--out", str(out),
                     *args)
    assert_one_line_error(result, fragment)
    assert not out.exists() or not any(out.iterdir())


def test_model_that_does_not_match_the_data(trained, tmp_path):
    other = "rows=3000,num_sparse=5,num_dense=3,max_cardinality=500,seed=1"
    out = tmp_path / "o"
    result = run_cli("prune", "--model", str(trained), "--format", "synthetic", "--data", other, "--out", str(out),
                     "--target-memory", "0.5")
    assert_one_line_error(result, "schema")
    result = run_cli("prune", "--model", str(trained), "--format", "synthetic", "--data", SMALL, "--out", str(out),
                     "--target-memory", "0.5", "--keep", "C1,C99")
    assert_one_line_error(result, "field 'C99' is not in the model")
    result = run_cli("importance", "--model", str(trained), "--format", "synthetic", "--data", SMALL,
                     "--out", str(out), "--fields", "C1,nope")
    assert_one_line_error(result, "field 'nope' is not in the model")
    assert not out.exists() or not any(out.iterdir())


def test_compress_writes_model_artifact_and_report(trained, tmp_path):
    out = tmp_path / "compressed"
    result = run_cli("compress", "--model", str(trained), "--format", "synthetic", "--data", SMALL, "--out", str(out),
                     "--target-memory", "0.3", "--max-trainings", "1", "--fine-tune-epochs", "1")
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["bytes"]["share_of_fp32"] <= 0.3 and report["search"]["trainings"] == 1
    assert report["memory"]["embedding_bytes"] == report["bytes"]["after_quantization"]
    assert "instead of a full grid of" in result.stdout and "test AUC" in result.stdout
    assert (out / "artifact" / "manifest.json").is_file()
    evaluated = run_cli("evaluate", "--model", str(out / "model.pt"), "--format", "synthetic", "--data", SMALL,
                        "--out", str(tmp_path / "ev"))
    assert evaluated.returncode == 0, evaluated.stderr
    again = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert again["metrics"]["test"]["click"]["auc"] == pytest.approx(report["metrics"]["test"]["click"]["auc"],
                                                                     abs=1e-9)


@pytest.mark.parametrize(("args", "fragment"), [
    (("--target-memory", "0"), "target memory 0.0 must be in (0, 1]"),
    (("--max-auc-drop", "-1"), "max AUC drop -1.0 must be in [0, 1)"),
    (("--target-memory", "0.05", "--no-int4", "--tail-ratios", "none"), "no way to reach 0.05"),
    (("--keep", "C1,C99"), "fields ['C99'] are not in the model"),
])
def test_compress_bad_input_is_a_one_line_error_and_writes_nothing(trained, tmp_path, args, fragment):
    out = tmp_path / "o"
    result = run_cli("compress", "--model", str(trained), "--format", "synthetic", "--data", SMALL, "--out", str(out),
                     "--max-trainings", "1", *args)
    assert_one_line_error(result, fragment)
    assert not out.exists() or not any(out.iterdir())
