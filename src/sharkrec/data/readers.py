"""Readers of raw input files, by format, and the built-in schema of each format.

Every reader returns a :class:`RawTable` (raw cells, 1-based line numbers, :class:`BadLines`).
The format modules live in :mod:`sharkrec.data.formats`:

========== ============================================================ ===================
format     input                                                        schema
========== ============================================================ ===================
criteo     raw Criteo TSV: label, I1..I13, C1..C26 (plain or .gz)       built in
libfm      ``label idx:value ...`` (Frappe: 10 named fields)            built in
movielens  the ml-100k folder (u.data, u.user, u.item)                  built in
csv, tsv   any delimited text file                                      ``--schema`` needed
parquet    any Parquet file                                             ``--schema`` needed
========== ============================================================ ===================
"""

from __future__ import annotations

import enum
from pathlib import Path

from sharkrec.data.formats.criteo import criteo_schema, read_criteo
from sharkrec.data.formats.libfm import count_libfm_fields, libfm_schema, read_libfm
from sharkrec.data.formats.movielens import movielens_schema, read_movielens
from sharkrec.data.formats.tabular import HeaderLine, read_delimited, read_header_line, read_parquet
from sharkrec.data.formats.text import BadLines, OnBadLine, RawTable
from sharkrec.data.schema import Schema
from sharkrec.data.sources import find_sources
from sharkrec.errors import ConfigError

__all__ = [
    "BadLines",
    "DataFormat",
    "HeaderLine",
    "OnBadLine",
    "RawTable",
    "criteo_schema",
    "header_line",
    "libfm_schema",
    "movielens_schema",
    "read_raw",
    "schema_for",
]

GENERATED_FORMATS = ("synthetic",)


class DataFormat(str, enum.Enum):
    """The raw-data formats sharkrec reads."""

    CRITEO = "criteo"
    LIBFM = "libfm"
    MOVIELENS = "movielens"
    CSV = "csv"
    TSV = "tsv"
    PARQUET = "parquet"

    @classmethod
    def parse(cls, value: str | DataFormat) -> DataFormat:
        try:
            return cls(value)
        except ValueError:
            known = ", ".join(f.value for f in cls)
            if value in GENERATED_FORMATS:
                raise ConfigError(
                    f"format {value!r} is generated, not read from files; use sharkrec.data.synthetic "
                    f"(the CLI routes it), or pass one of the file formats: {known}"
                ) from None
            raise ConfigError(f"format {value!r} is not known; use one of {known}") from None


def schema_for(fmt: str | DataFormat, path: str | Path) -> Schema:
    """The built-in schema of criteo, libfm (K read from the first line of ``path``) or movielens.

    csv, tsv and parquet have none: the user describes the file with ``--schema``.
    """
    data_format = DataFormat.parse(fmt)
    if data_format is DataFormat.CRITEO:
        return criteo_schema()
    if data_format is DataFormat.MOVIELENS:
        return movielens_schema()
    if data_format is DataFormat.LIBFM:
        return libfm_schema(count_libfm_fields(find_sources(Path(path), data_format.value).train[0]))
    raise ConfigError(
        f"format {data_format.value!r} needs a schema; describe the file's columns in a JSON schema and pass it "
        "with --schema FILE (example: examples/schemas/adult.json)"
    )


def header_line(fmt: str | DataFormat, path: str | Path, schema: Schema) -> HeaderLine | None:
    """The header line of a csv/tsv file whose schema has one (None for other formats): the other files
    of a split folder are read against the first train file's (see :mod:`sharkrec.data.formats.tabular`)."""
    data_format = DataFormat.parse(fmt)
    if data_format not in (DataFormat.CSV, DataFormat.TSV):
        return None
    return read_header_line(Path(path), schema, data_format.value)


def read_raw(fmt: str | DataFormat, path: str | Path, schema: Schema, header: HeaderLine | None = None) -> RawTable:
    """Raw cells of one input (a file; for movielens the ml-100k folder or its ``u.data``).

    ``header``: for csv/tsv, the header line of the split's first file (:func:`header_line`).
    """
    data_format = DataFormat.parse(fmt)
    path = Path(path)
    if data_format is DataFormat.CRITEO:
        return read_criteo(path)
    if data_format is DataFormat.LIBFM:
        return read_libfm(path)
    if data_format is DataFormat.MOVIELENS:
        return read_movielens(path)
    if data_format is DataFormat.PARQUET:
        return read_parquet(path, schema)
    return read_delimited(path, schema, data_format.value, header)
