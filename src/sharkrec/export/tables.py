"""Serving tables: each kept field's rows in tier order, hottest first, and the raw value → slot map.

At export every row of a field gets one *slot*. Slots are ordered by tier, then by training
frequency (hottest first), then by row id::

    slots [0, n32)                 fp32 rows      payload (n32, D) float32
    slots [n32, n32+n16)           fp16 rows      payload (n16, D) float16
    slots [.., ..+n8)              int8 rows      payload (n8, D) int8 + scale (n8,) float32
    slots [.., ..+n4)              int4 rows      payload (n4, ceil(D/2)) uint8 + scale (n4,) float32

so a row's tier is a slot range (the precision word of Table 1 is implicit) and the hot rows of
every tier sit together in memory. The permutation is folded into the vocabulary: the raw keys are
stored in slot order (the OOV slot left out), so the position ``p`` a hash lookup returns *is* the
slot, shifted by one past the OOV slot: ``slot = p + (p >= oov_slot)``; unknown values get
``oov_slot``. No row → slot table exists at serving time.

Clustered fields (Saec, :class:`~sharkrec.cluster.embedding.ClusteredEmbedding`): the slots are the
cluster rows, ordered the same way with a cluster row's frequency = the sum of its member values'
training counts. Several keys share a slot there, so the keys stay in vocabulary order next to an
explicit (n_keys,) int32 key → slot array: ``slot = key_slots[p]``. A field whose map is one row per
value (e.g. a field Saec left whole) keeps the zero-extra-bytes layout above.

Stores that compute their rows from the id (the hashed layers, ``FieldEmbedding.computes_rows``) hold
no per-value rows to order: their fields have no tiers, and the raw keys stay in vocabulary order with
the OOV slot 0, so a value's slot *is* its vocabulary row, the id the layer was trained on
(:mod:`sharkrec.export.layer` stores and rebuilds the layer).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from sharkrec.data.vocab import Vocabulary
from sharkrec.errors import CheckpointError, ConfigError
from sharkrec.export.shared import SortedKeys, StrKeys
from sharkrec.model.embedding import FieldEmbedding, layers
from sharkrec.quant.codec import Precision

TIERS = tuple(Precision)  # slot order of the tiers: fp32, fp16, int8, int4


@dataclass(frozen=True)
class TierPool:
    """The rows of one tier of one field, in slot order.

    ``payload``: (n, D) float32 / (n, D) float16 / (n, D) int8 / (n, ceil(D/2)) uint8;
    ``scale``: (n,) float32 for int8 and int4 (value = scale · code), else ``None``;
    ``traffic``: training occurrences of these rows (from the vocabulary counts).
    """

    precision: Precision
    payload: Tensor
    scale: Tensor | None
    traffic: int

    @property
    def rows(self) -> int:
        return int(self.payload.shape[0])


@dataclass(frozen=True)
class ServingVocabulary:
    """Raw value → slot of one field.

    ``keys`` (n,) (a loaded str vocabulary keeps them as :class:`~sharkrec.export.shared.StrKeys`):
    without ``key_slots``, the raw values in slot order without the OOV slot (one key
    per slot); with ``key_slots`` (n,) int32, key ``keys[p]`` reads slot ``key_slots[p]`` (clustered
    fields, where keys share slots). ``key_kind`` is ``"int"`` (keys int64) or ``"str"``. Values of
    another type are converted (``"5"`` reads as 5 for an int vocabulary; 5 reads as ``"5"`` for a
    str one).
    """

    name: str
    key_kind: str
    keys: np.ndarray | StrKeys
    oov_slot: int
    key_slots: np.ndarray | None = None
    lookup: SortedKeys | None = None  # binary search over mapped sorted keys instead of a hash table

    @property
    def num_slots(self) -> int:
        """One past the highest slot a value reaches."""
        if self.key_slots is None:
            return len(self.keys) + 1
        return max(self.oov_slot, int(self.key_slots.max(initial=0))) + 1

    @property
    def key_slot_bytes(self) -> int:
        """Bytes of the explicit key → slot array (0 in the one-key-per-slot layout)."""
        return 0 if self.key_slots is None else int(self.key_slots.nbytes)

    def index(self) -> pd.Index:
        cached = self.__dict__.get("_index")
        if cached is None:
            cached = pd.Index(np.asarray(self.keys))
            object.__setattr__(self, "_index", cached)  # a cache, not state: the dataclass stays frozen
        return cached

    def slots(self, values: Sequence[object] | np.ndarray) -> np.ndarray:
        """(N,) int64 slots of raw ``values`` (N,); unknown values get the OOV slot."""
        values = np.asarray(values, dtype=object)
        if len(values) == 0:
            return np.zeros(0, dtype=np.int64)
        codes, uniques = pd.factorize(values)
        if self.key_kind == "int":
            numbers = pd.to_numeric(pd.Series(uniques, dtype=object), errors="coerce").to_numpy(dtype=np.float64)
            whole = np.isfinite(numbers) & (numbers == np.round(numbers))
            lookup = np.where(whole, numbers, np.nan)
            positions = np.full(len(uniques), -1, dtype=np.int64)
            if whole.any():
                wanted = lookup[whole].astype(np.int64)
                positions[whole] = self.index().get_indexer(wanted) if self.lookup is None else self.lookup.find(wanted)
        else:
            texts = [str(u) for u in uniques]
            positions = (self.index().get_indexer(np.asarray(texts, dtype=object)) if self.lookup is None
                         else self.lookup.find_texts(texts))
        positions = positions.astype(np.int64)
        if self.key_slots is not None:
            known = self.key_slots[np.maximum(positions, 0)] if len(self.key_slots) else positions
            unique_slots = np.where(positions < 0, self.oov_slot, known)
        else:
            unique_slots = np.where(positions < 0, self.oov_slot, positions + (positions >= self.oov_slot))
        return unique_slots[codes].astype(np.int64)


@dataclass(frozen=True)
class FieldTables:
    """A kept field's tiers (only non-empty ones, in slot order) and its vocabulary; no tiers: the field's
    vectors are computed by the artifact's layer from the slot (= vocabulary row)."""

    name: str
    tiers: tuple[TierPool, ...]
    vocabulary: ServingVocabulary

    @property
    def rows(self) -> int:
        return sum(pool.rows for pool in self.tiers)

    def bounds(self) -> list[tuple[Precision, int, int]]:
        """``(precision, first slot, end slot)`` of each tier."""
        out, start = [], 0
        for pool in self.tiers:
            out.append((pool.precision, start, start + pool.rows))
            start += pool.rows
        return out


