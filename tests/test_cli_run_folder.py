"""The run folder: ``--model`` takes it, one run holds it at a time, its resume state is guarded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from sharkrec.io import LOCK_FILE, output_lock
from tests.test_cli import SMALL, assert_one_line_error, run_cli

TRAIN = ("train", "--format", "synthetic", "--data", SMALL, "--epochs", "1", "--quiet", "--tune", "off",
         "--threads", "1")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    result = run_cli(*TRAIN, "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out


def test_model_option_takes_the_run_folder(trained, tmp_path) -> None:
    by_file = run_cli("evaluate", "--model", str(trained / "model.pt"), "--format", "synthetic", "--data", SMALL,
                      "--out", str(tmp_path / "file"))
    by_folder = run_cli("evaluate", "--model", str(trained), "--format", "synthetic", "--data", SMALL,
                        "--out", str(tmp_path / "folder"))
    assert by_file.returncode == 0 and by_folder.returncode == 0, by_folder.stderr
    file_report = json.loads((tmp_path / "file" / "report.json").read_text())
    folder_report = json.loads((tmp_path / "folder" / "report.json").read_text())
    assert folder_report["metrics"] == file_report["metrics"]
    scored = run_cli("importance", "--model", str(trained), "--format", "synthetic", "--data", SMALL,
                     "--out", str(tmp_path / "scores"))
    assert scored.returncode == 0, scored.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    refused = run_cli("evaluate", "--model", str(empty), "--format", "synthetic", "--data", SMALL)
    assert_one_line_error(refused, "has no model.pt", "sharkrec train")


def test_a_second_run_into_a_held_folder_fails_naming_the_holder(tmp_path) -> None:
    out = tmp_path / "run"
    with output_lock(out, "train"):
        second = run_cli(*TRAIN, "--out", str(out))
        assert_one_line_error(second, "is in use by another sharkrec train", f"PID {os.getpid()}", "--out")
        assert not (out / "model.pt").exists() and not (out / "report.json").exists()
    assert not (out / LOCK_FILE).exists()  # released and removed on exit
    assert run_cli(*TRAIN, "--out", str(out)).returncode == 0


def test_a_killed_holder_leaves_no_lock_and_its_temporaries_are_cleaned(tmp_path) -> None:
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from sharkrec.io import output_lock\n"
         "with output_lock(sys.argv[1], 'train'):\n    print('held', flush=True); time.sleep(600)", str(out)],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    blocked = run_cli(*TRAIN, "--out", str(out))
    assert_one_line_error(blocked, f"PID {holder.pid}")
    (out / "checkpoints").mkdir()
    stale = out / "checkpoints" / ".last.pt.k2j4h5.tmp"  # what kill -9 during an atomic save leaves
    stale.write_bytes(b"half a checkpoint")
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    time.sleep(0.1)
    after = run_cli(*TRAIN, "--out", str(out))
    assert after.returncode == 0, after.stderr
    assert not stale.exists()
    assert [p.name for p in (out / "checkpoints").iterdir() if p.name.endswith(".tmp")] == []


def test_resume_with_a_truncated_best_checkpoint_is_a_one_line_error(tmp_path) -> None:
    out = tmp_path / "run"
    assert run_cli(*TRAIN, "--out", str(out)).returncode == 0
    best = out / "checkpoints" / "best.pt"
    best.write_bytes(best.read_bytes()[: best.stat().st_size // 2])
    resumed = run_cli(*TRAIN, "--out", str(out), "--resume")
    assert_one_line_error(resumed, "best.pt", "corrupted or truncated", "without --resume")


def test_resume_with_another_thread_count_is_refused(tmp_path) -> None:
    out = tmp_path / "run"
    assert run_cli(*TRAIN, "--out", str(out)).returncode == 0
    other = run_cli(*TRAIN[:-1], "2", "--out", str(out), "--resume")  # TRAIN ends with --threads 1
    assert_one_line_error(other, "1 thread(s), this one 2", "--threads 1")
    same = run_cli(*TRAIN, "--out", str(out), "--resume")
    assert same.returncode == 0, same.stderr


def test_f_quantization_trains_with_no_optimizer_flag(tmp_path) -> None:
    out = tmp_path / "fq"
    result = run_cli("train", "--format", "synthetic", "--data", SMALL, "--epochs", "1", "--quiet", "--tune", "off",
                     "--precision", "f-quant", "--memory-budget", "0.5", "--out", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["train"]["optimizer"] == "adagrad"
    assert report["memory"]["embedding_bytes"] <= 0.5 * report["memory"]["embedding_bytes_fp32"] + 1
