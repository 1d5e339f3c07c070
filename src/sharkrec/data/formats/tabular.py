"""Any CSV, TSV or Parquet file described by a :class:`Schema`.

``Schema.delimiter`` (default ``,`` for csv, tab for tsv) and ``Schema.has_header`` say how to
split a text file; a headerless file's columns are positions ``0..K-1``. Cells are stripped of
surrounding whitespace. Text files with double quotes are split by Python's ``csv`` module (quoted
cells may hold delimiters and newlines); others by the fast vectorised splitter. Lines with
another number of columns than the header (or, headerless, the most common width) are bad lines
(``column_count``). For Parquet, a "line" is the 1-based row number.

In a split folder (train/dev/test files) often only the first file carries the header line
(``head -1 all.csv > train.csv; tail ... > dev.csv``). Each later file is read against the first
file's :class:`HeaderLine`: a first line that repeats it is a header; a first line that reads as data
(its dense and numeric label cells hold numbers, less than half of its cells are column names) is
data, and the file's columns take the first file's names; any other first line is a header naming
other columns, a one-line :class:`DataError` naming both files.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from sharkrec.data.formats.text import (
    BadLineLog,
    RawTable,
    delimiter_name,
    read_bytes,
    read_head,
    resolve_column,
    split_delimited,
)
from sharkrec.data.schema import FieldKind, FieldSpec, Schema
from sharkrec.errors import DataError

DEFAULT_DELIMITERS = {"csv": ",", "tsv": "\t"}


@dataclass(frozen=True)
class HeaderLine:
    """The column names on the header line of a split's first file, which its other files repeat or leave out."""

    names: tuple[str, ...]
    source: str


def read_header_line(path: Path, schema: Schema, fmt: str = "csv") -> HeaderLine | None:
    """The header line of a CSV/TSV file (its first non-blank line) when the schema says it has one, else None."""
    if not schema.has_header:
        return None
    delimiter = schema.delimiter or DEFAULT_DELIMITERS[fmt]
    head = read_head(path, 1000)  # blank lines before the header are skipped, as the readers do
    return HeaderLine(tuple(_cells(_first_line(head), delimiter)), str(path))


def read_delimited(path: Path, schema: Schema, fmt: str = "csv", header: HeaderLine | None = None) -> RawTable:
    """Cells of a CSV/TSV file (plain or gzip), stripped, with the schema's numeric columns as float64
    where every cell parses.

    ``header``: the header line of the split's first file; this file may repeat it or start with
    data (its columns then take those names), see the module docstring.
    """
    return parse_delimited(read_bytes(path), str(path), schema, fmt, header)


def parse_delimited(data: bytes, source: str, schema: Schema, fmt: str = "csv",
                    header: HeaderLine | None = None) -> RawTable:
    """Cells of CSV/TSV text held in memory (as :func:`read_bytes` returns it), named ``source`` in errors."""
    delimiter = schema.delimiter or DEFAULT_DELIMITERS[fmt]
    has_header = schema.has_header
    names: tuple[str, ...] | None = None  # the names of a file without its own header line
    if has_header and header is not None and not _starts_with_header(data, delimiter, header, schema, source):
        has_header, names = False, header.names
    if b'"' in data:
        table = _split_quoted(data, source, delimiter, has_header, names)
    else:
        float_columns = [spec.source for spec in schema.fields if _is_numeric(spec)]
        if names is not None:
            float_columns = [_position(source_column, names) for source_column in float_columns]
        table = split_delimited(data, source, delimiter, has_header=has_header, float_columns=float_columns,
                                n_columns=None if names is None else len(names))
        if names is not None:
            table.frame.columns = list(names)
    return _strip(table, schema)


def read_parquet(path: Path, schema: Schema) -> RawTable:
    """Columns of a Parquet file; line numbers are 1-based row numbers."""
    if not path.is_file():
        raise DataError(f"data file {path} does not exist; pass an existing file or folder as the data path")
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a damaged file
        raise DataError(f"data file {path} is not a readable Parquet file ({exc}); check the file") from None
    if frame.empty:
        raise DataError(f"data file {path} is empty; pass a file that holds data rows")
    return parquet_table(frame, str(path), 1, schema)


def parquet_table(frame: pd.DataFrame, source: str, first_row: int, schema: Schema) -> RawTable:
    """Rows of a Parquet file (all of it, or a batch whose first row is ``first_row``) as a :class:`RawTable`."""
    frame = frame.reset_index(drop=True)
    lines = np.arange(first_row, first_row + len(frame), dtype=np.int64)
    return _strip(RawTable(frame, lines, source, (BadLineLog(source).summary(),)), schema)


