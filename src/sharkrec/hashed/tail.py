"""A trained field's rare values hashed into shared rows: the rows axis of ``sharkrec compress`` past ~16x.

A value → row map (Saec's clusters) costs int32 per value, against 64 B for an fp32 row at D = 16, so
clustering alone cannot pass ~16x. :class:`HashedTailEmbedding` keeps no per-value state for the rare
values: per field the H hottest values (by training count) keep their own row, found by binary search
in a sorted int32 id array, and every other value is hashed into S shared rows::

    row(x) = i           if hot_f[i] == x
    row(x) = H + h(x)    otherwise, h(x) = ((a·x + b) mod (2^31 − 1)) mod S   (a, b): one pair per field

It is a *wrapper* of the layer stack (like the clustered map): the (H + S, D) rows live in any inner
store, fp32 or F-Quantization tiers, so the search can quantize the rows it keeps. Its bytes are the
inner store's plus, per field, 4·H (hot ids) + 16 (the hash pair): at H = 1% of V that is 0.04 B per value.

:func:`hash_tail` builds one from a trained fp32 store without training: hot rows are copied, and each
shared row starts at the training-frequency-weighted mean of the trained rows of the cold values hashed
to it (the unweighted mean where none was seen), the same prediction Saec's hashing method makes.
:class:`~sharkrec.hashed.hybrid.HybridEmbedding` is the from-scratch baseline with the same rule.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from sharkrec.data.batch import FieldIds
from sharkrec.errors import ConfigError, DataError
from sharkrec.hashed.hashing import checked_hot_ids, hash_parameters, hot_or_hashed_rows
from sharkrec.model.embedding import FieldEmbedding, FloatEmbedding, RowMapLayer, embedding_from_spec

_SALT_TAIL = 404


class HashedTailEmbedding(RowMapLayer):
    """Hot values keep their rows, the rest share hashed rows, over any inner store (kind ``"hashed_tail"``).

    Args:
        value_rows: ids accepted per field (vocabulary rows V), in field order.
        hot_ids: per field, distinct ids in ``[0, V)`` keeping their own row (sorted here).
        inner: the store (or stack) of the rows; field f has H_f + S_f rows or more, S_f ≥ 1 unless every
            value is hot.
        seed: seeds the hash pairs (one per field).

    Shapes: ``forward`` takes one :class:`FieldIds` per field with ids in ``[0, V_f)`` and returns (B, F, D).
    """

    kind: ClassVar[str] = "hashed_tail"

    def __init__(self, value_rows: Mapping[str, int], hot_ids: Mapping[str, Tensor], inner: FieldEmbedding, *,
                 seed: int = 0) -> None:
        super().__init__()
        self.field_names = tuple(value_rows)
        if tuple(inner.field_names) != self.field_names:
            raise ConfigError(f"the inner embedding has fields {list(inner.field_names)} but the tail covers "
                              f"{list(self.field_names)}; build both over the same fields, in order")
        if set(hot_ids) != set(value_rows):
            raise ConfigError(f"hot_ids covers fields {sorted(hot_ids)} but the tail has {sorted(value_rows)}; "
                              "give one entry per field")
        self.embedding_dim = int(inner.embedding_dim)
        self.inner = inner
        self.seed = int(seed)
        rows = inner.num_rows()
        self._value_rows: list[int] = []
        self._shared: list[int] = []
        self._whole: list[bool] = []
        for position, name in enumerate(self.field_names):
            values = int(value_rows[name])
            hot = checked_hot_ids(name, hot_ids[name], values)
            whole = hot.numel() == 0 and rows[name] >= values  # no hot ids and a row per value: ids are rows
            shared = rows[name] - int(hot.numel())
            if shared < 1 and not whole:
                raise ConfigError(f"field {name!r}: the inner store has {rows[name]} rows for {hot.numel()} hot "
                                  f"values; give it at least {hot.numel() + 1} (one shared row or more)")
            self.register_buffer(f"hot_{position}", hot)
            self._value_rows.append(values)
            self._shared.append(0 if whole else shared)
            self._whole.append(whole)
        self.pairs: Tensor
        self.register_buffer("pairs", hash_parameters(self.seed, len(self.field_names), _SALT_TAIL))  # (F, 2)

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "value_rows": self.value_rows(), "seed": self.seed,
                "hot_counts": {n: int(self.hot_ids(n).numel()) for n in self.field_names},
                "inner": self.inner.spec()}

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> HashedTailEmbedding:
        # placeholders on the CPU (also under the meta device); load_state_dict fills the hot ids and pairs
        hot = {str(n): torch.arange(int(h), device="cpu") for n, h in spec["hot_counts"].items()}
        return cls(dict(spec["value_rows"]), hot, embedding_from_spec(spec["inner"]), seed=int(spec["seed"]))

    def hot_ids(self, field_name: str) -> Tensor:
        """(H,) int32 sorted ids of the field's hot values."""
        buffer: Tensor = getattr(self, f"hot_{self._position(field_name)}")
        return buffer

    def shared_rows(self) -> dict[str, int]:
        """S per field: the rows the cold values share."""
        return dict(zip(self.field_names, self._shared, strict=True))

    def value_rows(self) -> dict[str, int]:
        return dict(zip(self.field_names, self._value_rows, strict=True))

    def rows_of(self, position: int, values: Tensor) -> Tensor:
        """(N,) inner row of each id of ``values`` (N,) for the field at ``position``."""
        if self._whole[position]:
            return values.to(torch.int64)
        hot: Tensor = getattr(self, f"hot_{position}")
        return hot_or_hashed_rows(hot, self.pairs[position : position + 1], self._shared[position], values)

    def map_ids(self, sparse: Sequence[FieldIds]) -> list[FieldIds]:
        """The batch's ids translated to inner rows (same offsets and weights); ids are checked."""
        if len(sparse) != self.num_fields:
            raise DataError(f"the batch has {len(sparse)} sparse fields but the model has {self.num_fields} "
                            f"({', '.join(self.field_names)}); build the batch with the model's schema")
        mapped = []
        for position, ids in enumerate(sparse):
            values = ids.values
            if values.numel() and (int(values.min()) < 0 or int(values.max()) >= self._value_rows[position]):
                raise DataError(f"field {self.field_names[position]!r} has ids outside 0.."
                                f"{self._value_rows[position] - 1}; encode the data with the model's vocabulary")
            mapped.append(FieldIds(self.rows_of(position, values), ids.offsets, ids.weights))
        return mapped

    # -- the wrapper stack (lookups, training hooks and pruning: RowMapLayer, through the inner layer)
    def with_inner(self, inner: FieldEmbedding) -> HashedTailEmbedding:
        names = list(inner.field_names)
        out = HashedTailEmbedding({n: self._value_rows[self._position(n)] for n in names},
                                  {n: self.hot_ids(n).clone() for n in names}, inner, seed=self.seed)
        with torch.no_grad():
            out.pairs.copy_(self.pairs[[self._position(n) for n in names]])
        return out

    def value_map(self, field_name: str) -> Tensor:
        """(V,) int64 inner row of every id (computed; export folds it into the vocabulary)."""
        position = self._position(field_name)
        return self.rows_of(position, torch.arange(self._value_rows[position]))

    def _own_bytes(self) -> dict[str, int]:
        """Per field: the hot ids (int32 each) and the hash pair; a whole field (ids are rows) holds neither."""
        pair = 2 * self.pairs.element_size()
        return {n: 0 if whole else int(self.hot_ids(n).numel() * self.hot_ids(n).element_size() + pair)
                for n, whole in zip(self.field_names, self._whole, strict=True)}

    def fixed_bytes(self) -> dict[str, int]:
        """Per field: the hot ids and the hash pair, plus what the inner layers fix."""
        own = self._own_bytes()
        for name, extra in self.inner.fixed_bytes().items():
            own[name] = own.get(name, 0) + extra
        return own

    def embedding_bytes(self) -> int:
        """The inner store's bytes plus the hot ids and hash pairs (the pairs of whole fields are not counted:
        they are never read)."""
        return int(self.inner.embedding_bytes()) + sum(self._own_bytes().values())

    def extra_repr(self) -> str:
        hot = sum(int(self.hot_ids(n).numel()) for n in self.field_names)
        return f"value_rows={sum(self._value_rows)}, hot={hot}, shared={sum(self._shared)}"


