"""Readers of raw input files, by format, and the built-in schema of each format.

Every reader returns a :class:`RawTable` (raw cells, 1-based line numbers, :class:`BadLines`).
:func:`parse_raw` parses text held in memory the same way (batch prediction's chunks, no temporary files).
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

from sharkrec.data.formats.criteo import criteo_schema, parse_criteo, read_criteo
from sharkrec.data.formats.libfm import count_libfm_fields, libfm_pair_count, libfm_schema, parse_libfm, read_libfm
from sharkrec.data.formats.movielens import movielens_schema, read_movielens
from sharkrec.data.formats.tabular import HeaderLine, parse_delimited, read_delimited, read_header_line, read_parquet
from sharkrec.data.formats.text import BadLines, OnBadLine, RawTable, text_bytes
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
    "parse_raw",
    "read_raw",
    "schema_for",
]

GENERATED_FORMATS = ("synthetic",)
# formats whose input is one text file, so a part of it held in memory can be parsed (parse_raw)
TEXT_FORMATS = ("criteo", "libfm", "csv", "tsv")


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
        return read_libfm(path, libfm_pair_count(schema))
    if data_format is DataFormat.MOVIELENS:
        return read_movielens(path)
    if data_format is DataFormat.PARQUET:
        return read_parquet(path, schema)
    return read_delimited(path, schema, data_format.value, header)


def parse_raw(fmt: str | DataFormat, data: bytes, source: str, schema: Schema) -> RawTable:
    """Raw cells of text in a :data:`TEXT_FORMATS` format held in memory (uncompressed), as :func:`read_raw`
    reads them from a file; errors and bad lines name ``source``."""
    data_format = DataFormat.parse(fmt)
    if data_format.value not in TEXT_FORMATS:
        known = ", ".join(TEXT_FORMATS)
        raise ConfigError(f"format {data_format.value!r} is not parsed from memory; use one of {known}")
    data = text_bytes(data, source)
    if data_format is DataFormat.CRITEO:
        return parse_criteo(data, source)
    if data_format is DataFormat.LIBFM:
        return parse_libfm(data, source, libfm_pair_count(schema))
    return parse_delimited(data, source, schema, data_format.value)
