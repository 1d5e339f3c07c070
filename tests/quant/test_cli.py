"""``sharkrec train --precision ...`` end to end: bytes held reported and written, model files reload exactly.

(Budgets of 0, β above 1 and infeasible budgets are covered without the CLI in test_priority.py.)"""

from __future__ import annotations

import json

import pytest

from sharkrec.data.loading import load_data
from sharkrec.train.checkpoint import load_model
from sharkrec.train.run import evaluate_bundle
from tests.test_cli import SMALL, assert_one_line_error, run_cli

TRAIN = ("train", "--format", "synthetic", "--data", SMALL, "--epochs", "1", "--quiet", "--optimizer", "adagrad",
         "--lr", "0.05", "--batch-size", "256")


@pytest.mark.parametrize(("precision", "options", "at_most"), [
    ("fp16", (), 0.6),
    ("int8", (), 0.45),
    ("int4", (), 0.35),
    ("f-quant", ("--memory-budget", "0.5"), 0.5),
    ("f-quant", ("--memory-budget", "0.3", "--int4"), 0.3),
    ("mpe", ("--cache-fraction", "0.05"), 0.6),
    ("alpt", (), 0.45),
    ("random", ("--memory-budget", "0.5"), 0.5),
])
def test_train_with_a_precision_reports_bytes_held_and_reloads_exactly(tmp_path, precision, options, at_most):
    out = tmp_path / "run"
    result = run_cli(*TRAIN, "--out", str(out), "--precision", precision, *options)
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    memory = report["memory"]
    assert memory["embedding_bytes"] <= at_most * memory["embedding_bytes_fp32"]
    assert memory["embedding_bytes"] > 0.1 * memory["embedding_bytes_fp32"]
    assert report["config"]["precision"]["scheme"] == precision
    assert f"{memory['embedding_bytes']:,}" in result.stdout  # the memory report is printed
    if precision in ("f-quant", "mpe", "random", "fp16", "int8", "int4"):
        detail = memory["detail"]
        assert detail["embedding_bytes"] == memory["embedding_bytes"]
        assert detail["held_bytes"] == detail["embedding_bytes"] + detail["training_bytes"]
    bundle = load_model(out / "model.pt")  # the tiered storage as saved gives the same predictions
    data = load_data("synthetic", SMALL, vocabularies=bundle.vocabularies)
    again = evaluate_bundle(bundle, data)
    for split in ("valid", "test"):
        assert again["metrics"][split]["click"]["logloss"] == pytest.approx(
            report["metrics"][split]["click"]["logloss"], abs=1e-7)
    assert again["memory"]["embedding_bytes"] == memory["embedding_bytes"]


@pytest.mark.parametrize(("options", "fragment"), [
    (("--precision", "int3"), "unknown precision 'int3'"),
    (("--precision", "f-quant", "--t8", "5", "--t16", "1"), "t8 (5.0) must be below t16 (1.0)"),
    (("--precision", "f-quant", "--memory-budget", "1.5"), "memory budget is 1.5"),
    (("--precision", "f-quant", "--memory-budget", "0.5", "--alpha", "-1"), "alpha is -1.0"),
    (("--precision", "f-quant", "--memory-budget", "0.5", "--beta", "0"), "beta is 0.0"),
    (("--precision", "int8", "--optimizer", "adam"), "use --optimizer adagrad"),
])
def test_bad_precision_settings_are_one_line_errors_and_write_nothing(tmp_path, options, fragment):
    out = tmp_path / "run"
    args = [a for a in TRAIN if a not in ("--optimizer", "adagrad")] if "--optimizer" in options else list(TRAIN)
    result = run_cli(*args, "--out", str(out), *options)
    assert_one_line_error(result, fragment)
    assert not (out / "model.pt").exists() and not (out / "report.json").exists()
