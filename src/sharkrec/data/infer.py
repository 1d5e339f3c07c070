"""Guess the schema of a CSV/TSV/Parquet file from a bounded sample of its rows (``sharkrec schema``).

Only the first ``sample_rows`` rows are read (plain or gzip text, or the first row groups of a
Parquet file), never the whole file. The rules, in order, for each column:

- a column named by ``labels`` is a label: 0/1 numbers as they are; two other values get
  ``positive`` (the larger number; for text ``yes``/``true``/``1``-like words, else the rarer value);
- every sampled value distinct (and not fractional numbers): an id, left out with a note;
- fractional or integer numbers with at least ``dense_min_distinct`` distinct values: dense;
- everything else is sparse: text, low-cardinality numbers (ids stored as ints, hours, flags), and
  integer codes (leading zeros, or every value the same width of 4+ digits, e.g. YYMMDDHH).

Text files: the format comes from the extension (``.csv``/``.tsv``/``.parquet``, ``.gz`` ignored;
others are csv); a csv's delimiter is detected (comma, tab, semicolon, pipe); the first line is a
header unless it reads as data (it has empty, repeated or numeric cells, or no numeric column
starts with a name and some column repeats its first cell). A headerless file's columns are
numbered ``0..K-1``, which are then also the field names.
"""

from __future__ import annotations

import csv
import math
import re
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sharkrec.data.formats.text import MISSING_MARKERS, delimiter_name, read_head
from sharkrec.data.schema import FieldKind, FieldSpec, Schema, describe_names, duplicate_names
from sharkrec.data.sources import find_sources, split_of
from sharkrec.errors import ConfigError, DataError, SchemaError

SAMPLE_ROWS = 100_000
DENSE_MIN_DISTINCT = 100
ID_MIN_ROWS = 20  # fewer sampled rows than this are too few to call a column an id
DELIMITERS = (",", "\t", ";", "|")
FORMATS = ("csv", "tsv", "parquet")
POSITIVE_WORDS = ("1", "yes", "y", "true", "t", "positive", "pos", "click", "clicked")
_CODE = re.compile(r"-?\d+")


@dataclass(frozen=True)
class ColumnNote:
    """What the inference made of one column: its kind (None: left out), distinct values, and why."""

    column: str | int
    kind: FieldKind | None
    distinct: int
    reason: str


@dataclass(frozen=True)
class InferredSchema:
    """A guessed schema, a note for every column of the file, and what was sampled."""

    schema: Schema
    columns: tuple[ColumnNote, ...]
    source: Path
    fmt: str
    sampled_rows: int

    @property
    def left_out(self) -> tuple[ColumnNote, ...]:
        return tuple(note for note in self.columns if note.kind is None)

    def to_dict(self) -> dict[str, Any]:
        """The schema JSON (as :meth:`Schema.to_dict`) with a ``description`` of how it was made."""
        left_out = "; ".join(f"{note.column} ({note.reason})" for note in self.left_out) or "none"
        description = (
            f"Inferred by 'sharkrec schema' from the first {self.sampled_rows} rows of {self.source.name}. "
            f"Left out: {left_out}. Check the kinds before training."
        )
        return {"name": self.schema.name, "description": description, **self.schema.to_dict()}

    def summary(self) -> str:
        """A plain-text table: column, kind, distinct sampled values, reason."""
        rows = [("column", "kind", "distinct", "reason")]
        for note in self.columns:
            kind = note.kind.value if note.kind else "left out"
            rows.append((str(note.column), kind, str(note.distinct), note.reason))
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        lines = [f"{c:<{widths[0]}}  {k:<{widths[1]}}  {d:>{widths[2]}}  {r}" for c, k, d, r in rows]
        schema = self.schema
        lines.append(
            f"{len(schema.labels)} label, {len(schema.dense)} dense, {len(schema.sparse)} sparse fields from "
            f"{self.sampled_rows} sampled rows of {self.source} ({self._layout()})"
        )
        return "\n".join(lines)

    def _layout(self) -> str:
        if self.fmt == "parquet":
            return "parquet"
        delimiter = delimiter_name(self.schema.delimiter or ",")
        return f"{self.fmt}, {delimiter}-separated, {'a header line' if self.schema.has_header else 'no header'}"