def _value_map(embedding: FieldEmbedding, name: str) -> tuple[FieldEmbedding, np.ndarray | None]:
    """(the store holding the rows, (V,) int64 row of each incoming id through every map of the stack, or
    ``None`` when ids are rows)."""
    stack = layers(embedding)
    row_of_value: Tensor | None = None
    for layer in stack[:-1]:
        mapped = layer.value_map(name)
        if mapped is not None:
            row_of_value = mapped if row_of_value is None else mapped.index_select(0, row_of_value)
    return stack[-1], None if row_of_value is None else row_of_value.numpy().astype(np.int64)


def field_tables(embedding: FieldEmbedding, name: str, vocabulary: Vocabulary) -> FieldTables:
    """Tier-ordered, hottest-first tables of field ``name`` and its folded vocabulary."""
    store, row_of_value = _value_map(embedding, name)
    try:
        codes, pools = store.row_storage(name)
    except ConfigError as error:
        raise CheckpointError(str(error)) from None
    rows = int(codes.shape[0])
    values = rows if row_of_value is None else len(row_of_value)
    if vocabulary.num_rows != values:
        what = "rows" if row_of_value is None else "values in its cluster map"
        raise CheckpointError(
            f"field {name!r} has {values} {what} but its vocabulary has {vocabulary.num_rows} rows; "
            "export the model with the vocabularies it was trained with"
        )
    value_counts = np.asarray(vocabulary.counts_, dtype=np.int64)
    if row_of_value is None:
        row_of_value = np.arange(rows)
    counts = np.zeros(rows, dtype=np.int64)  # (R,) a row's training count: the sum over its values
    np.add.at(counts, row_of_value, value_counts)
    tier_codes = codes.numpy().astype(np.int64)
    row_ids = np.arange(rows)
    order = np.lexsort((row_ids, -counts, tier_codes))  # slot -> row: tier, then hottest first, then row id
    tiers = []
    for tier in TIERS:
        members = order[tier_codes[order] == tier.code]  # rows of this tier, in slot order
        if len(members) == 0:
            continue
        payload, scale, position = pools[tier]
        where = position[torch.from_numpy(members)]
        tiers.append(TierPool(tier, payload.index_select(0, where).contiguous(),
                              None if scale is None else scale.index_select(0, where).float().contiguous(),
                              int(counts[members].sum())))
    slot_of_row = np.empty(rows, dtype=np.int64)
    slot_of_row[order] = row_ids
    slot_of_value = slot_of_row[row_of_value]  # (V,) vocabulary row -> slot
    keys = np.asarray(vocabulary.keys_)
    key_kind = "int" if np.issubdtype(keys.dtype, np.integer) else "str"
    oov_slot = int(slot_of_value[0])
    one_per_slot = values == rows and bool((np.bincount(slot_of_value, minlength=rows) == 1).all())
    key_slots = None
    if one_per_slot:  # keys in slot order: the position of a key is its slot (shifted past the OOV slot)
        value_of_slot = np.argsort(slot_of_value)
        key_rows = value_of_slot[value_of_slot != 0] - 1  # slot order without the OOV slot -> position in keys_
    else:  # shared slots: keys in vocabulary order plus an explicit key -> slot array
        key_rows = np.arange(values - 1)
        key_slots = np.ascontiguousarray(slot_of_value[1:], dtype=np.int32)
    slot_keys = keys[key_rows].astype(np.int64) if key_kind == "int" else np.asarray([str(k) for k in keys[key_rows]],
                                                                                       dtype=object)
    return FieldTables(name, tuple(tiers), ServingVocabulary(name, key_kind, slot_keys, oov_slot, key_slots))


