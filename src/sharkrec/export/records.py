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
import operator
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from sharkrec.data.batch import Batch, FieldIds
from sharkrec.data.encode import MISSING_VALUE, signed_log1p
from sharkrec.data.formats.text import MISSING_MARKERS
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
        self.dense_names = schema.dense_names
        self.num_tasks = len(schema.labels)
        self.sparse: list[tuple[str, str | None, ServingVocabulary | None, dict[Any, int]]] = [
            (spec.name, spec.separator, model.vocabularies.get(spec.name), {}) for spec in schema.sparse]
        self.columns = (*self.dense_names, *(spec.name for spec in schema.sparse))
        self.getter = operator.itemgetter(*self.columns)
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
        columns = self._columns(records)  # one tuple of B cells per dense field, then per sparse field
        dense_columns = columns[:len(self.dense_names)]
        values = np.asarray([_dense_column(column) for column in dense_columns], dtype=np.float64).reshape(-1, n)
        dense = torch.from_numpy(signed_log1p(np.ascontiguousarray(values.T)))
        fields = [self._field(column, *field)
                  for column, field in zip(columns[len(self.dense_names):], self.sparse, strict=True)]
        single = [k for k, (slots, offsets) in enumerate(fields) if offsets is None]
        slots = torch.from_numpy(np.array([fields[k][0] for k in single], dtype=np.int64).reshape(len(single), n))
        by_field = dict(zip(single, slots.unbind(0), strict=True))  # one tensor for every single-value field
        sparse = tuple(FieldIds(by_field[k]) if offsets is None else FieldIds(
            torch.tensor(slots, dtype=torch.int64), torch.tensor(offsets, dtype=torch.int64))
            for k, (slots, offsets) in enumerate(fields))
        return Batch(dense, sparse, torch.zeros((n, self.num_tasks), dtype=torch.float32))

    def _columns(self, records: Sequence[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
        """The records' cells by column (dense fields, then sparse), read with C-level calls where every
        record has every field; a record that is not a dict or names an unknown field is unusual."""
        if not records:
            return [() for _ in self.columns]
        try:
            cells = list(map(self.getter, records))  # KeyError: a record without some field
        except (KeyError, TypeError):
            cells = []
            for record in records:
                if type(record) is not dict:
                    raise _Unusual from None
                cells.append(tuple(record.get(name) for name in self.columns))
        if len(self.columns) == 1:
            cells = [(cell,) for cell in cells]
        if set(map(type, records)) != {dict}:
            raise _Unusual
        if set(map(len, records)) != {len(self.columns)}:  # some record lacks a field or names another one
            for record in records:
                if not record.keys() <= self.known:
                    raise _Unusual
        return list(zip(*cells, strict=True))

    def _field(self, column: tuple[Any, ...], name: str, separator: str | None,
               vocabulary: ServingVocabulary | None, cache: dict[Any, int]) -> tuple[list[int], list[int] | None]:
        """(B,) slots and ``None``, or (nnz,) slots and (B + 1,) offsets for a multi-hot field."""
        if separator is None:
            if not set(map(type, column)) <= _SINGLE_TYPES:
                raise _Unusual  # a list for a single-value field, a boolean, an object: the pandas path decides
            if vocabulary is None:  # pruned: only the batch size is read (the cells were still checked)
                return [0] * len(column), None
            return self._slots(column, vocabulary, cache), None
        keys: list[Any] = []
        offsets = [0]
        for cell in column:
            if type(cell) is list:
                if not set(map(type, cell)) <= _TOKEN_TYPES:
                    raise _Unusual
                text: str | None = separator.join(str(v) for v in cell)
            else:
                text = _text(cell)
            if text is not None and text not in _MISSING:
                keys.extend(token for token in (t.strip() for t in text.split(separator)) if token)
            offsets.append(len(keys))
        if vocabulary is None:
            return [0] * len(keys), offsets
        return self._slots(keys, vocabulary, cache), offsets

    def _slots(self, cells: Sequence[Any], vocabulary: ServingVocabulary, cache: dict[Any, int]) -> list[int]:
        """Slots of raw cells (str / int / float / None), through the cache keyed by the raw cell. A whole
        float and its int share an entry (``5.0 == 5`` in a dict), as they share their text."""
        slots: list[Any] = list(map(cache.get, cells))
        if None in slots:
            misses = list(dict.fromkeys(cell for cell, slot in zip(cells, slots, strict=True) if slot is None))
            texts = [_key(cell) for cell in misses]
            if len(cache) + len(misses) > self.cache_size:
                cache.clear()
            cache.update(zip(misses, vocabulary.slots(np.asarray(texts, dtype=object)).tolist(), strict=True))
            slots = list(map(cache.__getitem__, cells))
        return slots


_SINGLE_TYPES = frozenset({str, int, float, type(None)})
_TOKEN_TYPES = frozenset({str, int})
_DENSE_TYPES = frozenset({int, float, type(None)})


def _key(cell: Any) -> str:
    """The vocabulary key of a single sparse cell: its text, ``<missing>`` for an absent or marked cell."""
    text = _text(cell)
    return MISSING_VALUE if text is None or text in _MISSING else text


def _dense_column(column: tuple[Any, ...]) -> np.ndarray:
    """(B,) float64 of one dense field's cells, NaN where missing; numbers are converted by numpy in one call."""
    if set(map(type, column)) <= _DENSE_TYPES:
        try:
            values = np.asarray(column, dtype=np.float64)  # None → NaN
        except OverflowError:
            raise _Unusual from None
        if np.isinf(values).any():
            raise _Unusual
        return values
    return np.asarray([_dense_value(cell) for cell in column], dtype=np.float64)


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
