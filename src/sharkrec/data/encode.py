"""From raw cells to model inputs: check cells against the schema, transform, encode with vocabularies.

Rules, applied the same way to every format:

- A cell is *missing* when it is empty, ``?`` or null.
- Dense: a missing value becomes 0 after the transform ``sign(x) * log(1 + |x|)``; any other cell
  must be a finite number, else the line is bad (``dense``).
- Sparse: a missing value is the value ``<missing>`` and gets its own row like any other value
  (it often carries signal); in a multi-hot field a missing cell is an empty bag (pools to zeros).
  Multi-hot cells are split on the field's separator, tokens stripped, empty tokens dropped.
- Labels with ``positive`` set: 1 when the cell is one of those values, else 0. Without it the
  cell must be the number 0 or 1, else the line is bad (``label``). A missing label is bad too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from sharkrec.data.dataset import EncodedSplit, SparseColumn
from sharkrec.data.formats.text import MISSING_MARKERS, BadLineLog, BadLines, RawTable, resolve_column
from sharkrec.data.schema import FieldSpec, Schema, describe_names
from sharkrec.data.vocab import OOV_ROW, Vocabulary
from sharkrec.errors import SchemaError

MISSING_VALUE = "<missing>"


@dataclass(frozen=True, eq=False)
class ParsedRows:
    """Checked rows, before vocabulary encoding.

    ``dense`` (N, n_dense) float64, NaN = missing, untransformed; ``labels`` (N, T) float32 in {0, 1};
    ``sparse`` one :class:`SparseColumn` of raw string values per sparse field (multi-hot: tokens
    and offsets); ``line_numbers`` (N,) int64, the 1-based line each row came from.
    """

    dense: np.ndarray
    labels: np.ndarray
    sparse: tuple[SparseColumn, ...]
    line_numbers: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def rows(self, start: int, stop: int) -> ParsedRows:
        """Rows ``start..stop-1`` (row order is kept)."""
        return ParsedRows(
            self.dense[start:stop],
            self.labels[start:stop],
            tuple(_slice_column(column, start, stop) for column in self.sparse),
            self.line_numbers[start:stop],
        )

    @staticmethod
    def concat(parts: Sequence[ParsedRows]) -> ParsedRows:
        if len(parts) == 1:
            return parts[0]
        columns = []
        for field_index, first in enumerate(parts[0].sparse):
            pieces = [part.sparse[field_index] for part in parts]
            values = np.concatenate([piece.values for piece in pieces])
            if first.offsets is None:
                columns.append(SparseColumn(values))
            else:
                lengths = np.concatenate([np.diff(np.asarray(piece.offsets)) for piece in pieces])
                columns.append(SparseColumn(values, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)))
        return ParsedRows(
            np.concatenate([part.dense for part in parts]),
            np.concatenate([part.labels for part in parts]),
            tuple(columns),
            np.concatenate([part.line_numbers for part in parts]),
        )


def parse_rows(table: RawTable, schema: Schema) -> tuple[ParsedRows, BadLines]:
    """Check the cells of ``table`` against ``schema``; drop and record bad lines of ``table.source``."""
    columns = _schema_columns(table, schema)
    lines = table.line_numbers
    log = BadLineLog(table.source)
    ok = np.ones(len(lines), dtype=bool)

    dense = np.zeros((len(lines), len(schema.dense)), dtype=np.float64)
    for j, spec in enumerate(schema.dense):
        values, missing = _numbers(columns[spec.name])
        bad = ~missing & ~np.isfinite(values)
        _record(log, "dense", lines, bad, columns[spec.name], (f"dense field {spec.name!r} value ", " is not a number"))
        dense[:, j] = np.where(missing, np.nan, values)
        ok &= ~bad

    labels = np.zeros((len(lines), len(schema.labels)), dtype=np.float32)
    for t, spec in enumerate(schema.labels):
        value, bad, problem = _label(columns[spec.name], spec)
        _record(log, "label", lines, bad, columns[spec.name], (f"label {spec.name!r} value ", f" {problem}"))
        labels[:, t] = value
        ok &= ~bad

    if not ok.all():
        kept = np.flatnonzero(ok)
        dense, labels, lines = dense[kept], labels[kept], lines[kept]
        columns = {spec.name: columns[spec.name].iloc[kept] for spec in schema.sparse}
    sparse = tuple(_sparse_values(columns[spec.name], spec) for spec in schema.sparse)
    return ParsedRows(dense, labels, sparse, lines), log.summary()


def signed_log1p(dense: np.ndarray) -> np.ndarray:
    """``sign(x) * log(1 + |x|)`` as float32, missing (NaN) -> 0; keeps heavy-tailed counts in range."""
    transformed = np.sign(dense) * np.log1p(np.abs(dense))
    return np.nan_to_num(transformed, nan=0.0).astype(np.float32)


def fit_vocabularies(rows: ParsedRows, schema: Schema, min_count: int | None = None) -> dict[str, Vocabulary]:
    """One vocabulary per sparse field from ``rows`` (the train split); every occurrence counts.

    ``min_count`` overrides each field's ``FieldSpec.min_count`` when given. Positive counts use
    the first label.
    """
    positive = rows.labels[:, 0] == 1.0 if rows.labels.shape[1] else np.zeros(len(rows), dtype=bool)
    vocabularies = {}
    for spec, column in zip(schema.sparse, rows.sparse, strict=True):
        occurrence_positive = positive if column.offsets is None else np.repeat(positive, np.diff(column.offsets))
        vocabulary = Vocabulary(spec.name, min_count if min_count is not None else spec.min_count)
        vocabularies[spec.name] = vocabulary.fit(np.asarray(column.values, dtype=object), occurrence_positive)
    return vocabularies


def encode_rows(rows: ParsedRows, schema: Schema, vocabularies: Mapping[str, Vocabulary]) -> EncodedSplit:
    """Row ids for every sparse value (unseen or rare -> OOV row 0), transformed dense, labels."""
    sparse = [
        SparseColumn(_transform(vocabularies[spec.name], column.values), column.offsets)
        for spec, column in zip(schema.sparse, rows.sparse, strict=True)
    ]
    return EncodedSplit(signed_log1p(rows.dense), sparse, rows.labels)


def _transform(vocabulary: Vocabulary, values: np.ndarray) -> np.ndarray:
    """``vocabulary.transform(values)``, looking up each distinct value once (values repeat a lot)."""
    codes, uniques = pd.factorize(np.asarray(values, dtype=object))
    return vocabulary.transform(np.asarray(uniques, dtype=object))[codes]


def oov_shares(split: EncodedSplit, schema: Schema) -> dict[str, float]:
    """Per sparse field, the share of ids that map to the OOV row."""
    shares = {}
    for field_index, name in enumerate(schema.sparse_names):
        ids = split.column(field_index).values
        shares[name] = float(np.mean(ids == OOV_ROW)) if len(ids) else 0.0
    return shares


def missing_shares(rows: ParsedRows, schema: Schema) -> dict[str, float]:
    """Per dense and sparse field, the share of rows whose value is missing."""
    shares: dict[str, float] = {}
    n = max(len(rows), 1)
    for j, name in enumerate(schema.dense_names):
        shares[name] = float(np.isnan(rows.dense[:, j]).sum() / n)
    for spec, column in zip(schema.sparse, rows.sparse, strict=True):
        if column.offsets is None:
            shares[spec.name] = float(np.sum(column.values == MISSING_VALUE) / n)
        else:
            shares[spec.name] = float(np.sum(np.diff(column.offsets) == 0) / n)
    return shares


def _schema_columns(table: RawTable, schema: Schema) -> dict[str, pd.Series]:
    frame = table.frame
    found = {spec.name: resolve_column(frame, spec.source) for spec in schema.fields}
    absent = [spec.source for spec in schema.fields if found[spec.name] is None]
    if absent:
        if all(isinstance(c, int) for c in frame.columns):
            have = f"{frame.shape[1]} columns (positions 0..{frame.shape[1] - 1}), no header"
        else:
            have = "columns " + describe_names(str(c) for c in frame.columns)
        raise SchemaError(
            f"schema {schema.name!r} names columns {absent} that data file {table.source} lacks; it has {have}; "
            "fix the schema's 'column' entries"
        )
    return {name: frame[column].reset_index(drop=True) for name, column in found.items()}


def _missing(column: pd.Series) -> np.ndarray:
    cells = column.to_numpy(dtype=object)
    missing = pd.isna(cells)
    for marker in MISSING_MARKERS:
        missing |= cells == marker
    return missing


def _numbers(column: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(values float64, missing); a present cell that is not a number gives NaN with missing False."""
    if pd.api.types.is_numeric_dtype(column.dtype):
        values = column.to_numpy(dtype=np.float64, na_value=np.nan)
        return values, np.isnan(values)
    missing = _missing(column)
    cells = column.to_numpy(dtype=object).copy()
    cells[missing] = "nan"
    try:
        values = cells.astype(np.float64)
    except (ValueError, TypeError):
        values = pd.to_numeric(pd.Series(cells), errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    return values, missing


def _label(column: pd.Series, spec: FieldSpec) -> tuple[np.ndarray, np.ndarray, str]:
    """(0/1 values, bad mask, what is wrong with a bad cell)."""
    if spec.positive is not None:
        missing = _missing(column)
        value = _text(column).isin(spec.positive).to_numpy(dtype=bool)
        return value.astype(np.float32), missing, "is missing"
    values, missing = _numbers(column)
    bad = missing | ~np.isin(values, (0.0, 1.0))
    return np.where(bad, 0.0, values).astype(np.float32), bad, "is not 0 or 1 (set 'positive' in the schema to map it)"


def _text(column: pd.Series) -> pd.Series:
    """Cells as strings; whole floats print as integers (5.0 -> "5") so numeric ids read naturally."""
    if pd.api.types.is_float_dtype(column.dtype):
        values = column.to_numpy(dtype=np.float64, na_value=np.nan)
        finite = np.isfinite(values)
        if np.all(values[finite] == np.round(values[finite])):
            text = np.full(len(values), None, dtype=object)
            text[finite] = values[finite].astype(np.int64).astype(str)
            return pd.Series(text, dtype=object)
    if pd.api.types.is_string_dtype(column.dtype):
        return column
    return column.map(lambda value: None if pd.isna(value) else str(value)).astype(object)


def _sparse_values(column: pd.Series, spec: FieldSpec) -> SparseColumn:
    column = column.reset_index(drop=True)
    missing = _missing(column)
    text = _text(column).to_numpy(dtype=object)
    if spec.separator is None:
        return SparseColumn(np.where(missing, MISSING_VALUE, text).astype(object))
    cells = pd.Series(np.where(missing, "", text), dtype=object)
    tokens = cells.str.split(spec.separator, regex=False).explode().str.strip()
    tokens = tokens[tokens.notna() & (tokens != "")]
    counts = np.bincount(tokens.index.to_numpy(dtype=np.int64), minlength=len(cells))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return SparseColumn(tokens.to_numpy(dtype=object), offsets)


def _slice_column(column: SparseColumn, start: int, stop: int) -> SparseColumn:
    if column.offsets is None:
        return SparseColumn(column.values[start:stop])
    offsets = np.asarray(column.offsets)[start : stop + 1]
    return SparseColumn(column.values[offsets[0] : offsets[-1]], offsets - offsets[0])


def _record(
    log: BadLineLog, reason: str, lines: np.ndarray, bad: np.ndarray, column: pd.Series, words: tuple[str, str]
) -> None:
    """Log the ``bad`` rows; the problem reads ``words[0] + repr(cell) + words[1]``."""
    if bad.any():
        bad_cells = column.to_numpy(dtype=object)[bad]
        log.add(reason, lines[bad], lambda k: f"{words[0]}{bad_cells[k]!r}{words[1]}")
