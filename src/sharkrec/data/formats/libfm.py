"""libFM format (Frappe as used by NFM/AFM/BARS): ``label idx:value idx:value ...``.

Every line has the same number K of ``idx:value`` pairs and pair j always belongs to field j; the
raw value of field j is its global index as written (``"5042"``). The value after the colon must
be a number and is otherwise ignored (all fields are categorical). Labels ``1``/``+1`` mean
positive, ``-1``/``0`` negative. Bad lines: another number of pairs (``pair_count``), a pair that
is not ``idx:number`` (``pair_syntax``), any other label (``label``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from sharkrec.data.formats.text import BadLineLog, RawTable, read_bytes, split_delimited
from sharkrec.data.schema import FieldKind, FieldSpec, Schema
from sharkrec.errors import DataError

LABEL = "label"
FRAPPE_FIELDS = ("user", "item", "daytime", "weekday", "isweekend", "homework", "cost", "weather", "country", "city")
_PAIR = r"\d+:[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
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


def count_libfm_fields(path: Path) -> int:
    """K, the number of pairs on the first non-blank line of ``path``."""
    for line in _normalise(read_bytes(path)).split(b"\n"):
        if line:
            return len(line.split(b" ")) - 1
    raise DataError(f"data file {path} is empty; pass a file that holds data rows")


def read_libfm(path: Path) -> RawTable:
    """Cells of a libFM file: ``label`` ("1" or "0") and one column per field holding the index."""
    source = str(path)
    table = split_delimited(
        _normalise(read_bytes(path)), source, " ",
        describe_width=lambda found, expected: f"expected {expected - 1} idx:value pairs, found {found - 1}",
        width_reason="pair_count",
    )
    frame, lines = table.frame, table.line_numbers
    names = libfm_field_names(frame.shape[1] - 1)
    log = BadLineLog(source)
    ok = np.ones(len(frame), dtype=bool)

    raw_label = frame[0]
    label_value = pd.to_numeric(raw_label, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isin(label_value, (-1.0, 0.0, 1.0))
    bad_labels = raw_label.to_numpy()[bad]
    log.add("label", lines[bad], lambda k: f"label {bad_labels[k]!r} is not 1, -1 or 0")
    ok &= ~bad

    columns: dict[str, object] = {LABEL: np.where(label_value == 1.0, "1", "0")}
    for position, name in enumerate(names, start=1):
        pairs = frame[position].astype(str)
        bad = ~pairs.str.fullmatch(_PAIR).to_numpy(dtype=bool, na_value=False)
        bad_pairs = pairs.to_numpy()[bad]
        log.add("pair_syntax", lines[bad], _describe_pair(position, bad_pairs))
        ok &= ~bad
        columns[name] = pairs.str.replace(r":.*", "", regex=True).to_numpy(dtype=object)

    cells = pd.DataFrame(columns)[ok].reset_index(drop=True)
    return RawTable(cells, lines[ok], source, (table.bad_lines[0].merge(log.summary()),))


def _describe_pair(position: int, bad_pairs: np.ndarray) -> Callable[[int], str]:
    return lambda k: f"pair {position} {bad_pairs[k]!r} is not idx:number"


def _normalise(data: bytes) -> bytes:
    """One space between tokens, none at line ends."""
    if not any(marker in data for marker in (b"\t", b"  ", b" \n", b"\n ")) and not data[:1].isspace():
        return data
    return _EDGE_SPACE.sub(b"", _WHITESPACE_RUN.sub(b" ", data))

