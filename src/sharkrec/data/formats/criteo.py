"""Criteo Display Advertising Challenge, raw format.

One sample per line, 40 tab-separated columns, no header: ``label`` (0/1), ``I1..I13`` (integer
counts, may be negative, empty = missing), ``C1..C26`` (32-bit hashes as 8 hex digits, empty =
missing). Lines with another number of columns are bad lines (``column_count``); a non-numeric
dense value or a label other than 0/1 is found by the schema check that follows every reader.
"""

from __future__ import annotations

from pathlib import Path

from sharkrec.data.formats.text import RawTable, read_bytes, split_delimited
from sharkrec.data.schema import FieldKind, FieldSpec, Schema

LABEL = "label"
DENSE_FIELDS = tuple(f"I{i}" for i in range(1, 14))
SPARSE_FIELDS = tuple(f"C{i}" for i in range(1, 27))
COLUMNS = (LABEL, *DENSE_FIELDS, *SPARSE_FIELDS)


def criteo_schema() -> Schema:
    """1 label, 13 dense and 26 sparse fields, named as in the Criteo data description."""
    fields = (
        FieldSpec(LABEL, FieldKind.LABEL),
        *(FieldSpec(name, FieldKind.DENSE) for name in DENSE_FIELDS),
        *(FieldSpec(name, FieldKind.SPARSE) for name in SPARSE_FIELDS),
    )
    return Schema(fields, name="criteo", delimiter="\t", has_header=False)


def read_criteo(path: Path) -> RawTable:
    """Cells of a raw Criteo file (plain or gzip): columns ``label, I1..I13, C1..C26``.

    The label and dense columns come back as float64 (NaN = missing) when every cell is a number,
    else as strings for the schema check to find the bad cells.
    """
    return parse_criteo(read_bytes(path), str(path))


def parse_criteo(data: bytes, source: str, first_line: int = 1) -> RawTable:
    """Cells of Criteo text held in memory (as :func:`read_bytes` returns it), named ``source`` in errors;
    ``first_line`` numbers the first line of ``data`` (a later chunk of a file)."""
    table = split_delimited(
        data, source, "\t", n_columns=len(COLUMNS), float_columns=range(1 + len(DENSE_FIELDS)), first_line=first_line
    )
    table.frame.columns = list(COLUMNS)
    return table
