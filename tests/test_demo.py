import json

from rich.console import Console

from sharkrec.demo import run_demo


def test_demo_trains_scores_fields_and_writes_its_report(tmp_path):
    report = run_demo(tmp_path, rows=40_000, seed=1, console=Console(quiet=True))
    written = json.loads((tmp_path / "report.json").read_text())
    assert written["command"] == "demo"
    auc = written["metrics"]["test"]["click"]["auc"]
    assert 0.6 < auc <= written["ground_truth"]["teacher_test_auc"] + 0.02  # cannot beat the teacher by much
    importance = written["importance"]
    assert set(importance["scores"]) == set(report["importance"]["scores"])
    assert importance["spearman_vs_truth"] > 0.3
    assert (tmp_path / "model.pt").is_file()
    compressed = written["compress"]
    assert compressed["bytes"]["share_of_fp32"] <= 0.3 and compressed["trainings"] == 1
    assert compressed["artifact_memory"]["embedding_bytes"] <= 0.35 * compressed["bytes"]["fp32"]
    assert compressed["metrics"]["test"]["click"]["auc"] > 0.6
    assert (tmp_path / "compressed" / "manifest.json").is_file()