@dataclass(frozen=True)
class TailLayout:
    """Per field: H hot values and S shared rows (``shared == 0``: every value kept, no hashing)."""

    hot: int
    shared: int

    @property
    def rows(self) -> int:
        return self.hot + self.shared

    @property
    def fixed_bytes(self) -> int:
        """The hot ids (int32 each) and the hash pair; a whole field holds neither."""
        return 0 if self.shared == 0 else 4 * self.hot + 16


def tail_layout(value_rows: int, rows_ratio: float, hot_share: float = 0.5, min_rows: int = 64) -> TailLayout:
    """The layout keeping ``rows_ratio`` of a field's V rows, ``hot_share`` of them hot (at least one shared row).

    A field of at most ``min_rows`` values, or whose kept rows would not be fewer than V, stays whole.
    """
    if not 0.0 < rows_ratio <= 1.0 or not 0.0 <= hot_share <= 1.0:
        raise ConfigError(f"rows ratio {rows_ratio} must be in (0, 1] and hot share {hot_share} in [0, 1]")
    rows = max(1, math.ceil(rows_ratio * value_rows))
    if value_rows <= min_rows or rows >= value_rows:
        return TailLayout(value_rows, 0)
    rows = max(rows, 2)
    hot = min(round(hot_share * rows), rows - 1)
    return TailLayout(hot, rows - hot)


