"""Raw rows → batches of slots for a :class:`ServingModel`, with the training cell rules.

Raw cells are checked by :func:`sharkrec.data.encode.parse_rows` (the rules training used: missing
markers, dense transform, multi-hot separators), then every sparse value goes through the
artifact's vocabulary straight to its slot. Labels are not needed to predict: where a row has
none, a placeholder 0 is parsed and ignored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from sharkrec.data.batch import Batch, FieldIds
from sharkrec.data.encode import ParsedRows, parse_rows, signed_log1p
from sharkrec.data.formats.text import RawTable
from sharkrec.data.schema import FieldKind, Schema, describe_names
from sharkrec.errors import DataError

if TYPE_CHECKING:
    from sharkrec.export.engine import ServingModel

PLACEHOLDER_LABEL = "0"


def encode_parsed(model: ServingModel, rows: ParsedRows) -> Batch:
    """A :class:`Batch` of slots (B = len(rows)); a pruned field gets placeholder ids it never reads."""
    n = len(rows)
    sparse = []
    for spec, column in zip(model.schema.sparse, rows.sparse, strict=True):
        vocabulary = model.vocabularies.get(spec.name)
        if vocabulary is None:  # pruned: only the batch size is read
            sparse.append(FieldIds(torch.zeros(n, dtype=torch.int64)))
            continue
        slots = torch.from_numpy(vocabulary.slots(column.values))
        offsets = None if column.offsets is None else torch.from_numpy(np.asarray(column.offsets, dtype=np.int64))
        sparse.append(FieldIds(slots, offsets))
    dense = torch.from_numpy(signed_log1p(rows.dense)).reshape(n, -1)
    return Batch(dense, tuple(sparse), torch.from_numpy(np.ascontiguousarray(rows.labels)))


def by_name(schema: Schema) -> Schema:
    """``schema`` with every field read from the column of its own name (records, JSON)."""
    return schema.with_fields([dataclasses.replace(spec, column=None) for spec in schema.fields])


def records_table(records: Sequence[Mapping[str, Any]], schema: Schema, source: str = "request") -> RawTable:
    """A :class:`RawTable` of JSON-like records ``{field: value}``; labels are optional and ignored.

    Sparse values are strings or numbers (a list for a multi-hot field), dense values numbers or
    strings that parse as numbers; ``None`` or an absent field is a missing value. A field the
    schema does not know raises :class:`DataError` naming it.
    """
    known = {spec.name: spec for spec in schema.fields}
    columns: dict[str, list[Any]] = {spec.name: [] for spec in schema.fields}
    for i, record in enumerate(records):
        unknown = [name for name in record if name not in known]
        if unknown:
            raise DataError(f"row {i}: fields {unknown} are not in the model's schema; known fields: "
                            f"{describe_names(n for n in known if known[n].kind is not FieldKind.LABEL)}")
        for name, spec in known.items():
            value = record.get(name)
            if spec.kind is FieldKind.LABEL:
                value = PLACEHOLDER_LABEL
            elif isinstance(value, (list, tuple)):
                if not spec.is_multi_hot:
                    raise DataError(f"row {i}: field {name!r} takes one value, got a list; send a single value")
                value = str(spec.separator).join(str(v) for v in value)
            elif value is not None and not isinstance(value, str):
                value = str(value) if not isinstance(value, float) or not value.is_integer() else str(int(value))
            columns[name].append(value)
    frame = pd.DataFrame({name: pd.Series(values, dtype=object) for name, values in columns.items()})
    lines = np.arange(1, len(records) + 1, dtype=np.int64)
    return RawTable(frame, lines, source)


def parse_records(model: ServingModel, records: Sequence[Mapping[str, Any]]) -> ParsedRows:
    """Checked rows of ``records``; the first bad cell raises :class:`DataError` naming its row (0-based)."""
    schema = by_name(model.schema)
    parsed, bad = parse_rows(records_table(records, schema), schema)
    if bad.count:
        row = bad.first_line_numbers[0] - 1 if bad.first_line_numbers else "?"
        raise DataError(f"row {row}: {bad.first_problem}; fix the value (dense fields take numbers)")
    return parsed