def split_pruned(embedding: FieldEmbedding) -> tuple[FieldEmbedding, dict[str, Tensor]]:
    """(the layers below the pruned one(s), {removed field: (D,) constant}) of any embedding."""
    constants: dict[str, Tensor] = {}
    kept = embedding
    while (found := kept.constant_vectors()) and (inner := kept.inner_layer()) is not None:
        constants.update(found)
        kept = inner
    return kept, constants


def computed_field_tables(layer: FieldEmbedding, name: str, vocabulary: Vocabulary) -> FieldTables:
    """Field ``name`` of a store that computes its rows: no tiers, raw keys in vocabulary order (slot = row)."""
    accepted = layer.value_rows()[name]
    if vocabulary.num_rows != accepted:
        raise CheckpointError(f"field {name!r} takes {accepted} ids in the {layer.kind} layer but its vocabulary has "
                              f"{vocabulary.num_rows} rows; export the model with the vocabularies it was trained with")
    keys = np.asarray(vocabulary.keys_)
    if np.issubdtype(keys.dtype, np.integer):
        return FieldTables(name, (), ServingVocabulary(name, "int", keys.astype(np.int64), 0))
    return FieldTables(name, (), ServingVocabulary(name, "str", np.asarray([str(k) for k in keys], dtype=object), 0))


def export_fields(embedding: FieldEmbedding, vocabularies: Mapping[str, Vocabulary]
                  ) -> tuple[list[FieldTables], dict[str, Tensor], FieldEmbedding | None]:
    """Serving tables of every kept field (model order), the constants of the removed ones, and the store
    that computes the kept fields' rows (``None`` when they are read from tiers)."""
    kept, constants = split_pruned(embedding)
    missing = [name for name in kept.field_names if name not in vocabularies]
    if missing:
        raise CheckpointError(f"no vocabulary for fields {missing}; export with the vocabularies the model was "
                              "trained with (the ModelBundle of load_model)")
    if kept.computes_rows:
        return [computed_field_tables(kept, name, vocabularies[name]) for name in kept.field_names], constants, kept
    tables = [field_tables(kept, name, vocabularies[name]) for name in kept.field_names]
    return tables, constants, None