def infer_schema(
    path: str | Path,
    labels: Sequence[str],
    fmt: str | None = None,
    sample_rows: int = SAMPLE_ROWS,
    dense_min_distinct: int = DENSE_MIN_DISTINCT,
) -> InferredSchema:
    """Guess the schema of ``path`` (a file, or a folder: its train file) from its first ``sample_rows`` rows.

    Args:
        labels: the label columns (header names; positions ``"0"``.. for a headerless file).
        fmt: csv, tsv or parquet; ``None`` reads it from the file's extension.
        dense_min_distinct: numeric columns with at least this many distinct sampled values are dense.
    """
    if not labels:
        raise ConfigError("name the label column(s) to infer a schema, e.g. --label click")
    if sample_rows < 1 or dense_min_distinct < 1:
        raise ConfigError(
            f"sample_rows {sample_rows} and dense_min_distinct {dense_min_distinct} must be 1 or more"
        )
    file = _data_file(Path(path))
    data_format = _format_of(file, fmt)
    if data_format == "parquet":
        names, columns, delimiter, has_header = _sample_parquet(file, sample_rows)
    else:
        names, columns, delimiter, has_header = _sample_text(file, data_format, sample_rows)
    label_positions = _label_positions(labels, names, file)
    fields, notes = [], []
    for j, (name, values) in enumerate(zip(names, columns, strict=True)):
        column: str | int = name if has_header else j
        spec: FieldSpec | None
        if j in label_positions:
            spec, note = _label_field(name, column, values, file)
        else:
            spec, note = _feature_field(name, column, values, dense_min_distinct)
        notes.append(note)
        if spec is not None:
            fields.append(spec)
    if not any(spec.kind is not FieldKind.LABEL for spec in fields):
        raise SchemaError(
            f"no column of {file} is left as a feature (every other column is an id or empty); "
            "check --label, or write the schema by hand (see examples/schemas/)"
        )
    schema = Schema(tuple(fields), name=_schema_name(file), delimiter=delimiter, has_header=has_header)
    return InferredSchema(schema, tuple(notes), file, data_format, len(columns[0]) if columns else 0)


# ------------------------------------------------------------------------------------------ sampling


def _data_file(path: Path) -> Path:
    """``path``, or for a folder the first file of its train split."""
    if path.is_dir():
        return find_sources(path, "csv").train[0]
    if not path.is_file():
        raise DataError(f"data path {path} does not exist; pass an existing file or folder")
    return path


def _format_of(file: Path, fmt: str | None) -> str:
    if fmt is not None:
        if fmt not in FORMATS:
            raise ConfigError(f"format {fmt!r} has no schema inference; use one of {', '.join(FORMATS)}")
        return fmt
    name = file.name.lower().removesuffix(".gz")
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    return "tsv" if name.endswith(".tsv") else "csv"


def _sample_text(file: Path, fmt: str, sample_rows: int) -> tuple[list[str], list[list[str]], str, bool]:
    """(column names, sampled cells per column, delimiter, has_header) of a delimited text file."""
    text = read_head(file, sample_rows + 1).decode("utf-8", errors="replace")
    lines = [line for line in text.split("\n") if line.strip()]
    delimiter = "\t" if fmt == "tsv" else _detect_delimiter(lines[:200], file)
    rows = [[cell.strip() for cell in row] for row in csv.reader(lines, delimiter=delimiter)]
    if len(rows[0]) < 2:
        raise DataError(
            f"the first line of {file} has one {delimiter_name(delimiter)}-separated column; "
            "pass --format csv to detect the delimiter, or write the schema by hand"
        )
    has_header = _is_header(rows[0], rows[1:])
    width = len(rows[0])
    body = [row for row in (rows[1:] if has_header else rows)[:sample_rows] if len(row) == width]
    if not body:
        raise DataError(f"data file {file} has no data rows of {width} columns after its first line; check the file")
    names = _header_names(rows[0], file) if has_header else [str(j) for j in range(width)]
    return names, [list(column) for column in zip(*body, strict=True)], delimiter, has_header