def hash_tail(store: FieldEmbedding, frequencies: Mapping[str, Tensor], layouts: Mapping[str, TailLayout], *,
              seed: int = 0) -> FieldEmbedding:
    """A :class:`HashedTailEmbedding` over new fp32 rows predicted from the trained fp32 ``store``.

    Args:
        store: a :class:`FloatEmbedding` (ids are rows), not changed.
        frequencies: per field, (V,) training counts (:func:`sharkrec.cluster.saec.value_counts`).
        layouts: per field of ``store``; a field whose layout keeps every value (``shared == 0``) keeps its
            rows (no hot ids: its ids are rows).
    """
    if not isinstance(store, FloatEmbedding):
        raise ConfigError(f"the hashed tail is predicted from fp32 rows; this store is a {type(store).__name__}")
    pairs = hash_parameters(int(seed), store.num_fields, _SALT_TAIL)  # (F, 2): the layer draws the same pairs
    hot_ids: dict[str, Tensor] = {}
    tables: dict[str, Tensor] = {}
    for position, name in enumerate(store.field_names):
        table = store.table(name).detach()  # (V, D)
        count = torch.as_tensor(frequencies[name], dtype=torch.float64)
        layout = layouts[name]
        value_rows = int(table.shape[0])
        if count.numel() != value_rows:
            raise ConfigError(f"field {name!r}: {count.numel()} counts for {value_rows} rows; count the model's "
                              "own vocabulary")
        if layout.shared == 0:  # kept whole: no hot ids, ids are rows
            hot_ids[name] = torch.zeros(0, dtype=torch.int64)
            tables[name] = table.clone()
            continue
        order = torch.sort(count, descending=True, stable=True).indices
        hot = order[: layout.hot].sort().values  # (H,)
        rows = hot_or_hashed_rows(hot.to(torch.int32), pairs[position : position + 1], layout.shared,
                                  torch.arange(value_rows))  # (V,)
        cold = rows >= layout.hot
        weight = count.clamp(min=0.0)[cold]
        slot = rows[cold] - layout.hot  # (n_cold,)
        sums = torch.zeros(layout.shared, table.shape[1], dtype=torch.float64)
        totals = torch.zeros(layout.shared, dtype=torch.float64)
        sums.index_add_(0, slot, table[cold].double() * weight.unsqueeze(1))
        totals.index_add_(0, slot, weight)
        plain = torch.zeros_like(sums).index_add_(0, slot, table[cold].double())
        members = torch.zeros(layout.shared, dtype=torch.float64).index_add_(0, slot, torch.ones_like(weight))
        seen = totals > 0
        shared = torch.where(seen.unsqueeze(1), sums / totals.clamp(min=1e-300).unsqueeze(1),
                             plain / members.clamp(min=1.0).unsqueeze(1))  # (S, D); empty rows stay 0
        hot_ids[name] = hot
        tables[name] = torch.cat([table.index_select(0, hot), shared.float()])
    inner = FloatEmbedding.from_tables(tables)
    return HashedTailEmbedding({n: int(store.table(n).shape[0]) for n in store.field_names}, hot_ids, inner,
                               seed=int(seed))
