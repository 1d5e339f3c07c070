"""Input read piece by piece: checked rows of one chunk at a time, never a whole file.

A :class:`RowsChunk` is what :func:`sharkrec.data.encode.parse_rows` makes of one piece of input,
with the sparse values as Arrow string arrays (the form streaming preparation counts and encodes).

- Criteo text is cut into blocks of about ``chunk_bytes`` at line ends (:func:`text_blocks`, plain
  or gzip, CRLF made LF). A block whose lines all parse as the built-in Criteo schema expects (every
  label 0 or 1, every dense cell an integer, a number or missing) is read by Arrow's CSV reader;
  lines of the wrong width are dropped and recorded first by the same check the in-memory reader
  uses. Any other block (a non-numeric dense cell, a bad label, a custom schema) goes through the
  in-memory reader and :func:`parse_rows`, so every rule lives in :mod:`sharkrec.data.encode` and
  the bad lines of a block are recorded exactly as when the whole file is read.
- Parquet files are read in record batches of one row group (:func:`parquet_chunks`) and checked by
  :func:`parse_rows`; line numbers are 1-based row numbers within the file.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from sharkrec.data.encode import MISSING_VALUE, ParsedRows, parse_rows
from sharkrec.data.formats.criteo import COLUMNS, criteo_schema, parse_criteo
from sharkrec.data.formats.tabular import parquet_table
from sharkrec.data.formats.text import (
    GZIP_ERRORS,
    GZIP_MAGIC,
    MISSING_MARKERS,
    BadLineLog,
    BadLines,
    bad_gzip,
    delimiter_name,
    every_line_has_width,
    keep_full_lines,
    line_count,
)
from sharkrec.data.schema import Schema
from sharkrec.errors import ConfigError, DataError

DEFAULT_CHUNK_BYTES = 32 << 20
_READ_BLOCK = 1 << 20  # Arrow CSV block size: small blocks parse faster on two cores than one large one
_MARKERS_AND_VALUE = pa.array([*MISSING_MARKERS, MISSING_VALUE], type=pa.string())
_DICTIONARY = pa.dictionary(pa.int32(), pa.string())


@dataclass(frozen=True, eq=False)
class RowsChunk:
    """Checked rows of one piece of input.

    ``dense`` (n, D) float64, NaN = missing, untransformed; ``labels`` (n, T) float32 in {0, 1};
    ``sparse`` one Arrow string array (n,) of raw values per sparse field (missing: ``<missing>``), or a
    dictionary array of them (each dictionary entry used by some row, ``<missing>`` at most once);
    ``bad_lines`` the lines of this piece that were dropped (``source`` is the file).
    """

    dense: np.ndarray
    labels: np.ndarray
    sparse: tuple[pa.Array, ...]
    bad_lines: BadLines

    def __len__(self) -> int:
        return len(self.labels)


def check_streamable(schema: Schema) -> None:
    """A ConfigError when ``schema`` has a multi-hot field (streaming preparation writes single-hot ids)."""
    multi = [spec.name for spec in schema.sparse if spec.is_multi_hot]
    if multi:
        raise ConfigError(
            f"streaming preparation handles single-hot sparse fields; {multi} are multi-hot (separator set); "
            "prepare this data in memory (leave out --stream)"
        )


def text_blocks(path: Path, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[tuple[bytes, int]]:
    """``(block, first_line)`` pieces of a text file (plain or gzip): ``chunk_bytes`` and the rest of the line."""
    if not path.is_file():
        raise DataError(f"data file {path} does not exist; pass an existing file or folder as the data path")
    with open(path, "rb") as probe:
        compressed = probe.read(2) == GZIP_MAGIC
    first_line = 1
    try:
        with gzip.open(path, "rb") if compressed else open(path, "rb") as handle:
            while piece := handle.read(chunk_bytes):
                if not piece.endswith(b"\n"):
                    piece += handle.readline()  # finish the last line (one copy, no carried remainder)
                block = _lf(piece)
                yield block, first_line
                first_line += block.count(b"\n")
    except GZIP_ERRORS as exc:
        raise bad_gzip(path, exc) from None


def _lf(block: bytes) -> bytes:
    return block.replace(b"\r\n", b"\n") if b"\r\n" in block else block


def criteo_chunk(block: bytes, source: str, first_line: int, schema: Schema) -> RowsChunk:
    """Checked rows of one block of Criteo text (see the module docstring for the two routes)."""
    if schema == criteo_schema():
        chunk = _criteo_arrow(block, source, first_line, schema)
        if chunk is not None:
            return chunk
    table = parse_criteo(block, source, first_line)
    parsed, checked = parse_rows(table, schema)
    return _from_parsed(parsed, table.bad_lines[0].merge(checked))


def parquet_chunks(path: Path, row_group: int, first_row: int, schema: Schema, batch_rows: int) -> Iterator[RowsChunk]:
    """Checked rows of one row group of a Parquet file, ``batch_rows`` at a time."""
    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=batch_rows, row_groups=[row_group])
        for batch in batches:
            table = parquet_table(batch.to_pandas(), str(path), first_row, schema)
            parsed, checked = parse_rows(table, schema)
            first_row += batch.num_rows
            yield _from_parsed(parsed, table.bad_lines[0].merge(checked))
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"data file {path} is not a readable Parquet file ({exc}); check the file") from None


def _from_parsed(parsed: ParsedRows, bad_lines: BadLines) -> RowsChunk:
    sparse = tuple(pa.array(np.asarray(column.values, dtype=object), type=pa.string()) for column in parsed.sparse)
    return RowsChunk(parsed.dense, parsed.labels, sparse, bad_lines)


def _criteo_arrow(block: bytes, source: str, first_line: int, schema: Schema) -> RowsChunk | None:
    """The block read by Arrow, or None when a cell needs the in-memory reader's checks."""
    n_columns = len(COLUMNS)
    log = BadLineLog(source)
    n_lines = line_count(block)
    if every_line_has_width(block, b"\t", n_columns, n_lines):
        kept, n_kept = block, n_lines
    else:
        def describe(found: int, expected: int) -> str:
            return f"expected {expected} {delimiter_name(chr(9))}-separated columns, found {found}"

        numbers, kept, _ = keep_full_lines(block, b"\t", n_columns, first_line, log, "column_count", describe)
        n_kept = len(numbers)
    numeric = COLUMNS[: 1 + len(schema.dense)]
    table = None
    for number_type in (pa.int64(), pa.float64()):  # integer parsing is several times faster; floats if needed
        try:
            table = _read_tsv(kept, {name: (number_type if name in numeric else _DICTIONARY) for name in COLUMNS})
            break
        except pa.ArrowInvalid:
            continue
    if table is None or table.num_rows != n_kept:
        return None
    labels = _numbers(table.column(COLUMNS[0]))
    if np.isnan(labels).any() or not np.isin(labels, (0.0, 1.0)).all():
        return None
    dense = np.empty((n_kept, len(schema.dense)), dtype=np.float64)
    for j, spec in enumerate(schema.dense):
        dense[:, j] = _numbers(table.column(spec.name))
    if np.isinf(dense).any():
        return None
    table = table.unify_dictionaries()
    sparse = tuple(_missing_as_value(table.column(spec.name).combine_chunks()) for spec in schema.sparse)
    return RowsChunk(dense, labels.astype(np.float32)[:, None], sparse, log.summary())


