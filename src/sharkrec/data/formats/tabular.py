"""Any CSV, TSV or Parquet file described by a :class:`Schema`.

``Schema.delimiter`` (default ``,`` for csv, tab for tsv) and ``Schema.has_header`` say how to
split a text file; a headerless file's columns are positions ``0..K-1``. Cells are stripped of
surrounding whitespace. Text files with double quotes are split by Python's ``csv`` module (quoted
cells may hold delimiters and newlines); others by the fast vectorised splitter. Lines with
another number of columns than the header (or, headerless, the most common width) are bad lines
(``column_count``). For Parquet, a "line" is the 1-based row number.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pandas as pd

from sharkrec.data.formats.text import (
    BadLineLog,
    RawTable,
    delimiter_name,
    read_bytes,
    resolve_column,
    split_delimited,
)
from sharkrec.data.schema import FieldKind, FieldSpec, Schema
from sharkrec.errors import DataError

DEFAULT_DELIMITERS = {"csv": ",", "tsv": "\t"}


def read_delimited(path: Path, schema: Schema, fmt: str = "csv") -> RawTable:
    """Cells of a CSV/TSV file (plain or gzip), stripped, with the schema's numeric columns as float64
    where every cell parses."""
    return parse_delimited(read_bytes(path), str(path), schema, fmt)


def parse_delimited(data: bytes, source: str, schema: Schema, fmt: str = "csv") -> RawTable:
    """Cells of CSV/TSV text held in memory (as :func:`read_bytes` returns it), named ``source`` in errors."""
    delimiter = schema.delimiter or DEFAULT_DELIMITERS[fmt]
    if b'"' in data:
        table = _split_quoted(data, source, delimiter, schema.has_header)
    else:
        float_columns = [spec.source for spec in schema.fields if _is_numeric(spec)]
        table = split_delimited(data, source, delimiter, has_header=schema.has_header, float_columns=float_columns)
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
    frame = frame.reset_index(drop=True)
    lines = np.arange(1, len(frame) + 1, dtype=np.int64)
    return _strip(RawTable(frame, lines, str(path), (BadLineLog(str(path)).summary(),)), schema)


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


def _split_quoted(data: bytes, source: str, delimiter: str, has_header: bool) -> RawTable:
    """Split text with quoted cells row by row; physical line numbers come from the csv reader."""
    reader = csv.reader(io.StringIO(data.decode("utf-8", errors="surrogateescape"), newline=""), delimiter=delimiter)
    log = BadLineLog(source)
    names: list[object] | None = None
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
