"""benchmarks/frontier.py on a small synthetic log: valid records, honest bytes, unreachable targets, resume."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import frontier  # noqa: E402

REQUIRED = {"method", "dataset", "seed", "compression", "test_auc", "test_auc_base", "target_ratio", "bytes",
            "seconds", "note"}
ARGS = ["--quick", "--datasets", "synthetic", "--seeds", "0", "--methods", "sharkrec", "hashing", "qr",
        "--ratios", "2", "50", "--synthetic-rows", "10000"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("frontier") / "frontier.json"
    frontier.main([*ARGS, "--out", str(out)])
    return out, json.loads(out.read_text())


def test_one_record_per_method_and_ratio_with_the_issue_keys(run: tuple[Path, list[dict]]) -> None:
    _, records = run
    assert {(r["method"], r["target_ratio"]) for r in records} == {
        (m, r) for m in ("sharkrec", "hashing", "qr") for r in (2.0, 50.0)}
    assert len(records) == 6
    for record in records:
        assert set(record) >= REQUIRED
        assert record["dataset"] == "synthetic" and record["seed"] == 0
        assert 0.5 < record["test_auc_base"] <= 1.0


def test_reached_targets_hold_at_most_the_budget(run: tuple[Path, list[dict]]) -> None:
    _, records = run
    reached = [r for r in records if r["test_auc"] is not None]
    assert {r["method"] for r in reached if r["target_ratio"] == 2.0} == {"sharkrec", "hashing", "qr"}
    for record in reached:
        assert record["bytes"] <= record["target_bytes"]
        assert record["compression"] == pytest.approx(record["fp32_bytes"] / record["bytes"])
        assert record["compression"] >= record["target_ratio"] * 0.999
        assert 0.5 < record["test_auc"] <= 1.0


def test_the_hashing_map_cannot_reach_50x_and_says_why(run: tuple[Path, list[dict]]) -> None:
    _, records = run
    (hashing,) = [r for r in records if r["method"] == "hashing" and r["target_ratio"] == 50.0]
    assert hashing["test_auc"] is None and hashing["compression"] is None
    assert hashing["note"].startswith("unreachable:") and "4 B per value" in hashing["note"]


def test_a_rerun_skips_finished_records_and_writes_the_table_and_plot(run: tuple[Path, list[dict]],
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out, records = run
    frontier.main([*ARGS, "--out", str(out)])
    assert json.loads(out.read_text()) == records  # nothing recomputed, nothing lost
    assert "seed 0: base test AUC" not in capsys.readouterr().out  # the base model was not trained again
    table = out.with_suffix(".md").read_text()
    assert "| hashing |" in table and "unreachable" in table
    assert out.with_name("frontier_synthetic.png").stat().st_size > 0