def _detect_delimiter(lines: Sequence[str], file: Path) -> str:
    """The candidate giving the most columns (2+) among those that split 90% of the lines into one width;
    failing that, the widest of the others."""
    scores = []
    for delimiter in DELIMITERS:
        widths = Counter(len(row) for row in csv.reader(lines, delimiter=delimiter))
        width, count = widths.most_common(1)[0]
        if width >= 2:
            scores.append((count / len(lines) >= 0.9, width, count, delimiter))
    if not scores:
        raise DataError(
            f"no line of {file} splits into columns on comma, tab, semicolon or pipe; "
            "pass --format tsv or write the schema by hand (see examples/schemas/)"
        )
    return max(scores, key=lambda score: score[:3])[3]


def _is_header(first: list[str], body: Sequence[list[str]]) -> bool:
    """Whether the first row names the columns (see the module docstring)."""
    if any(cell == "" for cell in first) or len(set(first)) < len(first) or any(_number(c) is not None for c in first):
        return False
    if not body:
        return True
    sample = [row for row in body[:1000] if len(row) == len(first)]
    columns = list(zip(*sample, strict=True)) if sample else []
    numeric = any(_share_numeric(column) >= 0.9 for column in columns)
    repeated = any(first[j] in column for j, column in enumerate(columns))
    return numeric or not repeated


def _header_names(cells: list[str], file: Path) -> list[str]:
    duplicates = duplicate_names(cells)
    if duplicates:
        raise DataError(f"the header of data file {file} names columns {duplicates} twice; rename them")
    return cells


