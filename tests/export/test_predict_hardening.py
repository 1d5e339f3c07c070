"""predict_file against hostile inputs: the input is never overwritten, paths are checked before any work,
damaged or binary inputs are one-line errors naming the user's file, and no temporary files are written."""

from __future__ import annotations

import gzip
import os
import random
import sys
import tempfile

import numpy as np
import pytest

from sharkrec import cli
from sharkrec.data.prepare import prepare_data
from sharkrec.errors import ConfigError, DataError, SharkrecError
from sharkrec.export import load_artifact, predict_file, save_artifact
from sharkrec.export.engine import ServingModel
from tests.export.conftest import CSV_SCHEMA, write_csv, write_libfm


@pytest.fixture(scope="module")
def served(csv_model, tmp_path_factory):
    model, data = csv_model
    path = tmp_path_factory.mktemp("art") / "art"
    save_artifact(model, data.schema, data.vocabularies, path)
    return load_artifact(path), path


@pytest.fixture(scope="module")
def libfm_served(libfm_model, tmp_path_factory):
    model, data = libfm_model
    path = tmp_path_factory.mktemp("libfm-art") / "art"
    save_artifact(model, data.schema, data.vocabularies, path)
    return load_artifact(path)


def assert_one_line(error: BaseException, *fragments: str) -> None:
    message = str(error)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """``sharkrec ARGS`` in this process: (exit status, stderr)."""
    monkeypatch.setattr(sys, "argv", ["sharkrec", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    return int(exit_info.value.code or 0), capsys.readouterr().err


# ----------------------------------------------------------------------------- D2: output is the input


def output_alias(kind, source, folder):
    """A path naming ``source`` (or, for ``symlink-input``, the input is the link): (input, output)."""
    if kind == "same":
        return source, source
    if kind == "dotdot":
        return source, folder / ".." / folder.name / source.name
    if kind == "symlink":
        (folder / "link.csv").symlink_to(source)
        return source, folder / "link.csv"
    if kind == "symlink-input":
        (folder / "link.csv").symlink_to(source)
        return folder / "link.csv", source
    os.link(source, folder / "hard.csv")
    return source, folder / "hard.csv"


@pytest.mark.parametrize("kind", ["same", "dotdot", "symlink", "symlink-input", "hardlink"])
def test_output_that_is_the_input_is_refused_and_the_input_kept(served, tmp_path, kind):
    folder = tmp_path / "data"
    folder.mkdir()
    source = write_csv(folder / "in.csv", 30, seed=2)
    source.chmod(0o640)
    before, mode = source.read_bytes(), source.stat().st_mode
    input_path, output_path = output_alias(kind, source, folder)
    listing = sorted(p.name for p in folder.iterdir())
    with pytest.raises(ConfigError) as exc:
        predict_file(served[1], input_path, output_path, "csv")
    assert_one_line(exc.value, str(output_path), "is the input", "--output")
    assert source.read_bytes() == before and source.stat().st_mode == mode
    assert sorted(p.name for p in folder.iterdir()) == listing  # no temporary file either


def test_same_file_is_refused_before_the_artifact_is_read(tmp_path):
    source = write_csv(tmp_path / "in.csv", 5, seed=2)
    with pytest.raises(ConfigError, match="is the input"):
        predict_file(tmp_path / "no-such-artifact", source, source, "csv")


# ----------------------------------------------------------------------------- D3: output is a folder


def test_output_folder_is_refused_before_scoring(served, tmp_path, monkeypatch):
    source = write_csv(tmp_path / "in.csv", 30, seed=2)
    folder = tmp_path / "results"
    folder.mkdir()

    def must_not_score(*args, **kwargs):
        raise AssertionError("scored rows before checking the output path")

    monkeypatch.setattr(ServingModel, "predict_proba", must_not_score)
    with pytest.raises(ConfigError) as exc:
        predict_file(served[0], source, folder, "csv")
    assert_one_line(exc.value, str(folder), "is a folder", "file path")
    assert list(folder.iterdir()) == []


def test_output_under_a_file_is_refused(served, tmp_path):
    source = write_csv(tmp_path / "in.csv", 10, seed=2)
    with pytest.raises(ConfigError) as exc:
        predict_file(served[0], source, source / "scores.tsv", "csv")
    assert_one_line(exc.value, f"lies under {source}, which is a file")


def test_cli_path_errors_are_one_line(served, tmp_path, monkeypatch, capsys):
    source = write_csv(tmp_path / "in.csv", 10, seed=2)
    before = source.read_bytes()
    for output, fragment in ((tmp_path, "is a folder"), (source, "is the input")):
        status, err = run_cli(monkeypatch, capsys, "predict", "--model", str(served[1]), "--input", str(source),
                              "--output", str(output), "--format", "csv")
        assert status == 2 and err.startswith("error: ") and err.count("\n") == 1 and fragment in err, err
    assert source.read_bytes() == before


# ----------------------------------------------------------------------------- D4: damaged gzip


def damaged_gzip(path, plain, damage):
    blob = bytearray(gzip.compress(plain))
    if damage == "truncated":
        del blob[len(blob) // 2 :]
    else:  # bytes flipped mid-stream: an invalid deflate stream or a CRC mismatch
        middle = len(blob) // 2
        blob[middle : middle + 32] = bytes(b ^ 0xFF for b in blob[middle : middle + 32])
    path.write_bytes(bytes(blob))
    return path


@pytest.mark.parametrize("damage", ["truncated", "flipped"])
def test_damaged_gzip_is_the_same_one_line_error_as_prepare(served, tmp_path, damage):
    plain = write_csv(tmp_path / "in.csv", 3000, seed=4).read_bytes()
    source = damaged_gzip(tmp_path / "in.csv.gz", plain, damage)
    out = tmp_path / "out.tsv"
    with pytest.raises(DataError) as exc:
        predict_file(served[0], source, out, "csv", chunk_rows=100)
    assert_one_line(exc.value, f"data file {source} is not a valid gzip file (", "); re-download or re-gzip it")
    with pytest.raises(DataError) as from_prepare:
        prepare_data("csv", source, CSV_SCHEMA)
    assert_one_line(from_prepare.value, f"data file {source} is not a valid gzip file (")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "in.csv.gz"]


def test_cli_truncated_gzip_is_one_line_not_aborted(served, tmp_path, monkeypatch, capsys):
    plain = write_csv(tmp_path / "in.csv", 3000, seed=4).read_bytes()
    source = damaged_gzip(tmp_path / "in.csv.gz", plain, "truncated")
    status, err = run_cli(monkeypatch, capsys, "predict", "--model", str(served[1]), "--input", str(source),
                          "--output", str(tmp_path / "out.tsv"), "--format", "csv")
    assert status == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert "not a valid gzip file" in err and "re-gzip" in err and "Aborted" not in err


# ----------------------------------------------------------------------------- binary input, temporary files


@pytest.mark.parametrize("fmt", ["csv", "libfm"])
def test_binary_garbage_error_names_the_input(served, libfm_served, tmp_path, fmt):
    garbage = bytearray(random.Random(7).randbytes(64 * 1024))
    garbage[0] = 0  # never the gzip magic
    source = tmp_path / "garbage.bin"
    source.write_bytes(bytes(garbage))
    with pytest.raises(SharkrecError) as exc:
        predict_file(served[0] if fmt == "csv" else libfm_served, source, tmp_path / "out.tsv", fmt)
    assert_one_line(exc.value, str(source))
    assert "sharkrec-predict-" not in str(exc.value) and "chunk" not in str(exc.value)


def test_predict_writes_no_temporary_files(served, tmp_path, monkeypatch):
    """Chunks are parsed in memory: nothing is written to the temp dir, so a killed run leaves nothing."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    source = write_csv(tmp_path / "in.csv", 100, seed=2)
    seen: list[list[str]] = []
    real = ServingModel.predict_proba

    def spy(self, *args, **kwargs):
        seen.append(sorted(os.listdir(scratch)))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ServingModel, "predict_proba", spy)
    report = predict_file(served[0], source, tmp_path / "out.tsv", "csv", chunk_rows=16)
    assert report.rows == 100 and len(seen) == 7
    assert all(listing == [] for listing in seen), seen
    assert os.listdir(scratch) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "out.tsv", "tmp"]


# ----------------------------------------------------------------------------- D1: very wide libFM lines


def read_scores(path):
    table = np.loadtxt(path.read_text().splitlines()[1:], delimiter="\t", ndmin=2)
    return table[:, 0].astype(int), table[:, 1:]


@pytest.mark.parametrize("chunk_rows", [1, 4, 65536])
def test_a_20000_pair_line_is_one_bad_line(libfm_served, tmp_path, chunk_rows):
    source = write_libfm(tmp_path / "in.libfm", 12, seed=3, label=False)
    lines = source.read_text().splitlines()
    wide = tmp_path / "wide.libfm"
    wide.write_text("\n".join([*lines[:5], " ".join(f"{j}:1" for j in range(20_000)), *lines[5:]]) + "\n")
    report = predict_file(libfm_served, wide, tmp_path / "wide.tsv", chunk_rows=chunk_rows)
    assert (report.rows, report.bad_lines, report.first_bad_lines) == (12, 1, (6,))
    assert report.first_problem == "expected 10 idx:value pairs, found 20000"
    predict_file(libfm_served, source, tmp_path / "plain.tsv")
    wide_lines, wide_scores = read_scores(tmp_path / "wide.tsv")
    plain_lines, plain_scores = read_scores(tmp_path / "plain.tsv")
    np.testing.assert_array_equal(wide_lines, np.where(plain_lines > 5, plain_lines + 1, plain_lines))
    np.testing.assert_allclose(wide_scores, plain_scores, atol=1e-7)


def test_a_non_utf8_byte_in_a_libfm_pair_is_a_bad_line(libfm_served, tmp_path):
    source = write_libfm(tmp_path / "in.libfm", 6, seed=3)
    lines = source.read_bytes().splitlines()
    lines[2] = lines[2].replace(b":1", b"\xff:1", 1)
    source.write_bytes(b"\n".join(lines) + b"\n")
    report = predict_file(libfm_served, source, tmp_path / "out.tsv")
    assert (report.rows, report.bad_lines, report.first_bad_lines) == (5, 1, (3,))
    assert report.first_problem is not None and report.first_problem.startswith("pair 1 ")