def _starts_with_header(data: bytes, delimiter: str, header: HeaderLine, schema: Schema, source: str) -> bool:
    """Whether the first line of ``data`` is ``header``: True if it repeats it, False if it reads as data,
    a DataError naming both files if it is a header that names other columns."""
    cells = _cells(_first_line(data), delimiter)
    if tuple(cells) == header.names:
        return True
    names = set(header.names)
    naming = 2 * sum(cell in names for cell in cells) >= len(cells)
    numeric = [_position(spec.source, header.names) for spec in schema.fields if _is_numeric(spec)]
    numeric = [p for p in numeric if p < len(cells)] if len(cells) == len(header.names) else []
    if not naming and not (numeric and not any(_is_number(cells[p]) for p in numeric)):
        return False
    if len(cells) != len(header.names):
        difference = f"it names {len(cells)} columns, {header.source} names {len(header.names)}"
    else:
        k = next(k for k, (a, b) in enumerate(zip(cells, header.names, strict=True)) if a != b)
        difference = f"column {k + 1} is {cells[k]!r} where {header.source} has {header.names[k]!r}"
    raise DataError(
        f"data file {source} starts with a header line that differs from the one of {header.source} ({difference}); "
        "give every file of the split the same header line, or none"
    )


def _first_line(data: bytes) -> bytes:
    """The first non-blank line of ``data`` (without copying the rest)."""
    start = 0
    while True:
        end = data.find(b"\n", start)
        line = data[start:] if end < 0 else data[start:end]
        if line.strip() or end < 0:
            return line
        start = end + 1


def _cells(line: bytes, delimiter: str) -> list[str]:
    """The stripped cells of one line, split as the readers split it (quoted cells by the csv module)."""
    text = line.decode("utf-8", errors="replace")
    row = next(csv.reader([text], delimiter=delimiter)) if '"' in text else text.split(delimiter)
    return [cell.strip() for cell in row]


def _position(source: str | int, names: Sequence[str]) -> int:
    """The position of a schema column (a name or a position) among ``names``; past the end if absent."""
    if isinstance(source, int):
        return source
    return names.index(source) if source in names else len(names)


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _is_numeric(spec: FieldSpec) -> bool:
    return spec.kind is FieldKind.DENSE or (spec.kind is FieldKind.LABEL and spec.positive is None)


def _strip(table: RawTable, schema: Schema) -> RawTable:
    """Strip whitespace around the string cells of the columns the schema uses."""
    frame = table.frame
    for spec in schema.fields:
        source = resolve_column(frame, spec.source)
        if source is not None and not pd.api.types.is_numeric_dtype(frame[source].dtype):
            column = frame[source]
            stripped = column.astype(str).str.strip().to_numpy(dtype=object)
            frame[source] = np.where(column.isna().to_numpy(), None, stripped)
    return table


def _split_quoted(
    data: bytes, source: str, delimiter: str, has_header: bool, given_names: Sequence[str] | None = None
) -> RawTable:
    """Split text with quoted cells row by row; physical line numbers come from the csv reader.

    ``given_names`` names the columns of a file without a header line (default: positions).
    """
    reader = csv.reader(io.StringIO(data.decode("utf-8", errors="surrogateescape"), newline=""), delimiter=delimiter)
    log = BadLineLog(source)
    names: list[object] | None = None if given_names is None else list(given_names)
    rows: list[list[str]] = []
    line_numbers: list[int] = []
    next_line = 1
    try:
        for row in reader:
            line, next_line = next_line, reader.line_num + 1
            if not row:
                continue
            if names is None and has_header:
                names = [name.strip() for name in row]
            else:
                rows.append(row)
                line_numbers.append(line)
    except csv.Error as exc:
        raise DataError(f"data file {source} line {reader.line_num}: {exc}; fix its quoting") from None
    widths = np.asarray([len(row) for row in rows], dtype=np.int64)
    if names is None:
        if not rows:
            raise DataError(f"data file {source} is empty; pass a file that holds data rows")
        names = list(range(int(np.bincount(widths).argmax())))
    width = len(names)
    lines = np.asarray(line_numbers, dtype=np.int64)
    bad = widths != width
    bad_widths = widths[bad]
    log.add(
        "column_count", lines[bad],
        lambda k: f"expected {width} {delimiter_name(delimiter)}-separated columns, found {bad_widths[k]}",
    )
    kept = [row for row, ok in zip(rows, ~bad, strict=True) if ok]
    columns = pd.Index(names, dtype=object)  # names may hold undecodable bytes (surrogates): no str inference
    frame = pd.DataFrame(kept, columns=columns, dtype=object) if kept else pd.DataFrame(columns=columns, dtype=object)
    return RawTable(frame, lines[~bad], source, (log.summary(),))