def _sample_parquet(file: Path, sample_rows: int) -> tuple[list[str], list[list[str]], None, bool]:
    """(column names, the first ``sample_rows`` rows' cells as text per column, no delimiter, True)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(file)
        batches = []
        read = 0
        for batch in parquet.iter_batches(batch_size=min(sample_rows, 65_536)):
            batches.append(batch.slice(0, sample_rows - read))
            read += len(batches[-1])
            if read >= sample_rows:
                break
    except Exception as exc:  # pyarrow raises several unrelated types for a damaged file
        raise DataError(f"data file {file} is not a readable Parquet file ({exc}); check the file") from None
    if not read:
        raise DataError(f"data file {file} is empty; pass a file that holds data rows")
    frame = pa.Table.from_batches(batches).to_pandas()
    columns = [[_parquet_cell(value) for value in frame[name].tolist()] for name in frame.columns]
    return [str(name) for name in frame.columns], columns, None, True


def _parquet_cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# ------------------------------------------------------------------------------------------ columns


def _label_positions(labels: Sequence[str], names: list[str], file: Path) -> set[int]:
    missing = [label for label in labels if label not in names]
    if missing:
        raise SchemaError(
            f"label column(s) {missing} are not columns of {file}; its columns: {describe_names(names, limit=40)}; "
            "pass one of them to --label"
        )
    return {names.index(label) for label in labels}


def _label_field(name: str, column: str | int, values: list[str], file: Path) -> tuple[FieldSpec, ColumnNote]:
    present = [v for v in values if v not in MISSING_MARKERS]
    counts = Counter(present)
    missing = len(values) - len(present)
    gaps = f"; {missing} missing (bad lines)" if missing else ""
    numbers = {_number(v) for v in counts}
    if counts and numbers <= {0.0, 1.0}:
        spec = FieldSpec(name, FieldKind.LABEL, column=column)
        return spec, ColumnNote(column, FieldKind.LABEL, len(counts), f"label: 0/1 values{gaps}")
    if len(counts) != 2:
        shown = ", ".join(repr(v) for v, _ in counts.most_common(5))
        raise SchemaError(
            f"label column {name!r} of {file} has {len(counts)} distinct values in the sampled rows ({shown}); "
            "a label must be binary: pass a 0/1 or two-valued column to --label, or write 'positive' by hand"
        )
    positive, why = _positive_value(counts)
    spec = FieldSpec(name, FieldKind.LABEL, column=column, positive=(positive,))
    other = next(v for v in counts if v != positive)
    note = f"label: {positive!r} is positive, {other!r} negative ({why}){gaps}"
    return spec, ColumnNote(column, FieldKind.LABEL, 2, note)


def _positive_value(counts: Counter[str]) -> tuple[str, str]:
    """The value of a two-valued label that means 1, and why."""
    values = sorted(counts)
    numbers = [_number(v) for v in values]
    if all(n is not None for n in numbers):
        return max(values, key=lambda v: _number(v) or 0.0), "the larger number"
    for value in values:
        if value.lower() in POSITIVE_WORDS:
            return value, "a positive word"
    rarer = min(values, key=lambda v: (counts[v], v))
    return rarer, "the rarer value; edit 'positive' if it is the other"


def _feature_field(
    name: str, column: str | int, values: list[str], dense_min_distinct: int
) -> tuple[FieldSpec | None, ColumnNote]:
    counts = Counter(v for v in values if v not in MISSING_MARKERS)
    present = sum(counts.values())
    numbers = {value: _number(value) for value in counts}
    numeric = bool(counts) and all(n is not None for n in numbers.values())
    fractional = numeric and any(not float(n).is_integer() for n in numbers.values() if n is not None)
    distinct = len(counts)
    if not counts:
        return None, ColumnNote(column, None, 0, "every sampled value is missing")
    if distinct == present >= ID_MIN_ROWS and not fractional:
        return None, ColumnNote(column, None, distinct, f"all {present} sampled values distinct: an id")
    kind = FieldKind.SPARSE
    code = _code_kind(numbers) if numeric and not fractional else None
    if code is not None:
        reason = f"integer codes ({code})"
    elif numeric and distinct >= dense_min_distinct:
        kind = FieldKind.DENSE
        reason = f"{'fractional' if fractional else 'integer'} numbers, {dense_min_distinct}+ distinct values"
    elif numeric:
        reason = f"numbers with few distinct values (< {dense_min_distinct}): categories"
    else:
        text = next(value for value, _ in counts.most_common() if numbers[value] is None)
        reason = f"text values (e.g. {text!r})"
    if distinct == 1:
        reason += "; one value in the sample"
    return FieldSpec(name, kind, column=column), ColumnNote(column, kind, distinct, reason)


def _code_kind(values: Collection[str]) -> str | None:
    """How integers are written as codes (leading zeros, or one width of 4+ digits: dates, hours), or None."""
    digits = [value.lstrip("-") for value in values]
    if not all(_CODE.fullmatch(value) for value in values):
        return None
    if any(len(d) > 1 and d.startswith("0") for d in digits):
        return "leading zeros"
    widths = {len(d) for d in digits}
    return f"all {min(widths)} digits wide" if len(widths) == 1 and min(widths) >= 4 else None


def _number(cell: str) -> float | None:
    """The finite number ``cell`` holds, else None."""
    try:
        value = float(cell)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _share_numeric(column: Sequence[str]) -> float:
    present = [cell for cell in column if cell not in MISSING_MARKERS]
    return sum(_number(cell) is not None for cell in present) / len(present) if present else 0.0


def _schema_name(file: Path) -> str:
    """The file's name without extensions, or its folder's name for a split file (``avazu/train.csv``)."""
    folder = file.resolve().parent.name
    return folder if split_of(file.name) is not None and folder else file.name.split(".")[0]
