"""libFM format (Frappe as used by NFM/AFM/BARS): ``label idx:value idx:value ...``.

Every line has the same number K of ``idx:value`` pairs and pair j always belongs to field j; the
raw value of field j is its global index as written (``"5042"``). The value after the colon must
be a number and is otherwise ignored (all fields are categorical). Labels ``1``/``+1`` mean
positive, ``-1``/``0`` negative. Bad lines: another number of pairs (``pair_count``), a pair that
is not ``idx:number`` (``pair_syntax``), any other label (``label``).

K is the most common pair count of the first lines, so one malformed line (even one with 160,000
pairs) is a bad line, not the schema. Work is linear in the number of cells: the pairs of all
columns are checked by one vectorised regex pass, never one pandas operation per column.
"""

from __future__ import annotations

import io
import itertools
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from sharkrec.data.formats.text import BadLineLog, RawTable, read_bytes, split_delimited
from sharkrec.data.schema import FieldKind, FieldSpec, Schema
from sharkrec.errors import DataError

LABEL = "label"
FRAPPE_FIELDS = ("user", "item", "daytime", "weekday", "isweekend", "homework", "cost", "weather", "country", "city")
_PAIR = r"\d+:[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
# lines whose pair counts decide K
FIELD_COUNT_LINES = 1000
_WHITESPACE_RUN = re.compile(rb"[ \t]+")
_EDGE_SPACE = re.compile(rb"^ | $", re.MULTILINE)


def libfm_field_names(num_fields: int) -> tuple[str, ...]:
    """The Frappe names when there are exactly 10 fields, else ``f1..fK``."""
    if num_fields == len(FRAPPE_FIELDS):
        return FRAPPE_FIELDS
    return tuple(f"f{j}" for j in range(1, num_fields + 1))


def libfm_schema(num_fields: int) -> Schema:
    """One label and ``num_fields`` sparse fields (see :func:`libfm_field_names`)."""
    if num_fields < 1:
        raise DataError(f"a libFM file needs at least one idx:value pair per line, got {num_fields}")
    fields = (
        FieldSpec(LABEL, FieldKind.LABEL),
        *(FieldSpec(name, FieldKind.SPARSE) for name in libfm_field_names(num_fields)),
    )
    name = "frappe" if num_fields == len(FRAPPE_FIELDS) else "libfm"
    return Schema(fields, name=name, delimiter=" ", has_header=False)


def libfm_pair_count(schema: Schema) -> int | None:
    """K when ``schema`` is a libFM schema as :func:`libfm_schema` builds it (label + K named fields), else None.

    Lines of a built-in schema must hold exactly K pairs; for another schema (a subset of the fields,
    say) the reader keeps the most common pair count instead.
    """
    k = len(schema.sparse)
    built_in = schema.label_names == (LABEL,) and not schema.dense and schema.sparse_names == libfm_field_names(k)
    return k if built_in and k >= 1 else None


def count_libfm_fields(path: Path) -> int:
    """K, the most common number of pairs on the first 1,000 non-blank lines of ``path`` (ties: the earliest)."""
    lines = (line for line in io.BytesIO(_normalise(read_bytes(path))) if line.strip())
    counts = Counter(line.rstrip(b"\n").count(b" ") for line in itertools.islice(lines, FIELD_COUNT_LINES))
    if not counts:
        raise DataError(f"data file {path} is empty; pass a file that holds data rows")
    return max(counts, key=counts.__getitem__)


def read_libfm(path: Path, n_pairs: int | None = None) -> RawTable:
    """Cells of a libFM file (see :func:`parse_libfm`)."""
    return parse_libfm(read_bytes(path), str(path), n_pairs)


def parse_libfm(data: bytes, source: str, n_pairs: int | None = None) -> RawTable:
    """Cells of libFM text held in memory: ``label`` ("1" or "0") and one column per field holding the index.

    ``data`` is text as :func:`read_bytes` returns it, ``source`` names it in errors. Lines with
    another number of pairs than ``n_pairs`` (default: the most common count) are bad lines.
    """
    table = split_delimited(
        _normalise(data), source, " ",
        n_columns=None if n_pairs is None else n_pairs + 1,
        encoding="latin-1",  # any byte decodes; a non-ASCII byte makes its pair or label bad, not a crash
        describe_width=lambda found, expected: f"expected {expected - 1} idx:value pairs, found {found - 1}",
        width_reason="pair_count",
    )
    frame, lines = table.frame, table.line_numbers
    log = BadLineLog(source)

    raw_label = frame.iloc[:, 0]
    label_value = pd.to_numeric(raw_label, errors="coerce").to_numpy(dtype=np.float64)
    bad_label = ~np.isin(label_value, (-1.0, 0.0, 1.0))
    bad_labels = raw_label.to_numpy()[bad_label]
    log.add("label", lines[bad_label], lambda k: f"label {bad_labels[k]!r} is not 1, -1 or 0")

    pairs = frame.iloc[:, 1:].to_numpy(dtype=object)  # (N, K)
    indices, bad_pair = _pair_indices(pairs)  # (N, K) each
    bad_rows = bad_pair.any(axis=1)
    first_bad = bad_pair[bad_rows].argmax(axis=1) if bad_rows.any() else np.zeros(0, np.int64)  # per bad line
    bad_cells = pairs[bad_rows, first_bad]
    log.add("pair_syntax", lines[bad_rows],
            lambda k: f"pair {first_bad[k] + 1} {bad_cells[k]!r} is not idx:number")

    ok = ~bad_label & ~bad_rows
    cells = pd.DataFrame(indices[ok], columns=list(libfm_field_names(pairs.shape[1])))
    cells.insert(0, LABEL, np.where(label_value[ok] == 1.0, "1", "0").astype(object))
    return RawTable(cells, lines[ok], source, (table.bad_lines[0].merge(log.summary()),))


def _pair_indices(pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index strings, bad) for an (N, K) array of ``idx:value`` cells: two string operations over all N*K
    cells at once (vectorised by pyarrow), however many columns there are."""
    flat = pd.Series(pairs.ravel(), dtype=object).astype(str)
    bad = ~flat.str.fullmatch(_PAIR).to_numpy(dtype=bool, na_value=False)
    indices = flat.str.replace(r"^(\d+):.*", r"\1", regex=True).to_numpy(dtype=object)  # anchored: 2x faster
    return indices.reshape(pairs.shape), bad.reshape(pairs.shape)


def _normalise(data: bytes) -> bytes:
    """One space between tokens, none at line ends."""
    if not any(marker in data for marker in (b"\t", b"  ", b" \n", b"\n ")) and not data[:1].isspace():
        return data
    return _EDGE_SPACE.sub(b"", _WHITESPACE_RUN.sub(b" ", data))

