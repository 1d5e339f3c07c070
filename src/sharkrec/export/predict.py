"""Batch prediction: raw rows in the training format → one line of scores per row, streamed in chunks.

The input is read ``chunk_rows`` lines at a time (plain or gzip), each chunk parsed by the
format's own reader and checked with the training cell rules, so memory stays O(chunk). Labels
may be absent (Criteo with 39 columns, libFM lines starting with a pair, CSV whose header lacks
the label columns). Output is tab-separated with a header::

    line    <task 1>    <task 2> ...
    1       0.0312      ...

``line`` is the 1-based physical input line, so rows stay identifiable when malformed lines are
skipped (``on_bad_line="skip"``, counted in the report) or the run stops at the first one
(``"error"``). The output file appears only when the whole input was scored (atomic write).
Chunks are parsed in memory: no temporary file is written, so a killed run leaves nothing behind
but the output's own temporary file next to it. The paths are checked before anything is read:
the output must not be the input (by any alias, symlink or hard link) nor a folder.
Limitation: CSV cells with quoted newlines are not supported (chunks are cut at line ends).
"""

from __future__ import annotations

import gzip
import itertools
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import numpy as np

from sharkrec.data.encode import parse_rows
from sharkrec.data.formats.text import (
    GZIP_ERRORS,
    GZIP_MAGIC,
    MAX_LINE_NUMBERS,
    BadLines,
    OnBadLine,
    RawTable,
    bad_gzip,
)
from sharkrec.data.readers import TEXT_FORMATS, parse_raw
from sharkrec.data.schema import Schema
from sharkrec.errors import ConfigError, DataError
from sharkrec.export.engine import ServingModel
from sharkrec.io import atomic_open, check_file_path

PREDICT_FORMATS = TEXT_FORMATS


@dataclass(frozen=True)
class PredictReport:
    """What :func:`predict_file` did: rows scored, bad lines skipped (first line numbers), seconds."""

    rows: int
    bad_lines: int
    first_bad_lines: tuple[int, ...] = ()
    first_problem: str | None = None
    seconds: float = 0.0
    tasks: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "bad_lines": self.bad_lines, "first_bad_lines": list(self.first_bad_lines),
                "first_problem": self.first_problem, "seconds": self.seconds, "tasks": list(self.tasks)}


def predict_file(artifact: str | os.PathLike[str] | ServingModel, input_path: str | os.PathLike[str],
                 output_path: str | os.PathLike[str], fmt: str | None = None, *, on_bad_line: str = "skip",
                 chunk_rows: int = 65536, schema: Schema | None = None) -> PredictReport:
    """Score every row of ``input_path`` (format ``fmt``) with ``artifact``; write ``output_path`` atomically.

    ``fmt`` defaults to the training format recorded in the artifact's schema (see :func:`input_format`).
    ``schema`` overrides the artifact's (only its column positions / delimiter should differ).
    """
    from sharkrec.export.artifact import load_artifact

    started = time.perf_counter()
    source = check_paths(input_path, output_path)
    model = artifact if isinstance(artifact, ServingModel) else load_artifact(artifact)
    if not isinstance(model, ServingModel):
        raise ConfigError("predict scores raw rows with sharkrec's own artifacts; a user model's artifact takes "
                          "its own inputs: call sharkrec.load(path)(*inputs) or serve it with 'sharkrec serve'")
    schema = schema or model.schema
    fmt = fmt or input_format(schema)
    if fmt not in PREDICT_FORMATS:
        raise ConfigError(f"predict reads formats {', '.join(PREDICT_FORMATS)}, not {fmt!r}; convert the input")
    if chunk_rows < 1:
        raise ConfigError(f"chunk_rows is {chunk_rows}; use 1 or more")
    policy = OnBadLine.parse(on_bad_line)
    rows, bad = 0, BadLines(str(source))
    with atomic_open(output_path, "w") as out:
        out.write("\t".join(["line", *model.task_names]) + "\n")
        for table in _chunks(fmt, source, schema, chunk_rows):
            parsed, checked = parse_rows(table, schema)
            found = table.bad_lines[0].merge(checked) if table.bad_lines else checked
            if found.count and policy is OnBadLine.ERROR:
                raise found.error()
            bad = bad.merge(found)
            if len(parsed) == 0:
                continue
            scores = model.predict_proba(model.encode(parsed)).numpy()  # (N, T)
            np.savetxt(out, np.column_stack([parsed.line_numbers, scores]),
                       fmt=["%d"] + ["%.7g"] * scores.shape[1], delimiter="\t")
            rows += len(parsed)
        if rows == 0:
            raise DataError(f"input {source} has no valid rows ({bad.count} malformed lines); nothing to predict")
    return PredictReport(rows, bad.count, bad.first_line_numbers, bad.first_problem,
                         time.perf_counter() - started, model.task_names)