def _missing_as_value(column: pa.DictionaryArray) -> pa.DictionaryArray:
    """The missing markers (and the value ``<missing>`` itself) as one dictionary entry ``<missing>``."""
    dictionary = column.dictionary
    marks = pc.is_in(dictionary, value_set=_MARKERS_AND_VALUE)
    at = np.flatnonzero(marks.to_numpy(zero_copy_only=False))
    if len(at) == 0:
        return column
    indices = column.indices
    if len(at) > 1:  # several spellings of missing: their rows all take the first one's entry
        remap = np.arange(len(dictionary), dtype=np.int32)
        remap[at[1:]] = at[0]
        indices = pa.array(remap[indices.to_numpy(zero_copy_only=False)], type=pa.int32())
    return pa.DictionaryArray.from_arrays(indices, pc.if_else(marks, MISSING_VALUE, dictionary))


def _read_tsv(body: bytes, types: dict[str, pa.DataType]) -> pa.Table:
    return pa_csv.read_csv(
        io.BytesIO(body),
        read_options=pa_csv.ReadOptions(column_names=list(COLUMNS), block_size=_READ_BLOCK),
        parse_options=pa_csv.ParseOptions(delimiter="\t", quote_char=False, double_quote=False, escape_char=False),
        convert_options=pa_csv.ConvertOptions(
            column_types=types, null_values=list(MISSING_MARKERS), strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )


def _numbers(column: pa.ChunkedArray) -> np.ndarray:
    """(n,) float64 of a numeric Arrow column, null -> NaN."""
    return column.cast(pa.float64()).to_numpy()
