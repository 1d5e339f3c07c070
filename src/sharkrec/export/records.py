"""JSON records → a batch of slots without pandas, for small HTTP requests.

:func:`sharkrec.export.rows.parse_records` applies the training cell rules through pandas, one
column at a time: exact, but tens of milliseconds of fixed cost per call. :class:`RecordEncoder`
applies the same rules to plain Python values, cell by cell, and resolves sparse values through a
per-field cache of *raw text → slot* filled by :meth:`ServingVocabulary.slots` itself, so a slot
is always the one the artifact's vocabulary gives:

- dense: ``None``, ``""`` or ``"?"`` is missing (0 after the transform); a number or a string
  ``float()`` reads is the value, then ``sign(x) * log(1 + |x|)`` (the same function as training);
- sparse: numbers read as their text (whole floats as integers, ``5.0`` → ``"5"``); ``None``,
  ``""`` or ``"?"`` is the value ``<missing>``; multi-hot lists are joined with the field's
  separator, then split, stripped, empty tokens dropped (a missing cell is an empty bag);
- unknown values get the vocabulary's OOV slot; labels are ignored.

Anything else (an unknown field, a list for a single-value field, a dense value that is not a
finite number, an unusual Python type) goes to the pandas path, which gives the exact
:class:`DataError` of the first bad row, or its result where the cell is merely unusual.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from sharkrec.data.batch import Batch, FieldIds
from sharkrec.data.encode import MISSING_VALUE, signed_log1p
from sharkrec.data.formats.text import MISSING_MARKERS
from sharkrec.data.schema import FieldKind
from sharkrec.export.rows import parse_records

if TYPE_CHECKING:
    from sharkrec.export.engine import ServingModel
    from sharkrec.export.tables import ServingVocabulary

_MISSING = frozenset(MISSING_MARKERS)


class _Unusual(Exception):
    """A cell the fast path does not handle; the pandas path decides."""


class RecordEncoder:
    """Encodes JSON records ``{field: value}`` of one :class:`ServingModel` into batches of slots.

    ``cache_size`` bounds each field's raw text → slot cache (it is emptied when full). Not
    thread-safe: use one encoder per thread (the server has one model thread).
    """

    def __init__(self, model: ServingModel, cache_size: int = 262_144) -> None:
        schema = model.schema
        self.model = model
        self.cache_size = cache_size
        self.known = frozenset(spec.name for spec in schema.fields)
        self.lists_allowed = frozenset(spec.name for spec in schema.fields if spec.is_multi_hot
                                       or spec.kind is FieldKind.LABEL)
        self.dense_names = schema.dense_names
        self.num_tasks = len(schema.labels)
        self.sparse: list[tuple[str, str | None, ServingVocabulary | None, dict[str, int]]] = [
            (spec.name, spec.separator, model.vocabularies.get(spec.name), {}) for spec in schema.sparse]
        self.fast_calls = 0
        self.fallback_calls = 0

    def encode(self, records: Sequence[Mapping[str, Any]]) -> Batch:
        """A :class:`Batch` of B = len(records) rows of slots, identical to ``model.encode(parse_records(...))``.

        Raises :class:`DataError` naming the row (0-based) and field of the first bad cell.
        """
        try:
            batch = self._fast(records)
        except _Unusual:
            self.fallback_calls += 1
            return self.model.encode(parse_records(self.model, records))
        self.fast_calls += 1
        return batch

    def _fast(self, records: Sequence[Mapping[str, Any]]) -> Batch:
        n = len(records)
        known, lists_allowed = self.known, self.lists_allowed
        for record in records:
            if type(record) is not dict:
                raise _Unusual
            for name, value in record.items():
                if name not in known or (type(value) is list and name not in lists_allowed):
                    raise _Unusual
        values = [_dense_value(record.get(name)) for record in records for name in self.dense_names]
        dense = torch.from_numpy(signed_log1p(np.asarray(values, dtype=np.float64).reshape(n, len(self.dense_names))))
        fields = [self._field(records, *field) for field in self.sparse]
        single = [k for k, (slots, offsets) in enumerate(fields) if offsets is None]
        columns = torch.tensor([fields[k][0] for k in single], dtype=torch.int64).reshape(len(single), n).unbind(0)
        by_field = dict(zip(single, columns, strict=True))  # one tensor for every single-value field: (K, B) rows
        sparse = tuple(FieldIds(by_field[k]) if offsets is None else FieldIds(
            torch.tensor(slots, dtype=torch.int64), torch.tensor(offsets, dtype=torch.int64))
            for k, (slots, offsets) in enumerate(fields))
        return Batch(dense, sparse, torch.zeros((n, self.num_tasks), dtype=torch.float32))

    def _field(self, records: Sequence[Mapping[str, Any]], name: str, separator: str | None,
               vocabulary: ServingVocabulary | None, cache: dict[str, int]) -> tuple[list[int], list[int] | None]:
        """(B,) slots and ``None``, or (nnz,) slots and (B + 1,) offsets for a multi-hot field."""
        if vocabulary is None:  # pruned: only the batch size is read (the cells were still checked above)
            return [0] * len(records), None
        keys: list[str]
        offsets: list[int] | None = None
        if separator is None:
            texts = [_text(record.get(name)) for record in records]
            keys = [MISSING_VALUE if text is None or text in _MISSING else text for text in texts]
        else:
            keys, offsets = [], [0]
            for record in records:
                cell = record.get(name)
                text = separator.join(str(v) for v in cell) if type(cell) is list else _text(cell)
                if text is not None and text not in _MISSING:
                    keys.extend(token for token in (t.strip() for t in text.split(separator)) if token)
                offsets.append(len(keys))
        return self._slots(keys, vocabulary, cache), offsets

    def _slots(self, keys: list[str], vocabulary: ServingVocabulary, cache: dict[str, int]) -> list[int]:
        get = cache.get
        slots = [get(key, -1) for key in keys]
        if -1 in slots:
            misses = list(dict.fromkeys(key for key, slot in zip(keys, slots, strict=True) if slot < 0))
            if len(cache) + len(misses) > self.cache_size:
                cache.clear()
            cache.update(zip(misses, vocabulary.slots(np.asarray(misses, dtype=object)).tolist(), strict=True))
            slots = [cache[key] for key in keys]
        return slots


def _dense_value(value: Any) -> float:
    """A dense cell as float64, NaN when missing; anything not a finite number is unusual."""
    kind = type(value)
    if value is None:
        return math.nan
    if kind is str:
        if value in _MISSING:
            return math.nan
        try:
            number = float(value)
        except ValueError:
            raise _Unusual from None
    elif kind is int or kind is float:
        try:
            number = float(value)
        except OverflowError:
            raise _Unusual from None
    else:
        raise _Unusual
    if not math.isfinite(number):
        raise _Unusual
    return number


def _text(value: Any) -> str | None:
    """A single sparse cell as the text the training rules read (``None`` when absent)."""
    kind = type(value)
    if kind is str or value is None:
        return value
    if kind is int:
        return str(value)
    if kind is float:
        return str(int(value)) if value.is_integer() else str(value)
    raise _Unusual