def check_paths(input_path: str | os.PathLike[str], output_path: str | os.PathLike[str]) -> Path:
    """The input as a Path, after checking that it is a file and that the output can be written without
    touching it: a ConfigError when the output is a folder or names the input (an alias such as
    ``dir/../dir/F``, a symlink either way, a hard link)."""
    source = Path(input_path)
    if source.is_dir():
        raise DataError(f"input {source} is a folder; pass the path of one file to --input")
    if not source.is_file():
        raise DataError(f"input file {source} does not exist; pass an existing file to --input")
    target = check_file_path(output_path)
    if _same_file(source, target):
        raise ConfigError(
            f"output {target} is the input file {source}; the scores would overwrite it, so pass another --output path"
        )
    return source


def _same_file(source: Path, target: Path) -> bool:
    """Whether writing ``target`` would replace ``source`` (an existing file): same resolved path or same inode."""
    if source.resolve() == target.resolve():
        return True
    return target.exists() and os.path.samefile(source, target)


def input_format(schema: Schema) -> str:
    """The raw format a training schema came from: criteo, libfm (frappe), else csv or tsv by delimiter."""
    if schema.name == "criteo":
        return "criteo"
    if schema.name in ("frappe", "libfm"):
        return "libfm"
    return "tsv" if schema.delimiter == "\t" else "csv"


def _open(path: Path) -> IO[bytes]:
    with open(path, "rb") as probe:
        magic = probe.read(2)
    if magic == GZIP_MAGIC:
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def _lines(handle: IO[bytes], source: str) -> Iterator[bytes]:
    """The lines of ``handle``; a damaged gzip stream raises the DataError that reading the whole file does."""
    try:
        yield from handle
    except GZIP_ERRORS as exc:
        raise bad_gzip(source, exc) from None


def _chunks(fmt: str, path: Path, schema: Schema, chunk_rows: int) -> Iterator[RawTable]:
    """Raw tables of ``chunk_rows`` lines each, parsed in memory, with physical line numbers of the whole file."""
    header_lines = 1 if fmt in ("csv", "tsv") and schema.has_header else 0
    source = str(path)
    with _open(path) as handle:
        lines = _lines(handle, source)
        header = b""
        first_line = 1
        if header_lines:
            header = next(lines, b"")
            while header and not header.strip():
                header, first_line = next(lines, b""), first_line + 1
            first_line += 1
        fill: bytes | None = None  # prefix / suffix that adds placeholder labels, decided on the first line
        while True:
            chunk = list(itertools.islice(lines, chunk_rows))
            if not chunk:
                return
            if fill is None:
                header, fill = _label_fill(fmt, schema, header, chunk)
            body = [_fill_line(fmt, line, fill) if fill and line.strip() else line for line in chunk]
            if not any(line.strip() for line in body):
                first_line += len(chunk)
                continue
            table = parse_raw(fmt, header + b"".join(body), source, schema)
            yield _relabel(table, first_line - 1 - header_lines)
            first_line += len(chunk)


def _fill_line(fmt: str, line: bytes, fill: bytes) -> bytes:
    """``line`` with placeholder labels: in front (criteo, libfm) or appended (csv, tsv)."""
    if fmt in ("criteo", "libfm"):
        return fill + line
    end = len(line.rstrip(b"\r\n"))
    return line[:end] + fill + line[end:]


def _label_fill(fmt: str, schema: Schema, header: bytes, lines: list[bytes]) -> tuple[bytes, bytes]:
    """(header, fill): ``fill`` is added to every line when the input has no label columns."""
    first = next((line for line in lines if line.strip()), b"")
    n_labels = len(schema.labels)
    if fmt == "criteo" and first.rstrip(b"\r\n").count(b"\t") == 38:
        return header, b"0\t"
    tokens = first.split()
    if fmt == "libfm" and tokens and b":" in tokens[0]:
        return header, b"0 "
    if fmt in ("csv", "tsv") and header:
        delimiter = (schema.delimiter or {"csv": ",", "tsv": "\t"}[fmt]).encode()
        names = [name.strip().decode("utf-8", errors="replace") for name in header.rstrip(b"\r\n").split(delimiter)]
        absent = [spec for spec in schema.labels if str(spec.source) not in names]
        if absent and len(absent) == n_labels:
            end = len(header.rstrip(b"\r\n"))
            added = b"".join(delimiter + str(spec.source).encode() for spec in absent)
            return header[:end] + added + header[end:], delimiter.join([b""] + [b"0"] * len(absent))
    return header, b""


def _relabel(table: RawTable, shift: int) -> RawTable:
    """``table`` with line numbers of the whole input (``shift`` added to those of its chunk)."""
    records = tuple(replace(record, first_line_numbers=tuple(
        n + shift for n in record.first_line_numbers)[:MAX_LINE_NUMBERS]) for record in table.bad_lines)
    return RawTable(table.frame, table.line_numbers + shift, table.source, records)
