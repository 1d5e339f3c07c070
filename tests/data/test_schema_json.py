"""Schema JSON files that cannot be read (too deep, too large, not UTF-8, absurd numbers): one-line SchemaErrors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sharkrec.data.schema import FieldKind, FieldSpec, Schema
from sharkrec.errors import SchemaError

REPO = Path(__file__).resolve().parents[2]


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message and message
    return message


@pytest.mark.parametrize("text, fragment", [
    ("[" * 100_000 + "]" * 100_000, "too deeply"),
    ('{"fields": ' + "[" * 5000 + "]" * 5000 + "}", "too deeply"),
    ('{"fields": [], "name": ' + "9" * 5000 + "}", "not valid JSON"),
    ("{\"fields\": \"\xff\"}", "UTF-8"),
], ids=["deep", "deep-value", "long-number", "not-utf8"])
def test_unreadable_schema_json_is_a_one_line_schema_error(tmp_path, text, fragment):
    path = tmp_path / "schema.json"
    path.write_bytes(text.encode("latin-1") if "\xff" in text else text.encode())
    with pytest.raises(SchemaError, match=fragment) as exc:
        Schema.load(path)
    assert "schema.json" in _one_line(exc)


def test_oversized_schema_is_refused_before_reading(tmp_path):
    path = tmp_path / "schema.json"
    with open(path, "wb") as handle:
        handle.truncate(65 << 20)  # sparse: no 65 MiB written
    with pytest.raises(SchemaError, match="MiB") as exc:
        Schema.load(path)
    _one_line(exc)


def test_a_good_schema_still_round_trips(tmp_path):
    schema = Schema((FieldSpec("c", FieldKind.SPARSE), FieldSpec("y", FieldKind.LABEL)), name="tiny")
    schema.save(tmp_path / "schema.json")
    assert Schema.load(tmp_path / "schema.json") == schema


def test_cli_prepare_with_a_deep_schema_is_a_one_line_error(tmp_path):
    (tmp_path / "schema.json").write_text("[" * 100_000 + "]" * 100_000)
    (tmp_path / "data.csv").write_text("y,c\n1,a\n0,b\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    result = subprocess.run(
        [sys.executable, "-m", "sharkrec.cli", "prepare", "--format", "csv", "--data", str(tmp_path / "data.csv"),
         "--schema", str(tmp_path / "schema.json"), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "too deeply" in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
